"""pix2pix-zeroCon pipeline on tiny models: inversion, reference and guided passes, outputs (spec §7 B, D, E, F)."""

import copy
import time

import numpy as np
import pytest
import torch

from styleforge.diffusion.attention import AttentionController, attention_layers
from styleforge.diffusion.inversion import ddim_invert
from styleforge.diffusion.prompts import Conditioning
from styleforge.diffusion.sampling import count_unet_calls, ddim_sample, noise_predictor, timesteps_for
from styleforge.errors import InputError
from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline
from styleforge.pix2pix_zerocon.guidance import GuidanceProbe, ReferenceStep
from styleforge.pix2pix_zerocon.losses import PatchNCESettings, RegularizerSettings

CAPTION = "a photo of a cat"
IMAGE = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
DELTA = 0.5 * torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
ZERO = torch.zeros(1, 77, 32)
NO_REG = dict(reg_steps=0)


@pytest.fixture(scope="module")
def pipe(sd1_components):
    p = Pix2PixZeroConPipeline(**sd1_components)
    p.set_progress_bar_config(disable=True)
    return p


def _constant_eps_pipe(sd1_components, value: float):
    """A UNet whose prediction ignores its input: conv_out weights zero, bias ``value``."""
    c = dict(sd1_components)
    c["unet"] = copy.deepcopy(sd1_components["unet"])
    with torch.no_grad():
        c["unet"].conv_out.weight.zero_()
        c["unet"].conv_out.bias.fill_(value)
    p = Pix2PixZeroConPipeline(**c)
    p.set_progress_bar_config(disable=True)
    return p


def edit(pipe, **kw):
    args = dict(caption=CAPTION, direction=DELTA, num_inference_steps=3, seed=0, output_type="latent")
    args.update(kw)
    return pipe(IMAGE, **args)


def _x0(pipe):
    return pipe.encode_images(pipe.preprocess(IMAGE, (32, 32)))


# --------------------------------------------------------------------------------------------- B. inversion


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_inversion_then_sampling_is_identity_for_an_input_ignoring_unet(sd1_components, steps):
    p = _constant_eps_pipe(sd1_components, 0.3)
    out = edit(p, num_inference_steps=steps, direction=ZERO, guidance_lr=0.0, inversion_grid="symmetric", **NO_REG)
    assert torch.allclose(out.reconstruction, _x0(p), atol=1e-5)
    assert torch.allclose(out.images, _x0(p), atol=1e-5)


def test_zero_noise_inversion_closed_form_and_regulariser_fixed_point(sd1_components):
    p = _constant_eps_pipe(sd1_components, 0.0)
    x0 = _x0(p)
    cond = p.encode_prompt(CAPTION)
    x_T = p.invert(x0, cond, 10, grid="symmetric", regularizer=RegularizerSettings(), generator=torch.Generator().manual_seed(0))
    a = p.scheduler.alphas_cumprod
    t_last = int(timesteps_for(p.scheduler, 10)[0])
    assert torch.allclose(x_T, (a[t_last] / a[0]).sqrt() * x0, atol=1e-5)  # eps = 0 stays 0 under the regulariser


def _timesteps_seen(pipe):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    return seen, handle


def test_inversion_grids(pipe):
    x0, cond = _x0(pipe), pipe.encode_prompt(CAPTION)
    seen, handle = _timesteps_seen(pipe)
    try:
        pipe.invert(x0, cond, 10, grid="symmetric", regularizer=RegularizerSettings(steps=0))
        symmetric = list(seen)
        seen.clear()
        pipe.invert(x0, cond, 10, regularizer=RegularizerSettings(steps=0))  # the default: the official grid
    finally:
        handle.remove()
    sampler = timesteps_for(pipe.scheduler, 10).tolist()
    assert symmetric == sampler[::-1]  # the sampler visits exactly the inversion's timesteps, reversed
    assert seen == [101, 201, 301, 401, 501, 601, 701, 801]  # the official grid: N - 2 calls, t = k+1 .. (N-2)k+1


def test_inversion_is_deterministic_and_regulariser_off_is_plain_ddim(pipe):
    x0, cond = _x0(pipe), pipe.encode_prompt(CAPTION)
    runs = [pipe.invert(x0, cond, 4, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = pipe.invert(x0, cond, 4, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)  # the regulariser's roll offsets are seeded draws
    plain = ddim_invert(noise_predictor(pipe.unet, cond), x0, pipe.scheduler, 4).latents[:1]
    for off in (RegularizerSettings(steps=0), RegularizerSettings(lambda_ac=0, lambda_kl=0)):
        assert torch.equal(pipe.invert(x0, cond, 4, grid="symmetric", regularizer=off), plain)
    sampled = [edit(pipe, vae_sample=True, seed=3, guidance_lr=0.0).inverted_latent for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])


def test_images_are_resized_with_lanczos_as_the_official_code(pipe):
    """With fewer than 3 steps the official grid inverts nothing, so x_T is the encoded (resized) image itself."""
    from PIL import Image

    from styleforge.io import load_image, pil_to_tensor

    big = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match="inverts nothing"):
        out = pipe(big, caption=CAPTION, direction=DELTA, num_inference_steps=2, guidance_lr=0.0, seed=0,
                   output_type="latent")
    pil = load_image(big)
    encode = lambda f: pipe.encode_images(pil_to_tensor(pil.resize((32, 32), f)))  # noqa: E731
    assert torch.equal(out.inverted_latent, encode(Image.LANCZOS))
    assert not torch.allclose(out.inverted_latent, encode(Image.BICUBIC), atol=1e-4)


def test_reference_pass_with_caption_as_negative_equals_no_cfg(pipe):
    with_cfg = edit(pipe, cfg_scale=5.0, guidance_lr=0.0, **NO_REG)
    without = edit(pipe, cfg_scale=1.0, guidance_lr=0.0, **NO_REG)
    assert torch.allclose(with_cfg.reconstruction, without.reconstruction, atol=1e-5)


# --------------------------------------------------------------------------------------------- D. capture and L_c


def test_capture_keeps_the_forward_and_maps_are_distributions(pipe):
    unet = pipe.unet
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    emb = pipe.encode_prompt([CAPTION, "a dog"]).embeds
    with torch.no_grad():
        stock = unet(x, 501, encoder_hidden_states=emb).sample
        ctl = AttentionController(unet)
        probe = GuidanceProbe(ctl, record_maps=True, cut_layers="down_attn1", nce=PatchNCESettings(), latent_hw=(16, 16),
                              generator=torch.Generator().manual_seed(0))
        step = ReferenceStep()
        with ctl:
            probe.record(step)
            captured = unet(x, 501, encoder_hidden_states=emb).sample
        probe.close()
    assert torch.allclose(captured, stock, atol=1e-6)
    cross = [l for l in attention_layers(unet) if l.kind == "cross"]
    assert sorted(step.maps) == sorted(l.name for l in cross) and len(cross) >= 2
    heads = unet.config.attention_head_dim
    for layer in cross:
        m = step.maps[layer.name]
        side = 16 // layer.factor
        assert m.shape[0] == 2 and m.shape[2:] == (side * side, 77) and not m.requires_grad
        assert (m >= 0).all() and torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)
    assert heads  # the map's head axis is the layer's own
    # sampled patches: S = min(256, positions) per layer and patch size
    assert {k[1] for k in step.patches} == {1, 2}
    for (name, size), (ids, rows) in step.patches.items():
        assert rows.shape[:2] == (2, len(ids)) and len(ids) == min(256, len(set(ids.tolist())))


@pytest.mark.parametrize("mode", ["p2pzero_code", "paper"])
@pytest.mark.parametrize("lr", [0.1, 10.0])
def test_no_op_edit_gives_the_reconstruction(pipe, mode, lr):
    out = edit(pipe, direction=ZERO, lambda_cut=0.0, guidance_lr=lr, guidance_mode=mode, return_log=True)
    assert torch.allclose(out.images, out.reconstruction, atol=1e-5)
    if mode == "p2pzero_code":  # the guided batch is the reference batch: identical maps, exactly zero gradient
        assert out.log[0]["loss_xa"] == 0.0 and out.log[0]["grad_norm"] == 0.0
    else:  # a batch of one against a batch of two: the kernels may round differently
        assert out.log[0]["loss_xa"] < 1e-10


def test_without_guidance_the_edit_is_plain_ddim_with_the_edited_prompt(pipe):
    base = edit(pipe, guidance_lr=0.0)
    c = pipe.encode_prompt(CAPTION)
    eps = noise_predictor(pipe.unet, Conditioning(c.embeds + DELTA), uncond=c, guidance_scale=5.0)
    expected = ddim_sample(eps, base.inverted_latent, pipe.scheduler, timesteps_for(pipe.scheduler, 3), 3)
    assert torch.allclose(base.images, expected, atol=1e-5)
    assert torch.equal(edit(pipe, lambda_xa=0.0, lambda_cut=0.0).images, base.images)
    # a single-sentence prompt edit is DDIM word swap: c + E(P_hat) - E(P) = E(P_hat)
    swap = pipe(IMAGE, source_prompt=CAPTION, target_prompt="a photo of a dog", guidance_lr=0.0,
                num_inference_steps=3, seed=0, output_type="latent")
    eps = noise_predictor(pipe.unet, pipe.encode_prompt("a photo of a dog"), uncond=c, guidance_scale=5.0)
    expected = ddim_sample(eps, swap.inverted_latent, pipe.scheduler, timesteps_for(pipe.scheduler, 3), 3)
    # c + (E(P_hat) - E(P)) equals E(P_hat) to ~1e-8; CFG 5 on a random UNet amplifies that to ~1e-5
    assert swap.caption == CAPTION and torch.allclose(swap.images, expected, atol=1e-4)


def test_no_gradient_work_when_the_weights_are_zero(pipe):
    n = 3
    unguided = (n - 2) + 2 * n  # inversion N - 2 (the official grid) + reference N + edit N
    for kw, calls in ((dict(guidance_lr=0.0), unguided), (dict(lambda_xa=0.0, lambda_cut=0.0), unguided),
                      ({}, unguided + n)):
        with count_unet_calls(pipe.unet) as counts:
            out = edit(pipe, num_inference_steps=n, return_log=True, **kw)
        assert counts["calls"] == calls, kw  # (+ N guided forwards)
        assert all(e["guided"] == (calls > unguided) for e in out.log)


def test_reference_is_independent_of_the_edit(pipe):
    runs = [edit(pipe, direction=d, guidance_lr=lr, lambda_cut=w)
            for d, lr, w in ((DELTA, 0.1, 1.0), (ZERO, 0.5, 0.0), (-DELTA, 0.3, 3.0))]
    for r in runs[1:]:
        assert torch.equal(r.reconstruction, runs[0].reconstruction)
        assert torch.equal(r.inverted_latent, runs[0].inverted_latent)
    # unguided, cross-attention runs fused instead of explicit: equal up to rounding
    assert torch.allclose(edit(pipe, guidance_lr=0.0).reconstruction, runs[0].reconstruction, atol=1e-5)


def test_one_guidance_step_descends(pipe):
    unet = pipe.unet
    g = torch.Generator().manual_seed(4)
    x_ref, x = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    c = pipe.encode_prompt(CAPTION).embeds
    c_hat = c + DELTA
    ctl = AttentionController(unet)
    probe = GuidanceProbe(ctl, record_maps=True, cut_layers="down_attn1", nce=PatchNCESettings(64), latent_hw=(16, 16))

    def loss(latent):
        probe.generator = torch.Generator().manual_seed(0)  # the same patches at both points
        step = ReferenceStep()
        with torch.no_grad():
            probe.record(step)
            unet(x_ref, 501, encoder_hidden_states=c)
        probe.compare(step, [0])
        unet(latent, 501, encoder_hidden_states=c_hat)
        probe.off()
        assert len(step) == 0  # every reference entry was consumed
        return probe.loss_xa + probe.loss_cut

    with ctl:
        x_var = x.clone().requires_grad_(True)
        value = loss(x_var)
        (grad,) = torch.autograd.grad(value, x_var)
        with torch.no_grad():
            stepped = loss(x - 1e-3 * grad / grad.norm())
    probe.close()
    assert grad.norm() > 0 and stepped < value.detach()


def test_only_the_latent_gets_gradients(pipe):
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    during = []
    edit(pipe, callback=lambda i, t, info: during.append(any(p.requires_grad for p in pipe.unet.parameters())))
    assert during == [False] * 3  # frozen while guiding, so autograd keeps nothing for weight gradients
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_official_mode_steps_the_negative_prompt_copy(pipe):
    seen = []
    edit(pipe, callback=lambda i, t, info: seen.append(info))
    for info in seen:
        copies = info["guided_copies"]
        assert copies.shape[0] == 2 and torch.equal(info["stepped_from"], copies[:1])
        assert not torch.equal(copies[0], copies[1])  # each copy got its own branch's gradient
    paper = []
    edit(pipe, guidance_mode="paper", callback=lambda i, t, info: paper.append(info))
    assert all(info["guided_copies"].shape[0] == 1 for info in paper)
    literal = edit(pipe, guidance_mode="paper", update_latent_before_step=False).images
    assert not torch.allclose(literal, edit(pipe, guidance_mode="paper").images)


def _official_pix2pix_zero(unet, scheduler, x_T, c, c_edit, steps, lr, cfg):
    """An independent transcription of pix2pix-zero's edit loop (edit_pipeline.py): explicit attention maps of
    shape (B*heads, N, 77), torch SGD on the duplicated latent, diffusers' DDIM step on the first chunk."""
    store = {}

    def hook(call):
        probs = (call.query.float() @ call.key.float().transpose(-1, -2) * call.scale).softmax(-1)
        call.output = probs.to(call.value.dtype) @ call.value
        store[call.layer.name] = probs.flatten(0, 1)

    hook.selector = lambda layer: layer.kind == "cross"
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    refs, x = {}, x_T
    with AttentionController(unet) as ctl:
        ctl.add(hook)
        for t in scheduler.timesteps:
            with torch.no_grad():
                e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c, c])).sample.chunk(2)
            refs[int(t)] = {k: v.detach() for k, v in store.items()}
            x = scheduler.step(e_u + cfg * (e_c - e_u), t, x).prev_sample
        x = x_T
        for t in scheduler.timesteps:
            x_in = torch.cat([x, x]).detach().clone().requires_grad_(True)
            opt = torch.optim.SGD([x_in], lr=lr)
            with torch.enable_grad():
                unet(x_in, t, encoder_hidden_states=torch.cat([c, c_edit]))
                loss = sum(((store[k] - refs[int(t)][k]) ** 2).sum((1, 2)).mean(0) for k in refs[int(t)])
                loss.backward()
            opt.step()
            with torch.no_grad():
                e_u, e_c = unet(x_in.detach(), t, encoder_hidden_states=torch.cat([c, c_edit])).sample.chunk(2)
            x = scheduler.step(e_u + cfg * (e_c - e_u), t, x_in.detach().chunk(2)[0]).prev_sample
    return x


def test_contrastive_weight_zero_is_pix2pix_zero(pipe):
    ours = edit(pipe, lambda_cut=0.0, guidance_lr=0.5)
    c = pipe.encode_prompt(CAPTION).embeds
    frozen = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        official = _official_pix2pix_zero(pipe.unet, pipe.scheduler, ours.inverted_latent, c, c + DELTA, 3, 0.5, 5.0)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    assert torch.allclose(ours.images, official, atol=1e-5)
    assert not torch.allclose(ours.images, edit(pipe, guidance_lr=0.0).images, atol=1e-4)  # the guidance did act
    # with lambda_e = 0 the PatchNCE settings are never used
    other = edit(pipe, lambda_cut=0.0, guidance_lr=0.5, cut_layers="up_attn1", cut_num_patches=7, cut_tau=1.0)
    assert torch.equal(other.images, ours.images)


def test_direction_moves_only_the_conditional_branch(pipe):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
                                                 with_kwargs=True)
    try:
        rows = {}
        for w in (1.0, 2.0):
            seen.clear()
            edit(pipe, num_inference_steps=1, guidance_lr=0.0, edit_multiplier=w, **NO_REG)
            rows[w] = seen[-1]  # the edit pass: [c_neg; c + w delta]
    finally:
        handle.remove()
    c = pipe.encode_prompt(CAPTION).embeds
    for w, emb in rows.items():
        assert emb.shape[0] == 2 and torch.equal(emb[:1], c)  # the negative (the caption) is never edited
    assert torch.allclose(rows[2.0][1:] - c, 2 * (rows[1.0][1:] - c), atol=1e-6)
    assert torch.allclose(rows[1.0][1:] - c, DELTA, atol=1e-6)


def test_only_sd1_models_are_accepted(sdxl_components):
    from styleforge.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="SD1"):
        Pix2PixZeroConPipeline(**sdxl_components)


# --------------------------------------------------------------------------------------------- E. PatchNCE in the loop


def test_stored_and_interleaved_references_agree_and_are_released(pipe):
    runs = {mode: edit(pipe, reference_mode=mode, return_log=True) for mode in ("interleaved", "stored")}
    offloaded = edit(pipe, reference_mode="stored", offload_reference=True)
    assert torch.equal(runs["interleaved"].images, runs["stored"].images)
    assert torch.equal(edit(pipe).images, runs["stored"].images)  # asking for the log changes nothing
    assert torch.equal(offloaded.images, runs["stored"].images)
    assert [e["reference_steps_held"] for e in runs["interleaved"].log] == [0, 0, 0]
    assert [e["reference_steps_held"] for e in runs["stored"].log] == [2, 1, 0]


def test_contrastive_loss_alone_is_not_a_no_op(pipe):
    out = edit(pipe, direction=ZERO, lambda_xa=0.0, lambda_cut=1.0, guidance_lr=1.0, return_log=True)
    assert torch.isfinite(out.images).all()
    assert not torch.allclose(out.images, out.reconstruction, atol=1e-5)
    assert out.log[0]["loss_xa"] is None and out.log[0]["grad_norm"] > 0


@pytest.mark.parametrize("layers", ["up_attn1", "all_attn1", "down_resnet"])
def test_every_feature_layer_set_guides(pipe, layers):
    out = edit(pipe, cut_layers=layers, lambda_xa=0.0, return_log=True, num_inference_steps=2)
    assert all(np.isfinite(e["loss_cut"]) and e["loss_cut"] > 0 and e["grad_norm"] > 0 for e in out.log)


# --------------------------------------------------------------------------------------------- F. end to end


def test_outputs_and_size_policy(pipe):
    out = edit(pipe, output_type="np", return_log=True)
    assert out.images.shape == (1, 32, 32, 3) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.reconstruction.shape == (1, 32, 32, 3)
    assert out.inverted_latent.shape == (1, 4, 16, 16) and out.edit_direction.delta.shape == (1, 77, 32)
    assert out.caption == CAPTION and len(out.log) == 3
    assert all(np.isfinite(e[k]) for e in out.log for k in ("loss_xa", "loss_cut", "grad_norm", "grad_norm_xa", "grad_norm_cut"))
    wide = pipe(torch.rand(3, 30, 40), caption=CAPTION, direction=DELTA, num_inference_steps=1, seed=0)
    assert wide.images[0].size == (32, 24)  # long side at the model's resolution, sides multiples of 8 here
    with pytest.raises(InputError, match="multiples"):
        edit(pipe, size=30)
    with pytest.raises(InputError, match="inverted latent"):
        edit(pipe, inverted_latent=torch.zeros(1, 4, 8, 8))
    for bad in (dict(guidance_mode="both"), dict(guidance_lr=-1.0), dict(guided_step_range=(0.5, 0.2)),
                dict(cut_layers="mid"), dict(num_inference_steps=0)):
        with pytest.raises(InputError):
            edit(pipe, **bad)


def test_a_given_inversion_is_reused(pipe):
    first = edit(pipe)
    again = edit(pipe, inverted_latent=first.inverted_latent)
    assert torch.equal(again.images, first.images)


def test_seeded_determinism(pipe):
    a, b = edit(pipe, seed=5), edit(pipe, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.inverted_latent, b.inverted_latent)
    assert not torch.equal(edit(pipe, seed=6).images, a.images)  # shifts and patch ids are seeded draws
    # with nothing random left, the seed does not matter
    quiet = dict(lambda_cut=0.0, reg_steps=0)
    assert torch.equal(edit(pipe, seed=1, **quiet).images, edit(pipe, seed=2, **quiet).images)


def test_guided_step_range(pipe):
    out = edit(pipe, num_inference_steps=4, guided_step_range=(0.0, 0.5), return_log=True)
    assert [e["guided"] for e in out.log] == [True, True, False, False]


def test_four_step_edit_is_fast(pipe):
    edit(pipe, num_inference_steps=1)
    start = time.perf_counter()
    edit(pipe, num_inference_steps=4)
    assert time.perf_counter() - start < 5.0


def test_a_model_shipped_with_another_scheduler_samples_on_the_ddim_grid(sd1_components):
    from diffusers import PNDMScheduler

    c = dict(sd1_components, scheduler=PNDMScheduler.from_config(sd1_components["scheduler"].config))
    other = Pix2PixZeroConPipeline(**c)
    other.set_progress_bar_config(disable=True)
    pipe = Pix2PixZeroConPipeline(**sd1_components)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(edit(other).images, edit(pipe).images)  # SD 1.5 ships PNDM; the method is DDIM throughout
