"""Weight-free pixel metrics: RMSE, PSNR and SSIM on the 0-255 scale.

Convention (spec region_wise §5.3, the TCP/SwapAE tables): images are 8-bit RGB, compared at the first image's
size; RMSE over all pixels and channels on 0-255; ``PSNR = 20·log10(255 / RMSE)`` (+inf for identical images);
SSIM (Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity") with an
11x11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, data range 255, computed per RGB channel over the
'valid' window positions (no padding, as the reference MATLAB code) and averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .images import pair

DATA_RANGE = 255.0


def _to_255(x: torch.Tensor) -> torch.Tensor:
    # the 8-bit values an image would be saved with: compare what a user would see on disk
    return ((x.double().clamp(-1, 1) + 1) * 127.5).round()


def rmse(a, b, size=None) -> torch.Tensor:
    """(B,) root-mean-square error on the 0-255 scale."""
    x, y = pair(a, b, size)
    return (_to_255(x) - _to_255(y)).pow(2).flatten(1).mean(1).sqrt()


def psnr_from_rmse(value: float | torch.Tensor, data_range: float = DATA_RANGE):
    """``20·log10(range / RMSE)``; +inf for RMSE = 0."""
    if isinstance(value, torch.Tensor):
        return 20 * torch.log10(data_range / value)  # division by 0 gives +inf, as intended
    return math.inf if value == 0 else 20 * math.log10(data_range / value)


def psnr(a, b, size=None) -> torch.Tensor:
    """(B,) peak signal-to-noise ratio in dB (+inf for identical images)."""
    return psnr_from_rmse(rmse(a, b, size))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a, b, size=None, *, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         return_map: bool = False) -> torch.Tensor:
    """(B,) mean SSIM over channels and valid window positions; lies in [-1, 1], 1 for identical images."""
    x, y = pair(a, b, size)
    x, y = _to_255(x), _to_255(y)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    w = gaussian_window(window, sigma).to(x).expand(c, 1, window, window)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * DATA_RANGE) ** 2, (k2 * DATA_RANGE) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return smap if return_map else smap.flatten(1).mean(1)
