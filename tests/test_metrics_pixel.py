"""RMSE, PSNR and SSIM: closed forms and the properties of spec region_wise §8 G."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.metrics import pixel


def _img(seed, h=32, w=40):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_is_twenty_log10_of_255_over_rmse():
    a, b = _img(0), _img(1)
    r = float(pixel.rmse(a, b)[0])
    assert float(pixel.psnr(a, b)[0]) == pytest.approx(20 * math.log10(255 / r), rel=1e-9)


@pytest.mark.parametrize("rmse,psnr", [(10.02, 28.11), (9.67, 28.42), (10.16, 27.99)])
def test_psnr_reproduces_the_tcp_table_pairs(rmse, psnr):
    assert pixel.psnr_from_rmse(rmse) == pytest.approx(psnr, abs=0.01)


def test_rmse_of_a_constant_offset_is_the_offset():
    base = np.full((16, 16, 3), 100, np.uint8)
    shifted = base + 7
    assert float(pixel.rmse(Image.fromarray(base), Image.fromarray(shifted))[0]) == pytest.approx(7.0)
    assert float(pixel.psnr(Image.fromarray(base), Image.fromarray(shifted))[0]) == pytest.approx(20 * math.log10(255 / 7))


def test_identical_images_have_zero_rmse_infinite_psnr_and_unit_ssim():
    a = _img(3)
    assert float(pixel.rmse(a, a)[0]) == 0.0
    assert math.isinf(float(pixel.psnr(a, a)[0]))
    assert float(pixel.ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_is_symmetric_bounded_and_drops_with_noise():
    a = _img(4)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    very_noisy = (a + 0.8 * torch.randn(a.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    s1, s2 = float(pixel.ssim(a, noisy)[0]), float(pixel.ssim(noisy, a)[0])
    assert s1 == pytest.approx(s2, abs=1e-12)
    assert -1 <= float(pixel.ssim(a, -a)[0]) < 0 < float(pixel.ssim(a, very_noisy)[0]) < s1 < 1


def test_ssim_of_constant_images_follows_the_luminance_term():
    # no variance anywhere: SSIM = (2·μx·μy + C1) / (μx² + μy² + C1) with C1 = (0.01·255)²
    x = np.full((20, 20, 3), 100, np.uint8)
    y = np.full((20, 20, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100 ** 2 + 150 ** 2 + c1)
    assert float(pixel.ssim(Image.fromarray(x), Image.fromarray(y))[0]) == pytest.approx(expected, rel=1e-9)


def test_ssim_map_covers_only_valid_window_positions():
    assert pixel.ssim(_img(0, 32, 40), _img(1, 32, 40), return_map=True).shape == (1, 3, 22, 30)
    with pytest.raises(ValueError, match="at least 11x11"):
        pixel.ssim(_img(0, 8, 8), _img(1, 8, 8))


def test_gaussian_window_is_normalised_and_symmetric():
    w = pixel.gaussian_window()
    assert float(w.sum()) == pytest.approx(1.0)
    assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))
