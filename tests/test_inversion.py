import pytest
import torch

from styleforge.diffusion import inversion as inv_mod
from styleforge.diffusion.freeu import apply_freeu
from styleforge.diffusion.inversion import Inversion, InversionCache, ddim_invert, edit_friendly_invert
from styleforge.diffusion.prompts import Conditioning
from styleforge.diffusion.sampling import (alpha_bar, ddim_sample, edit_friendly_sample, noise_predictor, step_ratio,
                                           timesteps_for)

K = 10


def _cond(dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(1, 77, dim, generator=g))


def _x0(seed=0):
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_sd_grid_bookkeeping(scheduler):
    ts = timesteps_for(scheduler, 100)
    assert ts[0] == 991 and ts[-1] == 1 and len(ts) == 100
    assert ts[32:][0] == 671 and len(ts[32:]) == 68
    assert step_ratio(scheduler, 100) == 10
    assert torch.equal(alpha_bar(scheduler, -9), scheduler.alphas_cumprod[0])  # set_alpha_to_one=False


def test_input_ignoring_unet_makes_inversion_then_sampling_an_identity(scheduler):
    eps_of_t = lambda x, t: torch.full_like(x, 0.1) * (int(t) / 1000.0)  # noqa: E731
    x0 = _x0()
    inv = ddim_invert(eps_of_t, x0, scheduler, K)
    back = ddim_sample(eps_of_t, inv.latents[0][None], scheduler, inv.timesteps, K)
    assert torch.allclose(back, x0, atol=1e-5)


def test_ddim_inversion_reconstructs_with_tiny_unet(sd1_components, scheduler):
    """DDIM inversion is first-order accurate: the error shrinks with the step count and with eps's variation."""
    import copy

    unet = copy.deepcopy(sd1_components["unet"])
    with torch.no_grad():  # a random UNet's eps varies far more than a trained one's; damp it to a realistic size
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    eps = noise_predictor(unet, _cond())
    x0 = _x0()
    errors = {}
    with torch.no_grad():
        for steps in (10, 50):
            inv = ddim_invert(eps, x0, scheduler, steps)
            assert inv.latents.shape == (steps + 1, 4, 16, 16) and torch.equal(inv.x0, x0[0])
            back = ddim_sample(eps, inv.latents[0][None], scheduler, inv.timesteps, steps)
            errors[steps] = (back - x0).abs().max().item()
    assert errors[50] < 0.1 and errors[50] < errors[10] / 2, errors


def test_edit_friendly_shapes_marginals_and_last_map(sd1_components, scheduler):
    eps = noise_predictor(sd1_components["unet"], _cond())
    x0 = _x0()
    inv = edit_friendly_invert(eps, x0, scheduler, K, generator=torch.Generator().manual_seed(5))
    assert inv.latents.shape == (K + 1, 4, 16, 16) and inv.noise.shape == (K, 4, 16, 16)
    assert torch.equal(inv.latents[K], x0[0])
    assert inv.noise[K - 1].abs().sum() == 0
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn((1, 4, 16, 16), generator=g) for _ in range(K)]  # the official order: least noisy first
    a0 = alpha_bar(scheduler, inv.timesteps[0])
    # the noisiest latent is never rewritten: it is exactly the direct noising of x0 with the last draw
    assert torch.allclose(inv.latents[0], a0.sqrt() * x0[0] + (1 - a0).sqrt() * draws[-1][0], atol=1e-6)


@pytest.mark.parametrize("freeu", ["off", "cia_backbone"])
@pytest.mark.parametrize("skip", [0, 3, K - 1])
def test_edit_friendly_reconstructs_exactly_with_the_same_eps(sd1_components, scheduler, freeu, skip):
    unet = sd1_components["unet"]
    handle = apply_freeu(unet, freeu)
    try:
        eps = noise_predictor(unet, _cond())
        with torch.no_grad():
            inv = edit_friendly_invert(eps, _x0(), scheduler, K, generator=torch.Generator().manual_seed(0),
                                       zero_last_noise=False)
            x, ts, zs = inv.start(skip)
            x = x[None]
            for i, t in enumerate(ts):  # every intermediate latent is hit, not just the end
                x = edit_friendly_sample(eps, x, scheduler, t[None], zs[i:i + 1, None], K)
                assert torch.allclose(x[0], inv.latents[skip + i + 1], atol=1e-4)
    finally:
        apply_freeu(unet, "off")


def test_official_zeroed_last_map_ends_one_sigma_off(sd1_components, scheduler):
    eps = noise_predictor(sd1_components["unet"], _cond())
    with torch.no_grad():
        exact = edit_friendly_invert(eps, _x0(), scheduler, K, generator=torch.Generator().manual_seed(0), zero_last_noise=False)
        official = edit_friendly_invert(eps, _x0(), scheduler, K, generator=torch.Generator().manual_seed(0))
        x = edit_friendly_sample(eps, official.latents[0][None], scheduler, official.timesteps, official.noise[:, None], K)
    from styleforge.diffusion.sampling import alpha_pair, ddpm_variance

    sigma = ddpm_variance(*alpha_pair(scheduler, official.timesteps[-1], K)).sqrt()
    assert torch.allclose(x[0], exact.x0 - sigma * exact.noise[-1], atol=1e-4)
    assert (x[0] - exact.x0).abs().max() > 1e-3


def test_official_cfg_pairing_is_inexact(sd1_components, scheduler):
    """Documents cross-image attention spec §4.4: inversion with CFG 3.5, sampling cond-only does not reconstruct."""
    unet = sd1_components["unet"]
    cond, uncond = _cond(seed=0), _cond(seed=1)
    with torch.no_grad():
        inv = edit_friendly_invert(noise_predictor(unet, cond, uncond=uncond, guidance_scale=3.5), _x0(), scheduler, K,
                                   generator=torch.Generator().manual_seed(0), zero_last_noise=False)
        x = edit_friendly_sample(noise_predictor(unet, cond), inv.latents[0][None], scheduler, inv.timesteps,
                                 inv.noise[:, None], K)
    err = (x[0] - inv.x0).abs().max().item()
    print(f"official-pairing reconstruction error: {err:.4f}")
    assert err > 1e-3


def test_determinism(sd1_components, scheduler):
    eps = noise_predictor(sd1_components["unet"], _cond())
    run = lambda s: edit_friendly_invert(eps, _x0(), scheduler, K, generator=torch.Generator().manual_seed(s))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.noise, c.noise)


def test_save_load_round_trip(tmp_path, scheduler):
    eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    inv = edit_friendly_invert(eps, _x0(), scheduler, K, generator=torch.Generator().manual_seed(0), prompt="a cat",
                               seed=0, model_id="m", image_hash="h", guidance_scale=3.5)
    p = inv.save(tmp_path / "inv.safetensors")
    back = Inversion.load(p)
    assert torch.equal(back.latents, inv.latents) and torch.equal(back.noise, inv.noise)
    assert back.settings() == inv.settings()
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    from styleforge.errors import InputError

    with pytest.raises(InputError):
        Inversion.load(tmp_path / "bad.safetensors")


def test_cache_keys_on_content_and_settings(tmp_path, scheduler):
    cache = InversionCache(tmp_path)
    eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    fields = dict(prompt="p", negative_prompt="", guidance_scale=1.0, seed=0, model_id="m", weights="w", extra={})
    img_a, img_b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    inv = ddim_invert(eps, _x0(), scheduler, K, image_hash=inv_mod.image_hash(img_a), **fields)
    cache.put(inv)
    key = dict(fields, kind="ddim", num_inference_steps=K, eta=0.0)
    assert cache.get(image_hash=inv_mod.image_hash(img_a), **key) is not None
    assert cache.get(image_hash=inv_mod.image_hash(img_b), **key) is None  # other content
    assert cache.get(image_hash=inv_mod.image_hash(img_a), **dict(key, seed=1)) is None  # other seed
    assert cache.get(image_hash=inv_mod.image_hash(img_a), **dict(key, prompt="q")) is None
    assert cache.get(image_hash=inv_mod.image_hash(img_a), **dict(key, num_inference_steps=20)) is None
    assert cache.get(image_hash=inv_mod.image_hash(img_a), **dict(key, weights="other")) is None  # other weights
