"""AdaIN on latents (cross-image attention paper Eq. 5), masked and unmasked.

Statistics are per channel over spatial positions; sigma = sqrt(unbiased variance + eps), the official code's
convention (eps on the variance, not on sigma).
"""

from __future__ import annotations

import warnings

import torch

EPS = 1e-5


def channel_stats(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sigma of x (B, C, H, W) over H, W -- over the mask's pixels when a mask is given."""
    if mask is None:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = x.var(dim=(-2, -1), keepdim=True, unbiased=True)
    else:
        m = mask.to(x.dtype)
        n = m.sum(dim=(-2, -1), keepdim=True)
        mean = (x * m).sum(dim=(-2, -1), keepdim=True) / n
        var = (((x - mean) * m) ** 2).sum(dim=(-2, -1), keepdim=True) / (n - 1)
    return mean, (var + eps).sqrt()


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Give ``content`` the per-channel mean and sigma of ``style``."""
    c_mean, c_std = channel_stats(content, eps=eps)
    s_mean, s_std = channel_stats(style, eps=eps)
    return (content - c_mean) / c_std * s_std + s_mean


def masked_adain(content: torch.Tensor, style: torch.Tensor, content_mask: torch.Tensor, style_mask: torch.Tensor,
                 eps: float = EPS, fallback: str | None = "full") -> torch.Tensor:
    """AdaIN with content statistics over ``content_mask`` and style statistics over ``style_mask``.

    Only pixels inside ``content_mask`` change; the rest stay bit-identical. A mask with fewer than 2 pixels
    makes the unbiased variance undefined (the official code then returns NaN and a black image):
    ``fallback="full"`` uses unmasked AdaIN everywhere instead, with a warning; ``None`` reproduces the official
    behaviour.
    """
    too_small = lambda m: bool((m.flatten(1).sum(dim=1) < 2).any())  # noqa: E731
    if fallback is not None and (too_small(content_mask) or too_small(style_mask)):
        if fallback != "full":
            raise ValueError(f"unknown fallback {fallback!r}")
        warnings.warn("an AdaIN mask has fewer than 2 pixels; using unmasked AdaIN instead", stacklevel=2)
        return adain(content, style, eps)
    c_mean, c_std = channel_stats(content, content_mask, eps)
    s_mean, s_std = channel_stats(style, style_mask, eps)
    normalized = (content - c_mean) / c_std * s_std + s_mean
    m = content_mask.to(content.dtype)
    return torch.where(m > 0, normalized, content)
