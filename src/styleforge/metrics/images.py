"""Turning metric inputs into tensors, with one convention for every metric.

Metrics accept a path, a PIL image, an array, a (3, H, W) / (B, 3, H, W) tensor in [-1, 1], or a list of those.
Non-tensors are loaded with :func:`styleforge.io.load_image` (8-bit RGB); when a metric fixes a working size they
are centre-cropped and resized with bicubic filtering (:func:`styleforge.io.center_crop_resize`); tensors are
resized with antialiased bicubic interpolation. Pairs of images of different sizes are compared at the size of
the first one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError


def to_tensor(images, size: int | tuple[int, int] | None = None, *, name: str = "image") -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1]; ``size`` = int (square) or (h, w), None keeps the input size."""
    from ..io import center_crop_resize, load_image, pil_to_tensor

    if isinstance(images, torch.Tensor):
        x = images.detach().float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"{name}: expected a (B, 3, H, W) tensor in [-1, 1], got shape {tuple(images.shape)}")
        if size is not None:
            x = resize(x, size)
        return x
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError(f"{name}: no images given")
    tensors = []
    for item in items:
        if isinstance(item, torch.Tensor):
            tensors.append(to_tensor(item, size, name=name))
            continue
        img = load_image(item, name=name)
        if size is not None:
            h, w = (size, size) if isinstance(size, int) else size
            img = center_crop_resize(img, (w, h))
        tensors.append(pil_to_tensor(img))
    shapes = {tuple(t.shape[-2:]) for t in tensors}
    if len(shapes) > 1:
        tensors = [resize(t, tensors[0].shape[-2:]) for t in tensors]
    return torch.cat(tensors)


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def pair(a, b, size=None, *, names=("image", "other image")) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of equal shape: ``b`` follows ``a``'s size when ``size`` is None; a single image is broadcast."""
    x = to_tensor(a, size, name=names[0])
    y = to_tensor(b, size if size is not None else tuple(x.shape[-2:]), name=names[1])
    if x.shape[0] != y.shape[0]:
        if x.shape[0] == 1:
            x = x.expand(y.shape[0], -1, -1, -1)
        elif y.shape[0] == 1:
            y = y.expand(x.shape[0], -1, -1, -1)
        else:
            raise InputError(f"got {x.shape[0]} and {y.shape[0]} images; give equal numbers (or one to compare with all)")
    return x, y


def short_side_resize(x: torch.Tensor, short: int, max_size: int | None = None) -> torch.Tensor:
    """torchvision ``Resize(short, max_size=...)`` semantics on tensors: shorter side to ``short`` unless the longer
    side would exceed ``max_size``, in which case the longer side becomes ``max_size`` (aspect kept)."""
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    if min(h, w) * scale == short and (h, w) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
