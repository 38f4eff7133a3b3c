"""PairCustomization inference: style guidance invariants (spec §8.4) on tiny SD 1.x and SDXL models."""

import copy

import numpy as np
import pytest
import torch

from styleforge.diffusion.sampling import count_unet_calls
from styleforge.errors import InputError
from styleforge.pair_customization import PairCustomizationPipeline, StyleAdapter
from styleforge.pair_customization.adapters import UNetAdapters, orthogonal_downs
from styleforge.pair_customization.pipeline import _locked_steps, make_scheduler, plain_timesteps


def random_style(unet, family, word="watercolor", seed=0, scale=0.3):
    """A style with orthonormal A and random (non-zero) B, as if trained."""
    probe = UNetAdapters(copy.deepcopy(unet))
    _, style_downs = orthogonal_downs([l.in_features for l in probe.layers], 4, 4)
    g = torch.Generator().manual_seed(seed)
    tensors = {name: (style_downs[n], torch.randn(m, 4, generator=g) * scale) for name, (n, m) in probe.widths.items()}
    return StyleAdapter(tensors, {"family": family, "style_word": word, "alpha": 4.0, "base_model": "tiny",
                                  "targets": ["to_q", "to_k", "to_v", "to_out.0"]})


def make_pipe(components, family, styles=("a",)):
    c = dict(components, unet=copy.deepcopy(components["unet"]))
    pipe = PairCustomizationPipeline(**c)
    pipe.set_progress_bar_config(disable=True)
    for i, name in enumerate(styles):
        pipe.load_style(random_style(pipe.unet, family, seed=i), name)
    return pipe


@pytest.fixture(scope="module")
def sd1_pipe(sd1_components):
    return make_pipe(sd1_components, "sd1", styles=("a", "b"))


def plain_cfg_latents(pipe, prompt, steps, scheduler, guidance, seed=0):
    """An independent plain-CFG sampler on the base model (the reference for scale 0)."""
    sched = make_scheduler(scheduler, pipe.scheduler.config)
    sched.set_timesteps(steps)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    cond, uncond = pipe.encode_prompt(prompt), pipe.encode_prompt("", negative=True)
    both = type(cond).cat([uncond, cond])
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        e_u, e_c = pipe.unet(torch.cat([inp, inp]), t, **both.unet_kwargs()).sample.float().chunk(2)
        x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


@torch.no_grad()
def test_style_scale_zero_is_plain_cfg_exactly(sd1_pipe, sd1_components):
    out = sd1_pipe("a photo of a cat", style_scale=0.0, num_inference_steps=6, scheduler="pndm", output_type="latent")
    ref = plain_cfg_latents(sd1_pipe, "a photo of a cat", 6, "pndm", 7.5)
    assert torch.equal(out.latents, ref)
    assert out.unet_rows == 2 * 7  # PNDM visits 7 timesteps for 6 steps; no style pass at scale 0
    default = sd1_pipe("a photo of a cat", style_scale=0.0, num_inference_steps=6, output_type="latent")
    assert torch.equal(default.latents, plain_cfg_latents(sd1_pipe, "a photo of a cat", 6, "euler", 7.5))  # official sampler
    styled = sd1_pipe("a photo of a cat", styles="a", num_inference_steps=6, scheduler="pndm", output_type="latent")
    assert not torch.allclose(styled.latents, ref, atol=1e-4)
    x = torch.randn(1, 4, 16, 16)  # adapter state restored: a plain call afterwards equals the base model
    cond = sd1_pipe.encode_prompt("x").unet_kwargs()
    assert torch.equal(sd1_pipe.unet(x, 10, **cond).sample, sd1_components["unet"](x, 10, **cond).sample)


@torch.no_grad()
def test_guidance_is_affine_blends_and_reduces(sd1_pipe):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(600)
    prep = lambda **kw: sd1_pipe.prepare_guidance("a photo of a dog", **kw)  # noqa: E731
    eps = lambda st: sd1_pipe.guided_noise(st, x, t)  # noqa: E731
    e0, e1, e2 = (eps(prep(styles="a", style_scale=s)) for s in (0.0, 1.5, 3.0))
    assert torch.allclose(e2 - e0, 2 * (e1 - e0), atol=1e-5)  # affine in lambda_style (Eq. 10)
    # one adapter at lambda equals two copies at lambda/2 (Eq. 11); "b" at weight 0 changes nothing
    copies = make_pipe({k: getattr(sd1_pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                       "sd1", styles=())
    copies.load_style(sd1_pipe.styles["a"], "a1")
    copies.load_style(sd1_pipe.styles["a"], "a2")
    half = copies.guided_noise(copies.prepare_guidance("a photo of a dog", style_scale={"a1": 1.5, "a2": 1.5}), x, t)
    full = eps(prep(styles="a", style_scale=3.0))
    assert torch.allclose(half, full, atol=1e-5)
    assert torch.equal(eps(prep(style_scale={"a": 3.0, "b": 0.0})), full)
    # blended term = sum of the individual terms
    ea, eb = eps(prep(styles="a", style_scale=2.0)), eps(prep(styles="b", style_scale=1.0))
    eab = eps(prep(style_scale={"a": 2.0, "b": 1.0}))
    assert torch.allclose(eab - e0, (ea - e0) + (eb - e0), atol=1e-5)
    # lambda_style = lambda_cfg: CFG whose conditional branch is the style model (spec §4.2)
    st = prep(styles="a", style_scale=7.5, guidance_scale=7.5)
    with sd1_pipe.adapters.active({}):
        e_u = sd1_pipe.unet(x, t, **st.uncond.unet_kwargs()).sample
    with sd1_pipe.adapters.active({"a": 1.0}):
        e_s = sd1_pipe.unet(x, t, **st.styles[0][2].unet_kwargs()).sample
    assert torch.allclose(sd1_pipe.guided_noise(st, x, t), e_u + 7.5 * (e_s - e_u), atol=1e-4)
    # negative prompt = prompt: independent of lambda_cfg (the real-image edit mode)
    n1 = eps(prep(styles="a", negative_prompt="a photo of a dog", guidance_scale=2.0))
    n2 = eps(prep(styles="a", negative_prompt="a photo of a dog", guidance_scale=9.0))
    assert torch.equal(n1, n2)


@torch.no_grad()
def test_structure_lock_and_branched_base_run(sd1_pipe):
    def trajectory(**kw):
        steps = []
        out = sd1_pipe("a photo of a dog", styles="a", num_inference_steps=8, scheduler="dpm", output_type="latent",
                       callback=lambda i, t, x: steps.append(x.clone()), **kw)
        return out, steps

    base, base_steps = trajectory(style_scale=0.0, style_start_step=0)
    locked, locked_steps = trajectory(style_scale=3.0, style_start_step=3)
    for k in range(3):
        assert torch.equal(base_steps[k], locked_steps[k])  # the first K steps are plain CFG, bitwise
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(base_steps[3:], locked_steps[3:]))
    both = sd1_pipe("a photo of a dog", styles="a", style_scale=3.0, num_inference_steps=8, scheduler="dpm",
                    style_start_step=3, output_type="latent", return_base=True)
    assert torch.equal(both.latents, locked.latents) and torch.equal(both.base_images, base.latents)
    assert both.unet_rows == 8 * 2 + 5 * 3  # the branched run shares the 3 locked steps
    # the official threshold: t > 800 on 50 leading-spaced steps = 10 locked steps (11 PLMS calls with PNDM)
    config = sd1_pipe.scheduler.config
    assert _locked_steps(plain_timesteps("ddim", config, 50), 0, 800) == 10
    assert _locked_steps(plain_timesteps("pndm", config, 50), 0, 800) == 11
    with count_unet_calls(sd1_pipe.unet) as calls:  # 10 DDIM steps: 901 and 801 are locked
        sd1_pipe("a photo of a dog", styles="a", num_inference_steps=10, scheduler="ddim", style_start_timestep=800,
                 output_type="latent")
    assert calls["rows"] == 2 * 2 + 8 * 3 and calls["calls"] == 2 + 8 * 2  # 1 batched base call + 1 style call


@torch.no_grad()
def test_lora_scale_baseline_mode(sd1_pipe):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor(400)
    prep = lambda a: sd1_pipe.prepare_guidance("a photo of a dog", styles="a", style_scale=a, mode="lora_scale")  # noqa: E731
    plain = sd1_pipe.guided_noise(sd1_pipe.prepare_guidance("a photo of a dog", styles="a", style_scale=0.0), x, t)
    assert torch.equal(sd1_pipe.guided_noise(prep(0.0), x, t), plain)  # alpha = 0: the base model
    st = prep(1.0)
    with sd1_pipe.adapters.active({"a": 1.0}):  # alpha = 1: CFG on the adapted model with c_style in both branches
        e_u = sd1_pipe.unet(x, t, **st.uncond.unet_kwargs()).sample
        e_s = sd1_pipe.unet(x, t, **st.styles[0][2].unet_kwargs()).sample
    assert torch.allclose(sd1_pipe.guided_noise(st, x, t), e_u + 7.5 * (e_s - e_u), atol=1e-5)
    with pytest.raises(InputError, match="one style at a time"):
        sd1_pipe.prepare_guidance("x", style_scale=0.5, mode="lora_scale")


def test_schedulers_errors_and_real_photos(sd1_pipe, tmp_path):
    for name in ("pndm", "ddim", "euler", "euler_a", "dpm"):
        out = sd1_pipe("a photo of a cat", styles="a", num_inference_steps=3, scheduler=name, style_start_step=1)
        assert out.images[0].size == (32, 32)
    with pytest.raises(InputError, match="unknown scheduler"):
        sd1_pipe("x", num_inference_steps=2, scheduler="lms")
    with pytest.raises(InputError, match="unknown style"):
        sd1_pipe("x", styles="zzz", num_inference_steps=2)
    with pytest.raises(InputError, match="2 style scales for 1 styles"):
        sd1_pipe("x", styles=["a"], style_scale=[1.0, 2.0], num_inference_steps=2)
    photo = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    real = sd1_pipe("a photo of a dog", image=photo, styles="a", style_scale=3.0, num_inference_steps=6,
                    output_type="latent", return_base=True)
    inv, _ = sd1_pipe.invert(photo, "a photo of a dog", num_inference_steps=6)
    recon = sd1_pipe("a photo of a dog", image=photo, styles="a", style_scale=0.0, num_inference_steps=6,
                     output_type="latent")
    assert torch.equal(recon.latents, real.base_images[0][None])  # the base branch is the DDIM reconstruction
    assert not torch.allclose(real.latents, recon.latents, atol=1e-4)
    assert recon.latents.shape == inv.x0[None].shape


@torch.no_grad()
def test_inversion_then_regeneration_is_exact_with_a_constant_denoiser(sd1_pipe):
    """Spec §8.4 #32: with a denoiser independent of x and t, DDIM regeneration retraces the inversion."""
    pipe = copy.copy(sd1_pipe)
    constant = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    class Stub(torch.nn.Module):
        config = sd1_pipe.unet.config
        dtype = torch.float32
        device = torch.device("cpu")

        def forward(self, x, t, **kw):
            return type("O", (), {"sample": constant.expand(x.shape[0], -1, -1, -1)})()

    photo = (np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)
    pipe.register_modules(unet=Stub())
    pipe._styles, pipe._adapters = {}, None
    out = pipe("a photo", image=photo, styles=[], num_inference_steps=10, output_type="latent")
    x0 = pipe.encode_images(pipe.preprocess(photo)).float()
    assert torch.allclose(out.latents, x0, atol=1e-5)


def test_sdxl_style_guidance(sdxl_components, sd1_pipe):
    pipe = make_pipe(sdxl_components, "sdxl")
    base = pipe("a photo of a cat", style_scale=0.0, num_inference_steps=4, scheduler="euler", style_start_step=0,
                output_type="latent")
    ref = plain_cfg_latents(pipe, "a photo of a cat", 4, "euler", 5.0)
    assert torch.equal(base.latents, ref)  # SDXL default CFG 5, zero unconditional embeddings
    styled = pipe("a photo of a cat", style_scale=3.0, num_inference_steps=4, scheduler="euler", style_start_step=1,
                  output_type="latent")
    assert not torch.allclose(styled.latents, ref, atol=1e-4)
    with pytest.raises(InputError, match="SDXL model .* cannot be used with the Stable Diffusion 1.x"):
        sd1_pipe.load_style(pipe.styles["a"], "from_xl")


@torch.no_grad()
def test_zero_style_adapter_reduces_to_text_guidance(sd1_components):
    """Spec §8.4 #24: with B = 0 the style term is lambda (eps_0(x, c_style) - eps_0(x, c))."""
    pipe = make_pipe(sd1_components, "sd1", styles=())
    pipe.load_style(random_style(pipe.unet, "sd1", word="pastel", scale=0.0), "zero")
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    st = pipe.prepare_guidance("a photo of a cat", style_scale=2.0)
    assert pipe.styles["zero"].prompt_for("a photo of a cat") == "a photo of a cat in pastel style"  # no V* token
    base = pipe.guided_noise(pipe.prepare_guidance("a photo of a cat", style_scale=0.0), x, 500)
    e_c = pipe.unet(x, 500, **st.cond.unet_kwargs()).sample
    e_cs = pipe.unet(x, 500, **st.styles[0][2].unet_kwargs()).sample
    assert torch.allclose(pipe.guided_noise(st, x, 500), base + 2.0 * (e_cs - e_c), atol=1e-5)

