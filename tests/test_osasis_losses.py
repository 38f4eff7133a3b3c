"""OSASIS stage-1 losses: closed forms on stub encoders (spec §9 items 27-30)."""

import pytest
import torch

from styleforge.errors import InputError
from styleforge.osasis.losses import CLIPEmbedder, LossWeights, OSASISLoss, clip_text_direction_loss, directional_loss
from styleforge.osasis.tiny import StubPerceptual, tiny_clip


def flat(x):
    return x.flatten(1)


def sq(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def _vec(*v):
    return torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1)


@pytest.fixture
def loss():
    style_b, style_a = _vec(1.0, 0.0, 2.0), _vec(0.0, 1.0, 1.0)  # v_style = (1, -1, 1)
    return OSASISLoss(flat, sq, style_b, style_a, clip_recon="cosine")


def test_cross_domain_closed_form(loss):
    e_in = torch.tensor([[0.5, 0.2, -0.3], [1.0, 2.0, 3.0]])
    v = loss.v_style
    assert torch.allclose(loss.cross_domain(e_in + 0.7 * v, e_in), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(loss.cross_domain(e_in - 3.0 * v, e_in), torch.tensor(2.0), atol=1e-6)
    orth = torch.tensor([[1.0, 1.0, 0.0]])  # orthogonal to v_style
    assert torch.allclose(loss.cross_domain(e_in + orth, e_in), torch.tensor(1.0), atol=1e-6)
    a = loss.cross_domain(e_in + torch.tensor([[0.3, 0.1, 0.9]]), e_in)
    b = loss.cross_domain(e_in + 5 * torch.tensor([[0.3, 0.1, 0.9]]), e_in)
    assert torch.allclose(a, b, atol=1e-6)


def test_in_domain_closed_form(loss):
    e_in = torch.tensor([[0.5, 0.2, -0.3]])
    d_a = e_in - loss.e_style_a
    assert torch.allclose(loss.in_domain(loss.e_style_b + 2 * d_a, e_in), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(loss.in_domain(loss.e_style_b - 0.5 * d_a, e_in), torch.tensor(2.0), atol=1e-6)


def test_reconstruction_terms_and_total(loss):
    same = loss.style_b.clone()
    other = _vec(-1.0, 0.5, 0.0)
    e_in = torch.tensor([[0.5, 0.2, -0.3]])
    t_same = loss(e_in.view(1, 1, 1, 3) + loss.v_style.view(1, 1, 1, 3), e_in.view(1, 1, 1, 3), same)
    assert t_same["l1"] == 0 and t_same["lpips"] == 0 and abs(float(t_same["clip"])) < 1e-6
    assert abs(float(t_same["cross"])) < 1e-6
    t = loss(other, e_in.view(1, 1, 1, 3), other)
    assert 0 <= float(t["clip"]) <= 2
    w = LossWeights()
    expected = w.cross * t["cross"] + w.in_domain * t["in"] + w.recon_l1 * t["l1"] + w.recon_lpips * t["lpips"] + w.recon_clip * t["clip"]
    assert torch.allclose(t["total"], expected) and (w.cross, w.in_domain, w.recon_l1, w.recon_lpips, w.recon_clip) == (1, 0.5, 10, 10, 30)
    assert torch.allclose(t["l1"], (other - loss.style_b).abs().mean())
    l1 = OSASISLoss(flat, sq, loss.style_b, loss.style_a, clip_recon="l1")
    assert float(l1(other, e_in.view(1, 1, 1, 3), loss.style_b)["clip"]) == 0
    assert torch.allclose(l1.recon_clip_term(flat(other)), (flat(other) - flat(loss.style_b)).abs().sum())


def test_zero_length_directions_are_refused():
    s = _vec(1.0, 2.0, 3.0)
    with pytest.raises(InputError, match="zero length"):
        OSASISLoss(flat, None, s, s.clone(), LossWeights(recon_lpips=0)).cross_domain(torch.ones(1, 3), torch.zeros(1, 3))
    with pytest.raises(InputError, match="zero length"):
        clip_text_direction_loss(torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(InputError, match="perceptual"):
        OSASISLoss(flat, None, s, s * 2)
    with pytest.raises(InputError):
        OSASISLoss(flat, sq, s, s * 2, clip_recon="paper")
    stub = StubPerceptual()
    img = torch.rand(2, 3, 16, 16)
    assert torch.equal(stub(img, img), torch.zeros(2)) and (stub(img, img.flip(-1)) > 0).all()
    assert torch.allclose(directional_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), what="x"), torch.tensor(1.0))


def test_clip_embedder_preprocessing_and_gradients():
    emb = CLIPEmbedder(tiny_clip())
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    assert torch.equal(emb.pixels(x.detach()), x.detach()[..., ::2, ::2])  # official: nearest 64 -> 32, no normalisation
    e = emb(x)
    assert e.shape == (2, 16)
    e.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # losses reach the images through CLIP
    proper = CLIPEmbedder(tiny_clip(), preprocess="proper").pixels(torch.zeros(1, 3, 32, 32))
    assert torch.allclose(proper[0, 0], torch.full((32, 32), (0.5 - 0.48145466) / 0.26862954), atol=1e-5)
