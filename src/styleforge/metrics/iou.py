"""Mask IoU, the structure-preservation metric of Cross-Image Attention (Alaluf et al. 2024, Table 1; spec §6.3,
§10.14): ``|A ∩ B| / |A ∪ B|`` between the object mask of the structure input and that of the output.

The paper extracts both masks with SAM (variant and prompting unstated); here the mask extractor is
pluggable — :func:`mask_iou` takes masks, :func:`iou_with_extractor` takes images and a function image → mask —
because SAM weights are not available offline. Masks are any :func:`styleforge.io.load_mask` input (white =
object), binarised at 0.5 after area-resampling the second mask to the first mask's grid.
Both masks empty: the objects agree (nothing vs nothing), so IoU = ``empty_value`` (1.0 by default; pass NaN to
exclude such pairs from an average).
"""

from __future__ import annotations

from typing import Callable

import torch


def _as_mask(mask, size=None) -> torch.Tensor:
    from ..io import load_mask

    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        mask = mask.float()
    return load_mask(mask, size=size, required=False)[0, 0] > 0.5


def mask_iou(mask_a, mask_b, *, empty_value: float = 1.0) -> float:
    """IoU of two binary masks (symmetric, in [0, 1], 1 for equal non-empty masks, 0 for disjoint ones)."""
    a = _as_mask(mask_a)
    b = _as_mask(mask_b, size=tuple(a.shape))
    union = (a | b).sum().item()
    if union == 0:
        return float(empty_value)
    return (a & b).sum().item() / union


def iou_with_extractor(image_a, image_b, extractor: Callable, *, empty_value: float = 1.0) -> float:
    """IoU of ``extractor(image_a)`` and ``extractor(image_b)`` (e.g. a SAM wrapper returning a 2-D mask)."""
    return mask_iou(extractor(image_a), extractor(image_b), empty_value=empty_value)
