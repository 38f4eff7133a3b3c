"""Region masks: the random training-mask generator (spec §3.6), resampling to the feature grid, feathering.

Masks are float tensors (N,1,H,W) with 1 = "restyle this pixel".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import InputError

RESAMPLE_MODES = ("area", "nearest", "bilinear")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=gen).item())


def _draw_strokes(draw: ImageDraw.ImageDraw, h: int, w: int, gen: torch.Generator) -> None:
    """Free-form brush strokes as in partial-conv / gated-conv inpainting masks."""
    side = min(h, w)
    for _ in range(_randint(gen, 1, 4)):
        x, y = _uniform(gen, 0, w), _uniform(gen, 0, h)
        width = max(1, round(_uniform(gen, 0.03, 0.12) * side))
        heading = _uniform(gen, 0, 2 * math.pi)
        points = [(x, y)]
        for v in range(_randint(gen, 4, 12)):
            turn = _uniform(gen, 0, 2 * math.pi / 5)
            heading += turn if v % 2 == 0 else -turn  # alternating sign keeps strokes wiggly rather than circular
            length = _uniform(gen, 0.05, 0.35) * side
            x = min(max(x + length * math.cos(heading), 0), w - 1)
            y = min(max(y + length * math.sin(heading), 0), h - 1)
            points.append((x, y))
        draw.line(points, fill=255, width=width)
        r = width / 2
        for px, py in points:  # round caps and joints
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)


def _draw_blobs(draw: ImageDraw.ImageDraw, h: int, w: int, gen: torch.Generator) -> None:
    """1-3 ellipses, polygons or rectangles, each 0.1-0.6 of the side across."""
    side = min(h, w)
    for _ in range(_randint(gen, 1, 3)):
        kind = _randint(gen, 0, 2)
        cx, cy = _uniform(gen, 0, w), _uniform(gen, 0, h)
        rx = _uniform(gen, 0.1, 0.6) * side / 2
        ry = _uniform(gen, 0.1, 0.6) * side / 2
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            n = _randint(gen, 3, 8)
            start = _uniform(gen, 0, 2 * math.pi)
            pts = []
            for k in range(n):
                angle = start + 2 * math.pi * k / n
                radius = _uniform(gen, 0.5, 1.0)
                pts.append((cx + rx * radius * math.cos(angle), cy + ry * radius * math.sin(angle)))
            draw.polygon(pts, fill=255)


def random_mask(
    height: int,
    width: int,
    generator: torch.Generator,
    coverage: tuple[float, float] = (0.1, 0.7),
    trivial_probability: float = 0.0,
    max_tries: int = 200,
) -> torch.Tensor:
    """One binary (1, H, W) mask: brush strokes or blobs (one family per draw), redrawn until its coverage lies
    in ``coverage``. With ``trivial_probability`` the mask is all-zero or all-one instead."""
    if trivial_probability > 0 and torch.rand((), generator=generator).item() < trivial_probability:
        value = float(_randint(generator, 0, 1))
        return torch.full((1, height, width), value)
    low, high = coverage
    arr = None
    for _ in range(max_tries):
        img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(img)
        if _randint(generator, 0, 1) == 0:
            _draw_strokes(draw, height, width, generator)
        else:
            _draw_blobs(draw, height, width, generator)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr >= 0.5).astype(np.float32)
        if low <= arr.mean() <= high:
            break
    return torch.from_numpy(arr)[None]


def random_masks(n: int, height: int, width: int, generator: torch.Generator, **kwargs) -> torch.Tensor:
    """A batch (n, 1, H, W) of independent random masks."""
    return torch.stack([random_mask(height, width, generator, **kwargs) for _ in range(n)])


def resample_mask(mask: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """M -> M_e on the feature grid. ``area`` averages 2^d×2^d cells and keeps soft values (spec decision 6)."""
    if mode not in RESAMPLE_MODES:
        raise InputError(f"mask resampling must be one of {', '.join(RESAMPLE_MODES)}, got {mode!r}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mode == "bilinear":
        return F.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return F.interpolate(mask, size=size, mode=mode)


def feather_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian feathering of a (N,1,H,W) mask; sigma in pixels; 0 returns the mask unchanged."""
    if sigma <= 0:
        return mask
    return gaussian_blur(mask, sigma).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W), kernel radius ceil(3·sigma), edges replicated; 0 returns x."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    out = F.pad(x.reshape(n * c, 1, h, w), [radius] * 4, mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.conv2d(out, k.view(1, 1, -1, 1))
    return out.reshape(n, c, h, w)


def feather_inside(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soften a binary (N,1,H,W) mask's edge inward over about 3·sigma px: 0 on and outside its border, exactly.

    The mask is eroded by the Gaussian's reach before it is blurred, so the ramp stays inside the mask (a paste-back
    weight that leaves every outside pixel untouched). Wide blurs are computed on a grid ``sigma // 2`` times
    coarser and upsampled bilinearly: the ramp is smooth, and the cost stays linear in the pixels.
    """
    if sigma <= 0:
        return mask
    step = max(1, int(sigma // 2))
    size = tuple(mask.shape[-2:])
    small = mask if step == 1 else F.interpolate(mask, size=(-(-size[0] // step), -(-size[1] // step)), mode="area")
    sigma_small = sigma / step
    reach = max(1, int(math.ceil(3 * sigma_small)))  # feather_mask's kernel radius
    ramp = feather_mask(1 - dilate_mask(1 - small, reach), sigma_small)
    if step > 1:
        ramp = F.interpolate(ramp, size=size, mode="bilinear", align_corners=False)
    return ramp * mask


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a (N,1,H,W) mask by ``radius`` pixels (a square max filter); 0 returns it unchanged."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def broadcast_mask(mask: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Accept (H,W), (1,H,W), (1,1,H,W) or (N,1,H,W) masks and return (batch,1,H,W) at image size ``size``."""
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(f"mask must be (H,W), (1,H,W), (1,1,H,W) or (N,1,H,W); got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, batch):
        raise InputError(f"mask batch {mask.shape[0]} does not match image batch {batch}")
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask.float(), size=size, mode="area" if mask.shape[-1] >= size[1] else "bilinear")
    return mask.float().expand(batch, 1, *size)
