"""Lift a working-size edit onto the full-resolution photo, keeping the photo's detail.

The model edits a small copy of the photo. Instead of upsampling its result (a blurry image), a local affine
colour model is fitted from the small content (the guide I) to the small result (the target p) and applied to
the full-resolution content, so edges, texture and noise come from the photo and colour, tone and contrast from
the edit. This is the colour guided filter of He, Sun & Tang, "Guided Image Filtering" (TPAMI 2013): in every
box window ω_k of radius r

    A_k = cov_k(p, I) (Σ_k + εU)⁻¹,   b_k = p̄_k − A_k μ_k,   q_i = Ā_i I_i + b̄_i

(Ā, b̄: the coefficients averaged over the windows that hold pixel i), with the coefficients computed at low
resolution and bilinearly upsampled before they are applied to the full-resolution guide, as in He & Sun,
"Fast Guided Filter" (arXiv 1505.00996, 2015).

Two departures. The model's result is blurrier than the photo it was made from, so a fit on the raw pair
explains the photo's fine texture by nothing and shrinks A_k toward 0 (regression dilution), which flattens the
texture the lift is meant to keep. Both images are therefore blurred by a Gaussian of ``sigma`` working pixels
before the fit (the band the model does reproduce); the coefficients are still applied to the unblurred photo.
Blurring is linear, so identity and global affine colour changes are still recovered exactly. And (``prior="global"``, the default; ``prior="zero"`` and ``sigma=0`` give the paper's form) the regulariser pulls
A_k toward the global least-squares colour matrix A₀ of the (weighted) image instead of toward 0,
i.e. A_k = (cov_k(p, I) + εA₀)(Σ_k + εU)⁻¹. In flat windows the paper's form sets A_k ≈ 0 and so paints the
window's mean colour over the photo's texture; the prior keeps the texture and carries the global colour change
there. It also makes the lift exact for any global affine colour change (q = GI + c gives A_k = G, b_k = c), and
an unchanged result lifts to the unchanged photo.

Memory stays bounded for very large photos: the coefficients are upsampled and applied in bands of rows; every
full-resolution pixel is computed from the same global interpolation weights, so the bands join seamlessly
(banded output equals one-pass output bit for bit).

Images here are float tensors (3, h, w) in [0, 1] at working size and uint8 arrays (H, W, 3) at full resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .lift_settings import DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_SIGMA, check_lift_settings
from .masks import gaussian_blur

DEFAULT_TILE_PIXELS = 1 << 20  # full-resolution pixels per band: 12 float32 coefficient planes = 48 MiB


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of (C, h, w) over a (2r+1)² window, windows clipped at the border (He et al.'s normalised box)."""
    return F.avg_pool2d(x[None], 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)[0]


def global_colour_matrix(guide: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A₀ (3, 3) of the weighted least-squares fit target ≈ A₀·guide + c over all pixels.

    The pseudo-inverse leaves directions in which the guide does not vary (a grey photo has one) out of A₀.
    """
    g, t = guide.reshape(3, -1).double(), target.reshape(3, -1).double()
    w = torch.ones(g.shape[1], dtype=torch.float64) if weight is None else weight.reshape(-1).double()
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    w = w / w.sum()
    gc = g - (g * w).sum(1, keepdim=True)
    tc = t - (t * w).sum(1, keepdim=True)
    cov_gg = (gc * w) @ gc.T
    cov_tg = (tc * w) @ gc.T
    return cov_tg @ torch.linalg.pinv(cov_gg, hermitian=True, rtol=1e-9)


def fit_coefficients(guide: torch.Tensor, target: torch.Tensor, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS,
                     prior: str = "global", weight: torch.Tensor | None = None, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Window-averaged guided-filter coefficients (12, h, w) float64: rows 0-8 Ā (output channel-major), 9-11 b̄.

    ``guide`` and ``target`` are (3, h, w) in [0, 1]; ``eps`` is in those units squared; ``weight`` (h, w)
    weights the global fit of the ``"global"`` prior (e.g. the edited region); ``sigma`` (working px) blurs both
    images before the fit.
    """
    radius, eps, sigma = check_lift_settings(radius, eps, prior, sigma)
    if guide.shape != target.shape or guide.ndim != 3 or guide.shape[0] != 3:
        raise InputError(f"guide and target must both be (3, h, w); got {tuple(guide.shape)} and {tuple(target.shape)}")
    _, h, w = guide.shape
    # the blur runs in float32 (CPU convolutions in float64 are ~6x slower); the statistics below need float64
    g, t = gaussian_blur(torch.stack([guide.float(), target.float()]), sigma).double()
    mean_g, mean_t = box_mean(g, radius), box_mean(t, radius)
    cov_gg = box_mean((g[:, None] * g[None]).reshape(9, h, w), radius).reshape(3, 3, h, w) - mean_g[:, None] * mean_g[None]
    cov_tg = box_mean((t[:, None] * g[None]).reshape(9, h, w), radius).reshape(3, 3, h, w) - mean_t[:, None] * mean_g[None]
    a_prior = global_colour_matrix(g, t, weight) if prior == "global" else torch.zeros(3, 3, dtype=torch.float64)
    lhs = cov_gg.permute(2, 3, 0, 1) + eps * torch.eye(3, dtype=torch.float64)  # Σ_k + εU, symmetric
    rhs = cov_tg.permute(2, 3, 0, 1) + eps * a_prior
    # A_k (Σ_k + εU) = rhs  <=>  (Σ_k + εU) A_kᵀ = rhsᵀ
    a = torch.linalg.solve(lhs, rhs.transpose(-1, -2)).transpose(-1, -2)  # (h, w, 3, 3)
    b = mean_t.permute(1, 2, 0) - (a @ mean_g.permute(1, 2, 0)[..., None])[..., 0]  # (h, w, 3)
    coefficients = torch.cat([a.reshape(h, w, 9), b], dim=-1).permute(2, 0, 1)
    return box_mean(coefficients.contiguous(), radius)


def _axis_weights(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source indices and weights along one axis (pixel centres aligned, as align_corners=False)."""
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (pos - lo).float()


def _rows(top: int, bottom: int, width: int, tile_pixels: int):
    """Bands [y0, y1) of rows of about ``tile_pixels`` pixels each."""
    step = max(1, int(tile_pixels) // max(1, width))
    for y0 in range(top, bottom, step):
        yield y0, min(bottom, y0 + step)


def paste(base: np.ndarray, edited: torch.Tensor, weight: torch.Tensor | None) -> np.ndarray:
    """weight·edited + (1-weight)·base as uint8 (rows × cols × 3; edited on the 0-255 scale, weight rows × cols);
    where weight is 0 the base pixel is kept exactly (b + 0·(e-b) = b, an integer)."""
    out = edited.float()
    if weight is not None:
        b = torch.tensor(base).float()
        out = (out - b).mul_(weight[..., None].float()).add_(b)
    return out.clamp_(0, 255).round_().to(torch.uint8).numpy()


def _bounds(weight: torch.Tensor | None, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels with weight > 0 (everything without a weight); None if there are none."""
    if weight is None:
        return 0, height, 0, width
    rows = torch.nonzero(weight.amax(dim=1) > 0).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(weight.amax(dim=0) > 0).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def apply_coefficients(coefficients: torch.Tensor, image: np.ndarray, weight: torch.Tensor | None = None,
                       tile_pixels: int = DEFAULT_TILE_PIXELS) -> np.ndarray:
    """q = Ā·I + b̄ on the full-resolution uint8 image (H, W, 3), the coefficients bilinearly upsampled (fast guided
    filter), composited as weight·q + (1-weight)·I when ``weight`` (H, W) is given (then only the box around the
    pixels of weight > 0 is computed). Returns uint8 (H, W, 3)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    if weight is not None and tuple(weight.shape) != (height, width):
        raise InputError(f"paste weight must be {(height, width)}, got {tuple(weight.shape)}")
    out = image.copy()
    box = _bounds(weight, height, width)
    if box is None:
        return out
    top, bottom, left, right = box
    _, h, w = coefficients.shape
    x_lo, x_hi, x_t = (v[left:right] for v in _axis_weights(width, w))
    y_lo, y_hi, y_t = _axis_weights(height, h)
    coef = coefficients.float()
    coef = torch.lerp(coef[:, :, x_lo], coef[:, :, x_hi], x_t)  # (12, h, cols): columns first, once
    cols = right - left
    for y0, y1 in _rows(top, bottom, cols, tile_pixels):
        rows = y1 - y0
        band = torch.index_select(coef, 1, y_lo[y0:y1])  # (12, rows, cols), then lerp toward the next row
        upper = torch.index_select(coef, 1, y_hi[y0:y1])
        band.add_(upper.sub_(band).mul_(y_t[y0:y1, None]))
        del upper
        pixels = torch.tensor(image[y0:y1, left:right]).permute(2, 0, 1).float().div_(255)  # (3, rows, cols)
        q = torch.empty(3, rows, cols)
        for c in range(3):  # q_c = Σ_j Ā_cj I_j + b̄_c, in place to keep the band's memory small
            torch.mul(band[3 * c], pixels[0], out=q[c])
            q[c].addcmul_(band[3 * c + 1], pixels[1]).addcmul_(band[3 * c + 2], pixels[2]).add_(band[9 + c])
        del band, pixels
        region = weight[y0:y1, left:right] if weight is not None else None
        out[y0:y1, left:right] = paste(image[y0:y1, left:right], q.mul_(255).permute(1, 2, 0), region)
    return out


def paste_image(base: np.ndarray, edited: np.ndarray, weight: torch.Tensor | None,
                tile_pixels: int = DEFAULT_TILE_PIXELS) -> np.ndarray:
    """weight·edited + (1-weight)·base for uint8 (H, W, 3) images, in bands of rows."""
    out = base.copy()
    box = _bounds(weight, *base.shape[:2])
    if box is None:
        return out
    top, bottom, left, right = box
    for y0, y1 in _rows(top, bottom, right - left, tile_pixels):
        region = weight[y0:y1, left:right] if weight is not None else None
        out[y0:y1, left:right] = paste(base[y0:y1, left:right], torch.tensor(edited[y0:y1, left:right]), region)
    return out


def lift(guide: torch.Tensor, target: torch.Tensor, image: np.ndarray, radius: int = DEFAULT_RADIUS,
         eps: float = DEFAULT_EPS, prior: str = "global", sigma: float = DEFAULT_SIGMA, fit_weight: torch.Tensor | None = None,
         paste_weight: torch.Tensor | None = None, tile_pixels: int = DEFAULT_TILE_PIXELS) -> np.ndarray:
    """The edit guide -> target (working size, (3, h, w) in [0, 1]) carried onto ``image`` (uint8 (H, W, 3)).

    ``fit_weight`` (h, w) weights the global prior's fit; ``paste_weight`` (H, W) composites the lifted result
    over ``image`` (pixels of weight 0 stay exactly as they are).
    """
    coefficients = fit_coefficients(guide, target, radius, eps, prior, fit_weight, sigma)
    return apply_coefficients(coefficients, image, paste_weight, tile_pixels)
