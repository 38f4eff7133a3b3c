import warnings

import pytest
import torch

from styleforge.diffusion.adain import adain, channel_stats, masked_adain
from styleforge.diffusion.freeu import FreeUConfig, apply_freeu, fourier_filter
from styleforge.diffusion.prompts import Conditioning


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_adain_identity_and_statistics():
    x, y = _rand(1, 4, 8, 8), _rand(1, 4, 8, 8, seed=1) * 3 + 2
    assert torch.allclose(adain(x, x), x, atol=1e-6)
    out = adain(x, y)
    assert torch.allclose(out.mean(dim=(-2, -1)), y.mean(dim=(-2, -1)), atol=1e-6)
    vx, vy = x.var(dim=(-2, -1), unbiased=True), y.var(dim=(-2, -1), unbiased=True)
    assert torch.allclose(out.var(dim=(-2, -1), unbiased=True), vx / (vx + 1e-5) * (vy + 1e-5), atol=1e-6)


def test_adain_affine_invariance():
    x, y = _rand(1, 4, 8, 8), _rand(1, 4, 8, 8, seed=1)
    a = torch.tensor([0.5, 2.0, 3.0, 1.5], dtype=torch.float64).view(1, 4, 1, 1)
    b = torch.tensor([1.0, -2.0, 0.0, 5.0], dtype=torch.float64).view(1, 4, 1, 1)
    assert torch.allclose(adain(a * x + b, y), adain(x, y), atol=1e-4)


def test_masked_adain():
    x, y = _rand(1, 4, 8, 8), _rand(1, 4, 8, 8, seed=1) * 2 + 1
    cm = torch.zeros(1, 1, 8, 8)
    cm[..., 2:6, 2:6] = 1
    sm = torch.zeros(1, 1, 8, 8)
    sm[..., :4, :] = 1
    out = masked_adain(x, y, cm, sm)
    assert torch.equal(out[..., cm[0, 0] == 0], x[..., cm[0, 0] == 0])  # outside untouched, bit for bit
    mean_in, _ = channel_stats(out, cm)
    mean_style, _ = channel_stats(y, sm)
    assert torch.allclose(mean_in, mean_style, atol=1e-6)
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(masked_adain(x, y, ones, ones), adain(x, y), atol=1e-10)


@pytest.mark.parametrize("pixels", [0, 1])
def test_masked_adain_tiny_mask_falls_back_instead_of_nan(pixels):
    x, y = _rand(1, 4, 8, 8), _rand(1, 4, 8, 8, seed=1)
    cm = torch.zeros(1, 1, 8, 8)
    cm.view(-1)[:pixels] = 1
    ones = torch.ones(1, 1, 8, 8)
    with pytest.warns(UserWarning, match="fewer than 2 pixels"):
        out = masked_adain(x, y, cm, ones)
    assert torch.isfinite(out).all() and torch.allclose(out, adain(x, y))


def test_official_replica_hazard_empty_mask_gives_nan():
    """The official code has no fallback: an empty mask makes the whole latent NaN (its black-image issues)."""
    x, y = _rand(1, 4, 8, 8), _rand(1, 4, 8, 8, seed=1)
    ones = torch.ones(1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = masked_adain(x, y, ones, torch.zeros(1, 1, 8, 8), fallback=None)
    assert torch.isnan(out).all()


def test_fourier_filter_closed_forms():
    c = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(fourier_filter(c, 1, 0.25), 0.25 * c, atol=1e-5)  # DC lives in the central block
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    checker = checker.expand(1, 2, 8, 8)
    assert torch.allclose(fourier_filter(checker, 1, 0.25), checker, atol=1e-5)  # Nyquist is untouched
    x = _rand(1, 2, 8, 8).float()
    assert torch.allclose(fourier_filter(x, 1, 1.0), x, atol=1e-5)
    spec = lambda t: torch.fft.fftshift(torch.fft.fftn(t, dim=(-2, -1)), dim=(-2, -1))  # noqa: E731
    ratio = (spec(fourier_filter(x, 1, 0.5)) / spec(x)).real
    mask = torch.ones(8, 8)
    mask[3:5, 3:5] = 0.5  # the central 2x2 block of the shifted spectrum: frequencies {-1, 0} squared
    # keeping the real part symmetrises the mask: a frequency and its mirror get the mean of their two factors
    mirror = torch.tensor([(8 - i) % 8 for i in range(8)])
    expected = (mask + mask[mirror][:, mirror]) / 2
    assert torch.allclose(ratio, expected.expand_as(ratio), atol=1e-4)
    assert expected[4, 4] == 0.5 and (expected[:3] == 1).all()  # DC fully scaled, high frequencies untouched


def _eps(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=torch.randn(1, 77, 32, generator=g)).sample


def test_freeu_identity_at_unit_scales_and_active_otherwise(sd1_components):
    unet = sd1_components["unet"]
    stock = _eps(unet)
    for mode in ("cia_backbone", "official"):
        apply_freeu(unet, mode, FreeUConfig(b1=1, b2=1, s1=1, s2=1))
        assert torch.allclose(_eps(unet), stock, atol=1e-5), mode
        apply_freeu(unet, mode)  # default strengths change the output
        assert not torch.allclose(_eps(unet), stock, atol=1e-4), mode
    apply_freeu(unet, "off")
    assert torch.equal(_eps(unet), stock)


def test_backbone_freeu_touches_only_backbone_half_before_each_up_block(sd1_components):
    unet = sd1_components["unet"]
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["hidden_states"].clone(), [r.clone() for r in kwargs["res_hidden_states_tuple"]]))

    handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in unet.up_blocks]
    _eps(unet)
    plain = list(seen)
    seen.clear()
    freeu = apply_freeu(unet, "cia_backbone", FreeUConfig(b1=2.0, b2=3.0, s1=1.0, s2=1.0))
    for h in handles:  # re-register the recorders so they run after FreeU's hooks and see its edit
        h.remove()
    handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in unet.up_blocks]
    _eps(unet)
    freeu.disable()
    for h in handles:
        h.remove()
    first_plain, first_freeu = plain[0], seen[0]  # up block 0 sees identical inputs in both runs
    h0, hf = first_plain[0], first_freeu[0]
    half = h0.shape[1] // 2
    assert torch.allclose(hf[:, :half], 2.0 * h0[:, :half], atol=1e-5)
    assert torch.allclose(hf[:, half:], h0[:, half:], atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(first_plain[1], first_freeu[1]))  # skips untouched
