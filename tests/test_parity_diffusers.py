"""Parity with diffusers' own implementations on identical tiny random weights (issue 19).

* pix2pix-zero mode (``lambda_cut=0``) against ``StableDiffusionPix2PixZeroPipeline`` (diffusers' deprecated
  pipelines): same weights, image latent, caption embedding, edit direction, steps, CFG scale and guidance rate,
  with the inversion grid and the regulariser's roll offsets aligned. Negative controls show that the comparison
  fails when the cross-attention guidance, the regulariser or the grid changes.
* The shared edit-friendly DDPM inversion against ``LEditsPPPipelineStableDiffusion.invert`` (DDIM scheduler,
  eta = 1, no skip): the definitions coincide there, except that LEDITS++ keeps the last noise map (our
  ``zero_last_noise=False``) and that diffusers 0.42 swaps the two CFG branches of its inversion (it unpacks
  ``encode_prompt``'s ``(prompt, negative)`` as ``(negative, prompt)``), so with a source prompt it computes
  eps("") + s (eps(P) - eps("")) with P and "" exchanged; we compare with that exchange made explicit.
"""

import copy

import numpy as np
import pytest
import torch

import styleforge.pix2pix_zerocon.losses as losses
from styleforge.diffusion.inversion import edit_friendly_invert
from styleforge.diffusion.sampling import alpha_bar, noise_predictor
from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline

CAPTION = "a photo of a cat"
IMAGE = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
DELTA = 0.5 * torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
STEPS, CFG, SEED = 4, 5.0, 3
# large enough that the guidance term moves the tiny random model's latents well above float rounding
GUIDANCE_LR = 5.0
# measured: x_T 5.1e-6 (p2pzero grid) / 8.6e-6 (symmetric), edited latents (magnitude ~7.5) 4.1e-5 / 4.6e-5,
# images in [0, 1] 5.5e-6 / 1.0e-5: attention kernels and summation order differ, nothing else. The smallest
# negative control (guidance rate +10%) moves the latents by 8.3e-3 and the images by 1.5e-3.
TOL_INVERTED, TOL_LATENT, TOL_IMAGE = 5e-5, 2e-4, 5e-5


class _OfficialInverseGrid:
    """pix2pix-zero's own inverse scheduler as a diffusers inverse scheduler: the UNet is called at the DDIM grid
    reversed without its two ends, each step moving from alpha-bar[t - 1] to alpha-bar[t - 1 + k]."""

    order = 1

    def __init__(self, ddim):
        self.ddim, self.config, self.alphas_cumprod = ddim, ddim.config, ddim.alphas_cumprod

    def set_timesteps(self, num_inference_steps, device=None):
        self.ddim.set_timesteps(num_inference_steps)
        self.ratio = self.config.num_train_timesteps // num_inference_steps
        self.timesteps = self.ddim.timesteps.flip(0)[1:-1]

    def scale_model_input(self, sample, timestep):
        return sample

    def step(self, eps, timestep, sample):
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        a = self.alphas_cumprod[int(timestep) - 1]
        b = self.alphas_cumprod[int(timestep) - 1 + self.ratio]
        x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        return DDIMSchedulerOutput(prev_sample=b.sqrt() * x0 + (1 - b).sqrt() * eps)


@pytest.fixture(scope="module")
def ours(sd1_components):
    p = Pix2PixZeroConPipeline(**sd1_components)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def reference(sd1_components, ours):
    """diffusers' pix2pix-zero on a copy of the weights (it installs its own attention processors), per grid."""
    from diffusers import DDIMInverseScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import \
        StableDiffusionPix2PixZeroPipeline

    c = {k: copy.deepcopy(v) for k, v in sd1_components.items()}
    pipe = StableDiffusionPix2PixZeroPipeline(**c, safety_checker=None, feature_extractor=None, caption_generator=None,
                                              caption_processor=None, requires_safety_checker=False,
                                              inverse_scheduler=DDIMInverseScheduler.from_config(c["scheduler"].config))
    pipe.set_progress_bar_config(disable=True)
    cond = ours.encode_prompt(CAPTION).embeds
    x0 = ours.encode_images(ours.preprocess(IMAGE, (32, 32)))  # what our pipeline encodes (32x32: no resampling)
    results = {}
    for grid in ("p2pzero", "symmetric"):
        pipe.inverse_scheduler = (_OfficialInverseGrid(copy.deepcopy(c["scheduler"])) if grid == "p2pzero"
                                  else DDIMInverseScheduler.from_config(c["scheduler"].config))
        x_T = pipe.invert(prompt_embeds=cond, image=x0, num_inference_steps=STEPS,
                          generator=torch.Generator().manual_seed(SEED), output_type="np").latents
        # real-image mode: the caption is the negative prompt; delta_c = mean(target) - mean(source) = DELTA
        latent = pipe(prompt_embeds=cond, negative_prompt_embeds=cond, source_embeds=torch.zeros_like(DELTA),
                      target_embeds=DELTA, latents=x_T, num_inference_steps=STEPS, guidance_scale=CFG,
                      cross_attention_guidance_amount=GUIDANCE_LR, output_type="latent").images
        with torch.no_grad():
            image = pipe.image_processor.postprocess(pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample,
                                                     output_type="np")
        results[grid] = (x_T, latent, image)
    return results


def _ours(pipe, monkeypatch, *, align_offsets=True, **overrides):
    """Our pix2pix-zero edit; with ``align_offsets`` the regulariser draws its roll offsets as diffusers does
    (``torch.randint(height // 2)`` from a generator seeded like the one diffusers gets), in our order."""
    if align_offsets:
        g = torch.Generator().manual_seed(SEED)
        monkeypatch.setattr(losses, "draw_shift", lambda side, generator=None: int(torch.randint(side // 2, (1,), generator=g)))
    args = dict(caption=CAPTION, direction=DELTA, num_inference_steps=STEPS, guidance_lr=GUIDANCE_LR, cfg_scale=CFG,
                lambda_cut=0.0, seed=0, output_type="np")
    args.update(overrides)
    out = pipe(IMAGE, **args)
    monkeypatch.undo()
    return out.inverted_latent, out.edited_latent, out.images


def _errors(a, b):
    return [float(np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)).max()) for x, y in zip(a, b)]


@pytest.mark.parametrize("grid", ["p2pzero", "symmetric"])
def test_pix2pix_zero_matches_diffusers(ours, reference, monkeypatch, grid):
    kw = {} if grid == "p2pzero" else dict(inversion_grid="symmetric")  # the official grid is the default
    err_inv, err_latent, err_image = _errors(_ours(ours, monkeypatch, **kw), reference[grid])
    print(f"{grid}: x_T {err_inv:.2e}, edited latent {err_latent:.2e}, image {err_image:.2e}")
    assert err_inv < TOL_INVERTED and err_latent < TOL_LATENT and err_image < TOL_IMAGE, (err_inv, err_latent, err_image)


@pytest.mark.parametrize("change", [
    dict(guidance_lr=GUIDANCE_LR * 1.1),  # guidance 10% stronger
    dict(lambda_xa=0.0),  # no cross-attention guidance
    dict(guidance_mode="paper"),  # guidance from the conditional branch of one latent
    dict(reg_lambda_ac=19.0),  # regulariser weight
    dict(align_offsets=False),  # roll offsets from our own generator instead of diffusers' draws
    dict(inversion_grid="symmetric"),  # the other grid
], ids=["lr", "no-xa", "paper-mode", "reg-weight", "offsets", "grid"])
def test_the_parity_check_fails_when_guidance_regulariser_or_grid_change(ours, reference, monkeypatch, change):
    """Negative controls: each change breaks the comparison above by far more than its tolerance."""
    change = dict(change)
    align = change.pop("align_offsets", True)
    err_inv, err_latent, err_image = _errors(_ours(ours, monkeypatch, align_offsets=align, **change), reference["p2pzero"])
    print(f"{change}: x_T {err_inv:.2e}, edited latent {err_latent:.2e}, image {err_image:.2e}")
    assert err_latent > 10 * TOL_LATENT and err_image > 10 * TOL_IMAGE, (err_inv, err_latent, err_image)


# --------------------------------------------------------------------------------------------- LEDITS++


K_LEDITS = 6


@pytest.fixture(scope="module")
def ledits(sd1_components, ours):
    from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion

    c = {k: copy.deepcopy(v) for k, v in sd1_components.items()}
    pipe = LEditsPPPipelineStableDiffusion(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    x0 = ours.encode_images(ours.preprocess(IMAGE, (32, 32)))
    pipe.encode_image = lambda image, **kw: (x0, None)  # the identical image latent
    # diffusers 0.42 indexes alphas_cumprod with a float tensor here, which torch >= 2.x refuses: cast the index only
    pipe.scheduler.add_noise = lambda x, noise, t: DDIMScheduler.add_noise(pipe.scheduler, x, noise, t.long())
    return pipe, x0


@pytest.mark.parametrize("prompt", ["", CAPTION])
def test_edit_friendly_inversion_matches_ledits_pp(ours, ledits, prompt):
    pipe, x0 = ledits
    pipe.invert(image=IMAGE, source_prompt=prompt, source_guidance_scale=3.5, num_inversion_steps=K_LEDITS, skip=0.0,
                generator=torch.Generator().manual_seed(7))
    reference_x_T, reference_noise = pipe.init_latents[0], pipe.zs[:, 0]
    source, empty = ours.encode_prompt(prompt), ours.encode_prompt("")
    # LEDITS++ runs the branches swapped (see the module docstring): without a prompt there is only eps(""), with one
    # it computes eps(P) + s (eps("") - eps(P)), which is our CFG with P as the negative and "" as the prompt
    eps = noise_predictor(ours.unet, empty) if not prompt else noise_predictor(ours.unet, empty, uncond=source, guidance_scale=3.5)
    inv = edit_friendly_invert(eps, x0, ours.ddim_scheduler, K_LEDITS, generator=torch.Generator().manual_seed(7),
                               zero_last_noise=False)
    assert torch.equal(inv.timesteps, pipe.inversion_steps)
    # same draws in the same order (one latent-shaped draw per step, least noisy first): x_T is bit-identical
    assert torch.equal(inv.latents[0], reference_x_T)
    scale = float(reference_noise.abs().max())  # the last maps are large on a random UNet (tiny sigma)
    # 1e-5 of the largest map: dividing by a tiny sigma amplifies fp32 rounding, which differs between CPUs (2.04e-6
    # measured on an AMD EPYC, under 2e-6 on the Intel machine that first ran it); a wrong draw differs by O(1)
    assert torch.allclose(inv.noise, reference_noise, atol=1e-5 * scale, rtol=0), float((inv.noise - reference_noise).abs().max())
    # negative controls: drawing all maps in one call in grid order (the old order) gives another x_T, and the
    # official zeroed last map differs from LEDITS++ there and only there
    a = alpha_bar(ours.ddim_scheduler, inv.timesteps[0])
    batched = torch.randn((K_LEDITS,) + tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(a.sqrt() * x0[0] + (1 - a).sqrt() * batched[0], reference_x_T, atol=1e-3)
    zeroed = edit_friendly_invert(eps, x0, ours.ddim_scheduler, K_LEDITS, generator=torch.Generator().manual_seed(7))
    assert torch.equal(zeroed.noise[:-1], inv.noise[:-1]) and not torch.allclose(zeroed.noise[-1], reference_noise[-1])
    if prompt:  # the correctly ordered CFG (ours, the official Cross-Image Attention's) is not what LEDITS++ computes
        right = noise_predictor(ours.unet, source, uncond=empty, guidance_scale=3.5)
        correct = edit_friendly_invert(right, x0, ours.ddim_scheduler, K_LEDITS, generator=torch.Generator().manual_seed(7),
                                       zero_last_noise=False)
        assert not torch.allclose(correct.noise, reference_noise, atol=1e-2 * scale)
