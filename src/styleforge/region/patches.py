"""Random square crops for the co-occurrence discriminator (SwapAE crop sampling, spec §3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_patches(
    images: torch.Tensor,
    n_crop: int,
    patch_size: int,
    scale: tuple[float, float] = (1 / 8, 1 / 4),
    generator: torch.Generator | None = None,
    flip: bool = True,
    return_boxes: bool = False,
):
    """``n_crop`` crops per image, grouped per image: (N·n_crop, 3, patch_size, patch_size).

    Each crop's side is uniform in ``scale`` × the image's shorter side, its position uniform inside the image,
    it is flipped horizontally with probability 1/2 and resized bilinearly to ``patch_size``. The sampling is a
    differentiable ``grid_sample`` so gradients reach the generator through fake patches.
    With ``return_boxes`` also returns (N·n_crop, 4) boxes (left, top, side, flipped) in pixels.
    """
    n, _, h, w = images.shape
    count = n * n_crop
    dev = images.device
    u = torch.rand(count, 4, generator=generator).to(dev, images.dtype)
    side = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * min(h, w)
    left = u[:, 1] * (w - side)
    top = u[:, 2] * (h - side)
    flipped = (u[:, 3] < 0.5) if flip else torch.zeros(count, dtype=torch.bool, device=dev)
    # affine map from the patch's normalised coordinates [-1, 1] to the image's (align_corners=False)
    theta = torch.zeros(count, 2, 3, device=dev, dtype=images.dtype)
    theta[:, 0, 0] = side / w * torch.where(flipped, -1.0, 1.0).to(images.dtype)
    theta[:, 0, 2] = (2 * left + side) / w - 1
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = (2 * top + side) / h - 1
    grid = F.affine_grid(theta, (count, 3, patch_size, patch_size), align_corners=False)
    source = images.repeat_interleave(n_crop, dim=0)
    patches = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if return_boxes:
        return patches, torch.stack([left, top, side, flipped.to(images.dtype)], dim=1)
    return patches
