"""Region stylizer losses, schedule, patch sampler and mask generator (spec §8 D)."""

import math

import pytest
import torch

from styleforge.region.losses import (
    code_consistency_loss,
    content_alignment_loss,
    d_logistic_loss,
    g_nonsaturating_loss,
    r1_penalty,
    reconstruction_loss,
    regularizer_active,
)
from styleforge.region.masks import random_masks
from styleforge.region.model import build_models
from styleforge.region.patches import sample_patches
from styleforge.region.presets import get_preset


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_reconstruction_loss():
    x, y = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    assert reconstruction_loss(x, x).item() == 0.0
    torch.testing.assert_close(reconstruction_loss(x, y), (x - y).abs().mean())


def test_code_consistency_loss():
    c, s = _rand(2, 4, 8, 8), _rand(2, 16, seed=1)
    c2, s2 = _rand(2, 4, 8, 8, seed=2), _rand(2, 16, seed=3)
    assert code_consistency_loss(c, s, c.clone(), s.clone()).item() == 0.0
    assert code_consistency_loss(c2, s2, c, s).item() > 0
    content_only = code_consistency_loss(c2, s2, c, s, style_weight=0.0)
    torch.testing.assert_close(content_only, (c2 - c).abs().mean())
    assert code_consistency_loss(c2, s, c, s2 * 100, style_weight=0.0) == content_only  # λ = 0 ignores S
    style_term = (s2 - s).abs().mean()
    for lam in (0.5, 2.0, 10.0):  # the style term scales linearly with λ
        torch.testing.assert_close(code_consistency_loss(c2, s2, c, s, style_weight=lam), content_only + lam * style_term)


def test_code_consistency_is_zero_for_an_exact_reconstruction():
    """Feeding I_g := A (an exact "reconstruction") with targets E(A) gives exactly 0."""
    torch.manual_seed(0)
    enc = build_models(get_preset("test"))["encoder"].eval()
    a = _rand(2, 3, 32, 32)
    with torch.no_grad():
        target_c, target_s = enc(a)
        e_g = enc.features(a.clone())
        assert code_consistency_loss(enc.content(e_g), enc.style(e_g), target_c, target_s).item() == 0.0
        # and it is not zero for an image that differs from A
        e_h = enc.features(a.flip(-1))
        assert code_consistency_loss(enc.content(e_h), enc.style(e_h), target_c, target_s).item() > 0


def test_content_alignment_loss():
    a, i_g, i_h = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1), _rand(2, 3, 8, 8, seed=2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    assert content_alignment_loss(mask * i_g + (1 - mask) * a, i_g, a, mask).item() == 0.0
    base = content_alignment_loss(i_h, i_g, a, mask)
    assert base.item() > 0
    # editing A inside the mask, or I_g outside it, changes nothing
    assert content_alignment_loss(i_h, i_g, a + 5 * mask, mask) == base
    assert content_alignment_loss(i_h, i_g - 7 * (1 - mask), a, mask) == base
    # but editing A outside the mask does
    assert content_alignment_loss(i_h, i_g, a + 0.5 * (1 - mask), mask) != base
    zeros, ones = torch.zeros_like(mask), torch.ones_like(mask)
    torch.testing.assert_close(content_alignment_loss(i_h, i_g, a, zeros), (i_h - a).abs().mean())
    torch.testing.assert_close(content_alignment_loss(i_h, i_g, a, ones), (i_h - i_g).abs().mean())


def test_gradient_routing_with_default_detach_flags():
    torch.manual_seed(0)
    nets = build_models(get_preset("test"))
    enc, gen = nets["encoder"], nets["generator"]
    a = _rand(2, 3, 32, 32)
    e_a = enc.features(a)
    c_a, s_a = enc.content(e_a), enc.style(e_a)
    s_b = s_a.roll(1, 0)
    i_g = gen(c_a, s_b)
    e_g = enc.features(i_g)
    # the target copies of C_A and S_B (the generator's inputs are separate) get no gradient
    target_c, target_s = c_a.detach().requires_grad_(True), s_b.detach().requires_grad_(True)
    l_cc = code_consistency_loss(enc.content(e_g), enc.style(e_g), target_c, target_s)
    grads = torch.autograd.grad(l_cc, [target_c, target_s], retain_graph=True, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)
    l_cc_live = code_consistency_loss(enc.content(e_g), enc.style(e_g), target_c, target_s, detach_targets=False)
    grads = torch.autograd.grad(l_cc_live, [target_c, target_s], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    l_cc = code_consistency_loss(enc.content(e_g), enc.style(e_g), c_a, s_b)
    # L_CC reaches E and G
    enc_params, gen_params = list(enc.parameters()), list(gen.parameters())
    g_e = torch.autograd.grad(l_cc, enc_params, retain_graph=True, allow_unused=True)
    g_g = torch.autograd.grad(l_cc, gen_params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_e)
    assert any(g is not None and g.abs().sum() > 0 for g in g_g)
    # L_CA: the pseudo target copy of I_g gets no gradient, but E and G do
    target = i_g.detach().requires_grad_(True)
    mask = random_masks(2, 32, 32, torch.Generator().manual_seed(0))
    mask_e = torch.nn.functional.interpolate(mask, size=(8, 8), mode="area")
    composed = mask_e * e_g + (1 - mask_e) * e_a
    i_h = gen(enc.content(composed), enc.style(composed))
    l_ca = content_alignment_loss(i_h, target, a, mask)
    (g_target,) = torch.autograd.grad(l_ca, [target], retain_graph=True, allow_unused=True)
    assert g_target is None
    g_e = torch.autograd.grad(l_ca, enc_params, retain_graph=True, allow_unused=True)
    g_g = torch.autograd.grad(l_ca, gen_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_e)
    assert any(g is not None and g.abs().sum() > 0 for g in g_g)


def test_k_schedule():
    assert [t for t in range(12) if regularizer_active(t, 4)] == [0, 4, 8]
    assert [t for t in range(12) if regularizer_active(t, 4, offset=2)] == [2, 6, 10]
    assert [t for t in range(12) if regularizer_active(t, 4, start=5)] == [8]
    assert all(regularizer_active(t, 1) for t in range(12))


def test_gan_terms():
    zero = torch.zeros(3, 1)
    torch.testing.assert_close(g_nonsaturating_loss(zero), torch.tensor(math.log(2)))
    torch.testing.assert_close(d_logistic_loss(zero, zero), torch.tensor(2 * math.log(2)))
    logits = torch.linspace(-3, 3, 7)[:, None]
    real_terms = [d_logistic_loss(v[None], torch.full((1, 1), -1e4)).item() for v in logits]
    fake_terms = [g_nonsaturating_loss(v[None]).item() for v in logits]
    assert all(x > y for x, y in zip(real_terms, real_terms[1:]))  # higher real logit, lower D loss
    assert all(x > y for x, y in zip(fake_terms, fake_terms[1:]))


def test_r1_penalty_on_linear_and_constant_discriminators():
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    out = (x.flatten(1) * w).sum(1, keepdim=True)  # D(x) = <w, x>
    r1 = r1_penalty(out, x, gamma=10.0)
    torch.testing.assert_close(r1, 0.5 * 10.0 * w.pow(2).sum())
    x2 = torch.randn(5, 3, 4, 4, requires_grad=True)
    const = (x2.sum(dim=(1, 2, 3), keepdim=True) * 0 + 1.5).view(5, 1)
    assert r1_penalty(const, x2, gamma=10.0).item() == 0.0


def test_patch_sampler():
    images = _rand(3, 3, 64, 64)
    gen = torch.Generator().manual_seed(0)
    patches, boxes = sample_patches(images, 4, 16, scale=(1 / 8, 1 / 4), generator=gen, return_boxes=True)
    assert patches.shape == (12, 3, 16, 16)
    side = boxes[:, 2]
    assert (side >= 64 / 8 - 1e-4).all() and (side <= 64 / 4 + 1e-4).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + side <= 64 + 1e-4).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + side <= 64 + 1e-4).all()
    again = sample_patches(images, 4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, patches)
    other = sample_patches(images, 4, 16, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, patches)
    colour = torch.tensor([0.25, -0.5, 0.75])
    constant = colour.view(1, 3, 1, 1).expand(2, 3, 32, 32).contiguous()
    flat = sample_patches(constant, 3, 8, generator=gen)
    torch.testing.assert_close(flat, colour.view(1, 3, 1, 1).expand_as(flat), atol=1e-6, rtol=0)
    # an unflipped crop is the image content itself: a crop of the full image reproduces the image
    whole = sample_patches(images, 1, 64, scale=(1.0, 1.0), generator=gen, flip=False)
    torch.testing.assert_close(whole, images, atol=1e-5, rtol=0)


def test_random_mask_generator():
    masks = random_masks(16, 64, 48, torch.Generator().manual_seed(0), coverage=(0.1, 0.7))
    assert masks.shape == (16, 1, 64, 48)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    assert (coverage >= 0.1).all() and (coverage <= 0.7).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 16  # all different
    again = random_masks(16, 64, 48, torch.Generator().manual_seed(0), coverage=(0.1, 0.7))
    assert torch.equal(masks, again)
    trivial = random_masks(20, 32, 32, torch.Generator().manual_seed(0), trivial_probability=1.0)
    assert all(m.min() == m.max() for m in trivial)
    narrow = random_masks(8, 32, 32, torch.Generator().manual_seed(3), coverage=(0.3, 0.4))
    c = narrow.mean(dim=(1, 2, 3))
    assert (c >= 0.3).all() and (c <= 0.4).all()


@pytest.mark.parametrize("mode", ["area", "nearest", "bilinear"])
def test_mask_resampling_keeps_trivial_masks(mode):
    from styleforge.region.masks import resample_mask

    for value in (0.0, 1.0):
        m = torch.full((2, 1, 32, 32), value)
        assert torch.equal(resample_mask(m, (8, 8), mode), torch.full((2, 1, 8, 8), value))
    soft = random_masks(2, 32, 32, torch.Generator().manual_seed(0))
    if mode == "area":
        torch.testing.assert_close(resample_mask(soft, (8, 8), mode).mean(), soft.mean(), atol=1e-6, rtol=0)
