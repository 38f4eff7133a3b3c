"""Mask IoU (spec cross_image_attention §9.7 1)."""

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.metrics.iou import iou_with_extractor, mask_iou


def _mask(box, size=(16, 16)):
    m = torch.zeros(size)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = 1
    return m


def test_iou_of_a_mask_with_itself_is_one_and_with_its_complement_zero():
    m = _mask((2, 10, 3, 12))
    assert mask_iou(m, m) == 1.0
    assert mask_iou(m, 1 - m) == 0.0


def test_iou_is_symmetric_and_matches_counts():
    a, b = _mask((0, 8, 0, 8)), _mask((4, 12, 4, 12))  # 64 each, overlap 16
    assert mask_iou(a, b) == mask_iou(b, a) == pytest.approx(16 / (64 + 64 - 16))


def test_both_empty_is_documented_one_or_the_callers_choice():
    empty = torch.zeros(8, 8)
    assert mask_iou(empty, empty) == 1.0
    assert np.isnan(mask_iou(empty, empty, empty_value=float("nan")))
    assert mask_iou(empty, _mask((0, 2, 0, 2), (8, 8))) == 0.0


def test_masks_from_files_and_other_sizes(tmp_path):
    a = (np.asarray(_mask((0, 16, 0, 8))) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    big = np.kron(a, np.ones((2, 2), np.uint8))  # the same mask at twice the size
    Image.fromarray(big).save(tmp_path / "b.png")
    assert mask_iou(tmp_path / "a.png", tmp_path / "b.png") == 1.0
    assert mask_iou(torch.from_numpy(a > 0), tmp_path / "a.png") == 1.0


def test_pluggable_extractor():
    threshold = lambda img: torch.as_tensor(np.asarray(img.convert("L")) > 127)  # noqa: E731
    bright = Image.fromarray(np.full((8, 8, 3), 255, np.uint8))
    half = np.zeros((8, 8, 3), np.uint8)
    half[:, :4] = 255
    assert iou_with_extractor(bright, Image.fromarray(half), threshold) == pytest.approx(0.5)
