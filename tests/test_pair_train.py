"""PairCustomization training invariants (spec §8.3, §8.5) on tiny SD 1.x and SDXL models."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.errors import InputError, OutputError
from styleforge.pair_customization import (CONTENT, STYLE, PairCustomizationConfig, PairCustomizationPipeline,
                                           PairCustomizationTrainer, StyleAdapter)
from styleforge.pair_customization.style_io import STYLE_META, STYLE_WEIGHTS

SMALL = dict(content_rank=4, style_rank=4, resolution=32, lr=1e-3, iterations=6, style_start=3)


def fresh_pipe(components):
    """A pipeline on copies of the shared session components (training hooks and casts stay local)."""
    c = dict(components)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if c.get(key) is not None:
            c[key] = copy.deepcopy(c[key])
    pipe = PairCustomizationPipeline(**c)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pair_images(seed=0, content_size=(40, 32), style_size=(32, 32)):
    rng = np.random.RandomState(seed)
    content = Image.fromarray((rng.rand(content_size[1], content_size[0], 3) * 255).astype(np.uint8))
    styled = Image.fromarray((rng.rand(style_size[1], style_size[0], 3) * 255).astype(np.uint8))
    return content, styled


def ups(trainer, name):
    return [lora.up.detach().clone() for lora in trainer.adapters.loras(name)]


def downs(trainer, name):
    return [lora.down.detach().clone() for lora in trainer.adapters.loras(name)]


def test_training_phases_frozen_downs_orthogonal_updates(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **SMALL)
    trainer.set_pair(*pair_images())
    a_c0, a_s0 = downs(trainer, CONTENT), downs(trainer, STYLE)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(lora.down) in in_optimizer for n in (CONTENT, STYLE) for lora in trainer.adapters.loras(n))
    for k in range(6):
        before_c, before_s = ups(trainer, CONTENT), ups(trainer, STYLE)
        record = trainer.train_iteration()
        after_c, after_s = ups(trainer, CONTENT), ups(trainer, STYLE)
        assert any(not torch.equal(a, b) for a, b in zip(before_c, after_c))  # the content adapter moves every iteration
        if k < 3:  # phase 1: the style adapter stays exactly zero and its loss is never computed
            assert all(torch.count_nonzero(b) == 0 for b in after_s) and "style_loss" not in record
        else:
            assert any(not torch.equal(a, b) for a, b in zip(before_s, after_s)) and "style_loss" in record
    assert trainer.step_counts == {CONTENT: 6, STYLE: 3}
    for a, b in zip(a_c0 + a_s0, downs(trainer, CONTENT) + downs(trainer, STYLE)):
        assert torch.equal(a, b)  # bitwise: buffers, never optimised, never weight-decayed
    for lc, ls in zip(trainer.adapters.loras(CONTENT), trainer.adapters.loras(STYLE)):
        dw_c, dw_s = lc.delta_weight().detach().double(), ls.delta_weight().detach().double()
        assert dw_c.norm() > 0 and dw_s.norm() > 0
        assert (dw_c @ dw_s.T).norm() <= 1e-5 * dw_c.norm() * dw_s.norm()  # row spaces orthogonal (spec §8.3 #9)
        both = torch.cat([lc.down, ls.down]).double()
        assert (both @ both.T - torch.eye(8, dtype=torch.float64)).abs().max() < 1e-5


def test_stop_gradient_and_step_isolation(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **SMALL)
    trainer.set_pair(*pair_images())
    for _ in range(4):
        trainer.train_iteration()
    batch = trainer.draw_batch()
    loss = trainer.combined_loss(batch)
    loss.backward()
    assert all(lora.up.grad is None for lora in trainer.adapters.loras(CONTENT))  # sg[B_c A_c]
    assert any(lora.up.grad is not None and lora.up.grad.abs().sum() > 0 for lora in trainer.adapters.loras(STYLE))
    before_c = ups(trainer, CONTENT)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(before_c, ups(trainer, CONTENT)))
    # the content loss does not depend on the style adapter, and the content step leaves it bitwise unchanged
    with torch.no_grad():
        loss_c = trainer.content_loss(batch)
        for lora in trainer.adapters.loras(STYLE):
            lora.up.add_(1.0)
        assert torch.equal(trainer.content_loss(batch), loss_c)
    before_s = ups(trainer, STYLE)
    trainer.optimization_step(CONTENT, batch)
    assert all(torch.equal(a, b) for a, b in zip(before_s, ups(trainer, STYLE)))


def test_both_losses_share_t_and_noise(sd1_components):
    image = pair_images()[1]
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, style_start=0, vae_sample=False))
    trainer.set_pair(image, image)  # identical images: identical latents, so identical noisy inputs iff t, eps shared
    assert torch.equal(trainer.pixels[0], trainer.pixels[1])
    calls = []
    hook = trainer.pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].clone(), args[1].clone())), with_kwargs=True)
    trainer.train_iteration()
    hook.remove()
    (x_c, t_c), (x_s, t_s) = calls
    assert torch.equal(t_c, t_s) and torch.equal(x_c, x_s)


def test_joint_augmentation_and_sizes(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, center_crop=False, flip_probability=1.0))
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32)[None, :, None], (48, 1, 3)).astype(np.uint8)  # asymmetric
    trainer.set_pair(Image.fromarray(ramp), Image.fromarray(ramp).resize((32, 24)))
    assert trainer.pixels.shape[-2:] == (32, 43)  # short side to 32, content matched to the style image's size
    crop = trainer._augment()
    assert crop.shape[-2:] == (32, 32) and crop.min() >= -1 and crop.max() <= 1
    assert torch.allclose(crop[0], crop[1], atol=0.02)  # the same crop and flip for both images
    assert (crop[0, 0, 0, 0] > crop[0, 0, 0, -1])  # flipped: the ramp now decreases left to right


def test_resume_equals_an_uninterrupted_run(sd1_components, tmp_path):
    content, styled = pair_images(1, (48, 40), (40, 40))
    cfg = dict(SMALL, center_crop=False, flip_probability=0.5, checkpoint_every=2, keep_checkpoints=None)
    full = PairCustomizationTrainer(fresh_pipe(sd1_components), **cfg).train(content, styled, tmp_path / "a", progress=False)
    first = PairCustomizationTrainer(fresh_pipe(sd1_components), **cfg)
    first.train(content, styled, tmp_path / "b", progress=False, stop_at=3)
    assert not (tmp_path / "b" / STYLE_WEIGHTS).exists() and (tmp_path / "b" / "checkpoints" / "iter-000003").is_dir()
    torch.manual_seed(1234)  # a different global RNG state must not matter: the checkpoint restores it
    second = PairCustomizationTrainer(fresh_pipe(sd1_components), **cfg)
    resumed = second.train(content, styled, tmp_path / "b", progress=False, resume=True)
    assert resumed.history == full.history
    for mod, (a, b) in full.style.tensors.items():
        assert torch.equal(a, resumed.style.tensors[mod][0]) and torch.equal(b, resumed.style.tensors[mod][1])
    assert second.step_counts == {CONTENT: 6, STYLE: 3}
    with pytest.raises(OutputError, match="already exists"):  # a finished run is not silently replaced
        PairCustomizationTrainer(fresh_pipe(sd1_components), **cfg).train(content, styled, tmp_path / "b", progress=False)
    changed = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(cfg, lr=2e-3))
    with pytest.raises(InputError, match="lr=0.001"):
        changed.train(content, styled, tmp_path / "b", progress=False, resume=tmp_path / "b" / "checkpoints" / "iter-000004")


def test_config_validation_and_prompts():
    cfg = PairCustomizationConfig(style_word="digital art", content_prompt="A photo of a sbu dog")
    assert cfg.style_prompt == "A photo of a sbu dog in digital art style"
    assert (cfg.iterations, cfg.style_start, cfg.lr, cfg.weight_decay, cfg.content_rank, cfg.basis_seed) == (
        750, 250, 1e-5, 1e-4, 64, 123846)
    for bad in (dict(content_prompt="A photo of a dog"), dict(content_prompt="a photo of a sbuX dog"),
                dict(style_start=750), dict(style_word=" "), dict(mixed_precision="fp8")):
        with pytest.raises(InputError):
            PairCustomizationConfig(**{"style_word": "x", **bad}).validate()


def test_save_load_round_trip_and_family_check(sd1_components, sdxl_components, tmp_path):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, iterations=4, style_start=2, save_content=True))
    result = trainer.train(*pair_images(), tmp_path / "st", progress=False)
    meta = json.loads((tmp_path / "st" / STYLE_META).read_text())
    assert meta["family"] == "sd1" and meta["style_word"] == "digital illustration" and meta["basis_seed"] == 123846
    assert meta["rank"] == 4 and meta["targets"] == ["to_q", "to_k", "to_v", "to_out.0"] and meta["styleforge"]
    loaded = StyleAdapter.load(tmp_path / "st")
    assert set(loaded.tensors) == set(trainer.adapters.names)  # style tensors only (content in its own file)
    assert (tmp_path / "st" / "content" / STYLE_WEIGHTS).exists() and not list((tmp_path / "st").glob("content*.safetensors"))
    pipe = fresh_pipe(sd1_components)
    name = pipe.load_style(tmp_path / "st" / STYLE_WEIGHTS)  # the file alone carries its metadata too
    unet_in = (torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), 300)
    cond = trainer.cond_style.unet_kwargs()
    with torch.no_grad():
        with trainer.adapters.active({STYLE: 1.0}):
            want = trainer.pipe.unet(*unet_in, **cond).sample
        with pipe.adapters.active({name: 1.0}):
            got = pipe.unet(*unet_in, **cond).sample
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)  # spec §8.5 #33 (tensors themselves are bitwise equal below)
    for mod, (a, b) in result.style.tensors.items():
        assert torch.equal(loaded.tensors[mod][0], a) and torch.equal(loaded.tensors[mod][1], b)
    with pytest.raises(InputError, match="trained on a Stable Diffusion 1.x model .* cannot be used with the SDXL"):
        fresh_pipe(sdxl_components).load_style(tmp_path / "st")


def test_sdxl_training_time_ids_and_invariants(sdxl_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sdxl_components), **dict(SMALL, iterations=3, style_start=1))
    trainer.set_pair(*pair_images(0, (48, 40), (32, 32)))
    assert trainer.cond_content.time_ids.tolist() == [[40, 48, 0, 0, 32, 32]]  # (orig_h, orig_w, 0, 0, res, res)
    assert trainer.cond_style.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]]
    a0 = downs(trainer, STYLE)
    for _ in range(3):
        trainer.train_iteration()
    assert all(torch.equal(a, b) for a, b in zip(a0, downs(trainer, STYLE)))
    for lc, ls in zip(trainer.adapters.loras(CONTENT), trainer.adapters.loras(STYLE)):
        dw_c, dw_s = lc.delta_weight().detach().double(), ls.delta_weight().detach().double()
        assert (dw_c @ dw_s.T).norm() <= 1e-5 * dw_c.norm() * dw_s.norm() and dw_s.norm() > 0


def test_orthogonal_false_trains_the_down_projections(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, iterations=2, style_start=1, orthogonal=False))
    trainer.set_pair(*pair_images())
    a0 = downs(trainer, CONTENT)
    trainer.train_iteration()
    assert any(not torch.equal(a, b) for a, b in zip(a0, downs(trainer, CONTENT)))


def test_losses_decrease_on_a_fixed_evaluation_set(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, iterations=12, style_start=4, lr=3e-3))
    trainer.set_pair(*pair_images())
    batches = [trainer.draw_batch() for _ in range(6)]  # fixed (t, eps) evaluation draws

    def mean_loss(fn):
        with torch.no_grad():
            return sum(float(fn(b)) for b in batches) / len(batches)

    c0, s0 = mean_loss(trainer.content_loss), mean_loss(trainer.combined_loss)
    for _ in range(12):
        trainer.train_iteration()
    assert mean_loss(trainer.content_loss) < c0 and mean_loss(trainer.combined_loss) < s0


def test_mixed_precision_keeps_adapters_fp32(sd1_components):
    trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, iterations=2, style_start=1,
                                                                          mixed_precision="bf16"))
    assert trainer.pipe.unet.dtype == torch.bfloat16 and trainer.pipe.vae.dtype == torch.float32
    trainer.set_pair(*pair_images())
    a0 = downs(trainer, STYLE)
    records = [trainer.train_iteration() for _ in range(2)]
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.endswith("loss"))
    assert all(lora.up.dtype == torch.float32 for n in (CONTENT, STYLE) for lora in trainer.adapters.loras(n))
    assert all(torch.equal(a, b) for a, b in zip(a0, downs(trainer, STYLE)))
    assert any(torch.count_nonzero(b) for b in ups(trainer, STYLE))


def test_gradient_checkpointing_gives_the_same_updates(sd1_components):
    results = []
    for checkpointing in (False, True):
        trainer = PairCustomizationTrainer(fresh_pipe(sd1_components), **dict(SMALL, iterations=2, style_start=1,
                                                                              gradient_checkpointing=checkpointing))
        trainer.set_pair(*pair_images())
        trainer.train_iteration()
        trainer.train_iteration()
        results.append(ups(trainer, CONTENT) + ups(trainer, STYLE))
    assert all(torch.count_nonzero(b) for b in results[1])  # checkpointed blocks still train their adapters
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results))
