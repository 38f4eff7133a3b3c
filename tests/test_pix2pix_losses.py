"""pix2pix-zeroCon losses: the inversion noise regulariser, the cross-attention loss, PatchNCE (spec §7 C, D, E)."""

import math

import pytest
import torch
import torch.nn.functional as F

from styleforge.errors import InputError
from styleforge.pix2pix_zerocon.losses import (PatchNCESettings, RegularizerSettings, autocorrelation_loss,
                                               cross_attention_loss, draw_shift, kl_divergence, patch_nce_loss,
                                               pool_patches, regularize_noise, sample_patch_ids)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _smooth_field(mean=0.0, std=1.0, seed=0):
    coarse = torch.randn(1, 4, 8, 8, generator=_gen(seed))
    field = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    return (field - field.mean()) / field.std() * std + mean


# --------------------------------------------------------------------------------------------- regulariser


@pytest.mark.parametrize("side,expected", [(64, 32.0), (32, 24.0), (16, 16.0), (8, 8.0)])
def test_autocorrelation_of_ones_counts_pyramid_levels(side, expected):
    # each level contributes 2 (y and x) per channel; 64 -> 32 -> 16 -> 8 is four levels
    assert autocorrelation_loss(torch.ones(1, 4, side, side), shift=1).item() == pytest.approx(expected)
    assert autocorrelation_loss(torch.zeros(1, 4, side, side), shift=3).item() == 0.0


def test_autocorrelation_separates_white_from_smooth_noise():
    white = torch.randn(1, 4, 64, 64, generator=_gen(1))
    smooth = _smooth_field(seed=2)
    l_white, l_smooth = autocorrelation_loss(white, shift=1).item(), autocorrelation_loss(smooth, shift=1).item()
    assert 0 <= l_white < 0.05
    assert l_smooth >= 10 * l_white


def test_one_regulariser_call_decreases_both_terms():
    eps = _smooth_field(mean=0.5, std=2.0, seed=3)
    out = regularize_noise(eps, RegularizerSettings(), shift=1)
    assert autocorrelation_loss(out, shift=1) < autocorrelation_loss(eps, shift=1)
    assert kl_divergence(out) < kl_divergence(eps)
    assert out.shape == eps.shape and out.dtype == eps.dtype


def test_kl_closed_forms():
    assert kl_divergence(torch.randn(1, 4, 64, 64, generator=_gen(4))).item() == pytest.approx(0.0, abs=2e-3)
    for seed in range(5):
        x = torch.randn(1, 4, 8, 8, generator=_gen(seed)) * (seed + 0.3) + seed
        assert kl_divergence(x).item() >= -1e-6
    c = 0.7
    assert kl_divergence(torch.full((1, 4, 8, 8), c)).item() == pytest.approx(c * c - 1 - math.log(1e-7), rel=1e-5)


def test_zero_noise_is_a_fixed_point():
    out = regularize_noise(torch.zeros(1, 4, 16, 16), RegularizerSettings(), generator=_gen())
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros_like(out))


def test_shift_offsets_never_zero_and_small_maps_work():
    g = _gen(5)
    for side in (64, 32, 16, 8, 6):
        draws = {draw_shift(side, g) for _ in range(300)}
        assert min(draws) == 1 and max(draws) == side // 2 - 1
    assert draw_shift(2, g) == 1 and draw_shift(4, g) == 1
    for side in (1, 2, 4):
        assert torch.isfinite(autocorrelation_loss(torch.randn(1, 4, side, side), generator=g))


def test_regulariser_off_returns_the_input_and_batches_per_sample():
    eps = torch.randn(2, 4, 16, 16, generator=_gen(6))
    assert regularize_noise(eps, RegularizerSettings(steps=0)) is eps
    assert regularize_noise(eps, RegularizerSettings(lambda_ac=0, lambda_kl=0)) is eps
    both = regularize_noise(eps, RegularizerSettings(), shift=1)
    one = regularize_noise(eps[1:], RegularizerSettings(), shift=1)
    assert torch.allclose(both[1:], one, atol=1e-6)


# --------------------------------------------------------------------------------------------- cross-attention


def _maps(seed, shape=(2, 4, 64, 77)):
    return torch.randn(shape, generator=_gen(seed)).softmax(-1)


def test_cross_attention_loss_properties():
    a, b = _maps(0), _maps(1)
    a_var = a.clone().requires_grad_(True)
    same = cross_attention_loss(a_var, a)
    same.backward()
    assert same.item() == 0.0 and torch.equal(a_var.grad, torch.zeros_like(a))
    assert cross_attention_loss(a, b).item() > 0
    assert cross_attention_loss(a, b).item() == pytest.approx(cross_attention_loss(b, a).item())
    doubled = cross_attention_loss(a + 2 * (b - a), a)
    assert doubled.item() == pytest.approx(4 * cross_attention_loss(b, a).item(), rel=1e-5)
    # the official reduction: squared error summed over positions and tokens, averaged over (batch, heads)
    expected = ((a - b) ** 2).sum(dim=(2, 3)).mean()
    assert cross_attention_loss(a, b).item() == pytest.approx(expected.item())


# --------------------------------------------------------------------------------------------- PatchNCE


def test_patch_nce_orthonormal_features():
    h = torch.eye(16)[None]  # 16 patches, 16 channels, orthonormal rows
    tau = 0.07
    expected = math.log(1 + 15 * math.exp(-1 / tau))
    assert patch_nce_loss(h, h, tau).item() == pytest.approx(expected, abs=2e-7)  # fp32 log-sum-exp resolution
    assert expected < 1e-5


def test_patch_nce_identical_positions_give_log_s():
    h = torch.ones(1, 256, 8)
    assert patch_nce_loss(h, h, 0.07).item() == pytest.approx(math.log(256), abs=1e-4)


def test_patch_nce_prefers_aligned_positions_and_is_scale_invariant():
    h = torch.randn(2, 64, 32, generator=_gen(7))
    perm = torch.roll(torch.arange(64), 5)
    assert patch_nce_loss(h, h).item() < patch_nce_loss(h, h[:, perm]).item()
    k = torch.randn(2, 64, 32, generator=_gen(8))
    assert patch_nce_loss(h, 3.5 * k).item() == pytest.approx(patch_nce_loss(h, k).item(), rel=1e-5)
    assert patch_nce_loss(0.2 * h, k).item() == pytest.approx(patch_nce_loss(h, k).item(), rel=1e-5)


def test_patch_nce_gradient_reaches_the_edited_side_only():
    h = torch.randn(1, 32, 16, generator=_gen(9)).requires_grad_(True)
    k = torch.randn(1, 32, 16, generator=_gen(10)).requires_grad_(True)
    patch_nce_loss(h, k).backward()
    assert h.grad is None  # the query is the reference, stop-gradient (Eq. 15)
    assert k.grad is not None and k.grad.abs().sum() > 0


def test_patch_pooling_and_sampling_bookkeeping():
    h, w = 6, 4
    index_map = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(1, 3, 1, 1)
    rows = pool_patches(index_map, 1)
    ids = sample_patch_ids(h * w, 10, _gen(11))
    assert len(ids) == 10 and len(set(ids.tolist())) == 10
    assert torch.equal(rows[0, ids, 0], ids.float())  # row a of the flattening is position a
    assert torch.equal(ids, sample_patch_ids(h * w, 10, _gen(11)))
    assert len(sample_patch_ids(h * w, 256, _gen(12))) == h * w  # S = min(n_patches, h*w)
    pooled = pool_patches(index_map, 2)
    assert pooled.shape == (1, 6, 3) and pooled[0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert pool_patches(index_map, 5) is None  # a patch larger than the map is skipped


def test_patch_nce_settings_are_validated():
    with pytest.raises(InputError):
        PatchNCESettings(num_patches=1)
    with pytest.raises(InputError):
        PatchNCESettings(patch_sizes=(0,))
    with pytest.raises(InputError):
        PatchNCESettings(tau=0)


def test_offsets_are_drawn_per_channel_and_level_from_the_height():
    """The official order: channels outer, pyramid levels inner, each offset from the level's height, which also
    decides when a non-square pyramid stops (64 high x 16 wide: four levels, not the two the width would allow)."""
    heights = []
    loss = autocorrelation_loss(torch.randn(1, 4, 64, 16, generator=_gen(7)), shift=lambda h: heights.append(h) or 1)
    assert heights == [64, 32, 16, 8] * 4
    assert torch.isfinite(loss)
    drawn = []
    autocorrelation_loss(torch.randn(2, 3, 16, 16, generator=_gen(8)), shift=lambda h: drawn.append(h) or 1)
    assert drawn == [16, 8] * 6  # every channel of every batch item has its own pyramid
