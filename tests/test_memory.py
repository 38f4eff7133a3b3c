"""Memory savers on every diffusion method: each saver gives the output of the plain run (tiny models, CPU).

Offload is installed with accelerate's hooks executing on the CPU (the code path a GPU run takes, minus the copies),
so these tests also prove the pipelines compute on the execution device rather than where the weights rest.
"""

import copy

import numpy as np
import pytest
import torch

from styleforge.diffusion.memory import MemorySavers, execution_device
from styleforge.errors import InputError

IMAGE = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
IMAGE_B = (np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)
OFFLOADS = ("model", "sequential")


def fresh(cls, sd1_components, **savers):
    """A pipeline on its own copy of the tiny weights (offload hooks must not leak into the shared fixture)."""
    pipe = cls(**copy.deepcopy(sd1_components))
    pipe.set_progress_bar_config(disable=True)
    if savers:
        pipe.enable_memory_savers(device="cpu", **savers)
    return pipe


# --------------------------------------------------------------------------------------------- settings


def test_low_memory_is_the_8gb_set_and_explicit_options_win():
    low = MemorySavers.low_memory()
    assert (low.offload, low.vae_slicing, low.vae_tiling, low.gradient_checkpointing) == ("model", True, True, True)
    assert low.attention_chunk_size == 1024
    assert MemorySavers.from_options(low_memory=True, offload="none", attention_chunk_size=64).offload == "none"
    assert MemorySavers.from_options(low_memory=True, offload="none", attention_chunk_size=64).attention_chunk_size == 64
    assert MemorySavers.from_options(low_memory=False) == MemorySavers()
    with pytest.raises(InputError):
        MemorySavers(offload="disk")
    with pytest.raises(InputError):
        MemorySavers(attention_chunk_size=0)


def test_cli_flag_family_parses_into_the_same_keywords():
    import argparse

    from styleforge.cli.common import add_memory_args, memory_options, memory_savers

    p = argparse.ArgumentParser()
    add_memory_args(p, attention_chunking=True, checkpointing="help")
    args = p.parse_args(["--low-memory", "--offload", "sequential", "--attention-chunk-size", "256"])
    assert memory_options(args) == {"low_memory": True, "offload": "sequential", "attention_chunk_size": 256}
    s = memory_savers(args)
    assert (s.offload, s.attention_chunk_size, s.vae_tiling, s.gradient_checkpointing) == ("sequential", 256, True, True)
    assert memory_savers(p.parse_args([])) == MemorySavers()
    q = argparse.ArgumentParser()
    add_memory_args(q, offload=None, vae=False, checkpointing="help")  # a training command: no offload, no VAE
    with pytest.raises(SystemExit):
        q.parse_args(["--offload", "model"])
    low = memory_savers(q.parse_args(["--low-memory"]))  # only the savers the command has
    assert (low.offload, low.vae_tiling, low.gradient_checkpointing) == ("none", False, True)


def test_pair_train_low_memory_slices_the_pair_encode_but_does_not_tile():
    from styleforge.cli.common import memory_savers
    from styleforge.options import command_parser

    args = command_parser("pair-train").parse_args(
        ["--content", "a.png", "--styled", "b.png", "--style", "ink", "-o", "out", "--low-memory"])
    low = memory_savers(args)
    assert (low.offload, low.vae_slicing, low.vae_tiling, low.gradient_checkpointing) == ("model", True, False, True)


# --------------------------------------------------------------------------------------------- Cross-Image Attention


def _cia(pipe, **kw):
    args = dict(num_inference_steps=4, skip_steps=1, swap_range_full=(0, 3), swap_range_half=(0, 3), adain="full",
                seed=3, output_type="pt")
    return pipe(IMAGE, IMAGE_B, "animal", **{**args, **kw}).images[0]


@pytest.mark.parametrize("offload", OFFLOADS)
def test_cross_image_attention_with_offload_hooks_equals_the_plain_run(sd1_components, offload):
    from styleforge.cross_image import CrossImageAttentionPipeline

    plain = _cia(fresh(CrossImageAttentionPipeline, sd1_components))
    pipe = fresh(CrossImageAttentionPipeline, sd1_components, offload=offload)
    assert pipe.unet.device.type in ("cpu", "meta") and pipe._execution_device.type == "cpu"
    assert torch.equal(_cia(pipe), plain)


def test_cross_image_attention_low_memory_defaults_chunk_and_slice_exactly(sd1_components):
    from styleforge.cross_image import CrossImageAttentionPipeline

    plain = _cia(fresh(CrossImageAttentionPipeline, sd1_components))
    pipe = fresh(CrossImageAttentionPipeline, sd1_components, low_memory=True, attention_chunk_size=5,
                 vae_tiling=False)
    assert pipe.memory_savers.attention_chunk_size == 5 and pipe.vae.use_slicing
    # chunked matmuls and one-image VAE batches round differently: fp32 rounding, 1.5e-5 measured
    assert torch.allclose(_cia(pipe), plain, atol=1e-4)


# --------------------------------------------------------------------------------------------- pix2pix-zeroCon

P2P = dict(caption="a photo of a cat", num_inference_steps=3, seed=0, output_type="latent", lambda_cut=1.0,
           cut_num_patches=8)


def _p2p(pipe, **kw):
    delta = 0.5 * torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return pipe(IMAGE, direction=delta, **{**P2P, **kw}).images


@pytest.mark.parametrize("savers", [dict(offload="model"), dict(gradient_checkpointing=True, vae_slicing=True)])
def test_pix2pix_zerocon_guided_edit_with_savers_equals_the_plain_run(sd1_components, savers):
    from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline

    plain = _p2p(fresh(Pix2PixZeroConPipeline, sd1_components))
    pipe = fresh(Pix2PixZeroConPipeline, sd1_components, **savers)
    # the guided steps backpropagate through every attention layer; checkpointing replays the compared forward
    assert torch.equal(_p2p(pipe, return_log=True), plain)
    assert not pipe.unet.is_gradient_checkpointing  # switched on for the guided passes only


def test_pix2pix_zerocon_checkpointed_replay_does_not_keep_its_loss_graphs(sd1_components, monkeypatch):
    """The backward replays each checkpointed block, loss ops included; what a replay computes must be dropped at
    once. Chained onto the probe's running loss, every replayed block's graph stayed alive to the end of the
    backward (405 instead of 298 MiB at 256 px)."""
    from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline, guidance

    probes, held_during_replay = [], []
    loss, compare = guidance.cross_attention_loss, guidance.GuidanceProbe.compare

    def spy(probs, ref):
        if torch._C._current_graph_task_id() != -1:  # inside a backward: a checkpointed replay
            held_during_replay.append(probes[-1].loss_xa is not None or probes[-1].loss_cut is not None)
        return loss(probs, ref)

    monkeypatch.setattr(guidance, "cross_attention_loss", spy)
    monkeypatch.setattr(guidance.GuidanceProbe, "compare", lambda self, *a: probes.append(self) or compare(self, *a))
    _p2p(fresh(Pix2PixZeroConPipeline, sd1_components, gradient_checkpointing=True))
    assert len(held_during_replay) > 1 and not any(held_during_replay)


# --------------------------------------------------------------------------------------------- PairCustomization


@pytest.fixture(scope="module")
def pair_style(sd1_components):
    from styleforge.pair_customization.style_io import StyleAdapter
    from styleforge.pair_customization.train import PairCustomizationTrainer

    pipe = fresh(__import__("styleforge.diffusion.pipeline", fromlist=["StyleforgePipeline"]).StyleforgePipeline,
                 sd1_components)
    trainer = PairCustomizationTrainer(pipe, style_word="ink", content_prompt="a photo of a sbu cat", resolution=32,
                                       content_rank=2, style_rank=2, iterations=2, style_start=0, lr=1e-2)
    trainer.train(IMAGE, IMAGE_B, None, progress=False)
    return trainer.export(), trainer


@pytest.mark.parametrize("offload", ["sequential"])  # the adapters must follow the execution device, not meta
def test_pair_customization_inference_with_offload_equals_the_plain_run(sd1_components, pair_style, offload):
    from styleforge.pair_customization.pipeline import PairCustomizationPipeline

    outs = []
    for savers in ({}, dict(offload=offload, vae_slicing=True)):
        pipe = fresh(PairCustomizationPipeline, sd1_components, **savers)
        pipe.load_style(copy.deepcopy(pair_style[0]), name="ink")
        outs.append(pipe("a photo of a dog", style_scale=2.0, num_inference_steps=3, style_start_step=1, height=32,
                         width=32, output_type="pt", return_base=True).images[0])
    assert torch.equal(outs[0], outs[1])


def test_pair_customization_training_with_model_offload_equals_the_plain_run(sd1_components):
    from styleforge.diffusion.pipeline import StyleforgePipeline
    from styleforge.pair_customization.train import CONTENT, STYLE, PairCustomizationTrainer

    results = []
    for savers in ({}, dict(offload="model", gradient_checkpointing=True)):
        pipe = fresh(StyleforgePipeline, sd1_components, **savers)
        trainer = PairCustomizationTrainer(pipe, style_word="ink", content_prompt="a photo of a sbu cat", resolution=32,
                                           content_rank=2, style_rank=2, iterations=2, style_start=0, lr=1e-2,
                                           gradient_checkpointing=pipe.memory_savers.gradient_checkpointing)
        trainer.train(IMAGE, IMAGE_B, None, progress=False)
        results.append({k: v for name in (CONTENT, STYLE) for k, v in trainer.adapters.tensors(name).items()})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][k], results[1][k])), k
    # VAE slicing encodes the pair one image at a time: the posterior within fp32 rounding (Adam then amplifies
    # that rounding: 7.4e-5 in the adapters after two steps on the tiny model, so the weights are not compared)
    posteriors = []
    for savers in ({}, dict(vae_slicing=True)):
        trainer = PairCustomizationTrainer(fresh(StyleforgePipeline, sd1_components, **savers), style_word="ink",
                                           resolution=32, content_rank=2, style_rank=2, iterations=2, style_start=0)
        trainer.set_pair(IMAGE, IMAGE_B)
        posteriors.append(torch.cat(trainer._encode_posterior(trainer._augment())))
    assert torch.allclose(posteriors[0], posteriors[1], atol=1e-5)


# --------------------------------------------------------------------------------------------- OSASIS


def _osasis():
    from styleforge.osasis.pipeline import OSASISPipeline
    from styleforge.osasis.tiny import tiny_models
    from styleforge.osasis.train import make_unet_b

    m = tiny_models()
    return OSASISPipeline(m["diffae"], make_unet_b(m["diffae"]), m["spn"])


@pytest.mark.parametrize("offload", OFFLOADS)
def test_osasis_stylize_with_offload_equals_the_plain_run(offload):
    from styleforge.osasis.pipeline import StylizeSettings

    plain = _osasis()
    size = plain.image_size
    photos = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = StylizeSettings(encode_steps=4, decode_steps=3, batch_size=2)
    expected = plain.stylize(photos, photos[:1], settings)
    pipe = _osasis()
    pipe.enable_memory_savers(offload=offload, device="cpu")
    assert execution_device(pipe.unet_b).type == "cpu"
    assert torch.equal(pipe.stylize(photos, photos[:1], settings), expected)


def test_osasis_manipulation_with_gradient_checkpointing_gives_the_same_codes():
    from styleforge.osasis.losses import CLIPEmbedder
    from styleforge.osasis.pipeline import EditSettings, StylizeSettings
    from styleforge.osasis.tiny import CharTokenizer, tiny_clip

    codes = []
    for checkpointing in (False, True):
        pipe = _osasis()
        pipe.clip = CLIPEmbedder(tiny_clip(), CharTokenizer())
        pipe.enable_memory_savers(gradient_checkpointing=checkpointing)
        size = pipe.image_size
        photos = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        codes.append(pipe.edit_codes(photos, "face", "smiling face", StylizeSettings(encode_steps=3, decode_steps=2),
                                     EditSettings(iterations=2, code_space="raw")))
    assert torch.allclose(codes[0], codes[1], atol=1e-6)
    assert not torch.equal(codes[0], _osasis().semantic_codes(photos))  # the edit moved the code


# --------------------------------------------------------------------------------------------- shared


def _one_call(name, sd1_components, pair_style):
    """A pipeline of each SD method with model offload, and one short call of it."""
    from styleforge.cross_image import CrossImageAttentionPipeline
    from styleforge.diffusion.pipeline import InversionPipeline
    from styleforge.pair_customization.pipeline import PairCustomizationPipeline
    from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline

    cls = {"cross_image": CrossImageAttentionPipeline, "pix2pix": Pix2PixZeroConPipeline,
           "pair": PairCustomizationPipeline, "inversion": InversionPipeline}[name]
    pipe = fresh(cls, sd1_components, offload="model")
    if name == "pair":
        pipe.load_style(copy.deepcopy(pair_style[0]), name="ink")
    calls = {"cross_image": lambda: _cia(pipe), "pix2pix": lambda: _p2p(pipe),
             "pair": lambda: pipe("a photo of a dog", num_inference_steps=2, height=32, width=32, output_type="pt"),
             "inversion": lambda: pipe(IMAGE, "a photo", num_inference_steps=2)}
    return pipe, calls[name]


@pytest.mark.parametrize("name", ["cross_image", "pix2pix", "pair", "inversion"])
def test_every_call_ends_with_the_offload_hooks_reset(sd1_components, pair_style, name):
    """diffusers' convention (``maybe_free_model_hooks``): after a call every model is back off the accelerator,
    so the next call does not start with the VAE still there; resetting installs a new hook per model."""
    pipe, call = _one_call(name, sd1_components, pair_style)
    before = list(pipe._all_hooks)  # held, so a new hook cannot reuse a freed one's id
    call()
    after = pipe._all_hooks
    assert len(after) == len(before) > 0 and not {id(h) for h in after} & {id(h) for h in before}


def _vae_decode_tiles(vae, latents):
    """The decoded image and the latent tiles its decoder ran on (once per tile when tiling acts)."""
    shapes = []
    hook = vae.decoder.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            return vae.decode(latents).sample, shapes
    finally:
        hook.remove()


def test_vae_tiling_acts_only_above_the_tile_and_uses_the_asked_tile_size(sd1_components):
    """Tiling is exact where it does not act (an image no larger than a tile: --low-memory at 512 px on SD 1.5 gives
    the plain result) and approximate where it does; --vae-tile-size sets the tile in pixels and latents."""
    from styleforge.diffusion.pipeline import StyleforgePipeline

    pipe = fresh(StyleforgePipeline, sd1_components)
    vae, factor = pipe.vae, pipe.vae_scale_factor
    latents = torch.randn(1, 4, 128 // factor, 128 // factor, generator=torch.Generator().manual_seed(0))
    plain, tiles = _vae_decode_tiles(vae, latents)
    assert tiles == [(64, 64)]

    pipe.enable_memory_savers(low_memory=True, offload="none")  # the default tile: the VAE's sample size
    assert vae.use_tiling and vae.tile_sample_min_size == vae.config.sample_size < 128
    small = latents[..., : vae.config.sample_size // factor, : vae.config.sample_size // factor]
    tiled_small, tiles = _vae_decode_tiles(vae, small)
    vae.disable_tiling()
    assert tiles == [small.shape[-2:]] and torch.equal(tiled_small, _vae_decode_tiles(vae, small)[0])  # bit-identical

    pipe.enable_memory_savers(vae_tiling=True, vae_tile_size=64)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (64, 64 // factor)
    tiled, tiles = _vae_decode_tiles(vae, latents)
    # 32-latent tiles with diffusers' quarter overlap: a stride of 24 over 64 latents, 3 x 3 tiles
    assert len(tiles) == 9 and max(tiles) == (64 // factor, 64 // factor)
    assert tiled.shape == plain.shape and not torch.equal(tiled, plain)  # blended seams: approximate


def test_half_precision_nan_guard_refuses_non_finite_images():
    from styleforge.diffusion.memory import check_finite

    with pytest.raises(InputError, match="fp16"):
        check_finite(torch.tensor([1.0, float("nan")]), "the images")


# --------------------------------------------------------------------------------------------- the GPU suite


def test_gpu_suite_runs_end_to_end_on_the_cpu_with_tiny_models(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
    spec = importlib.util.spec_from_file_location("gpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert suite.main(["--tiny", "--budget", "1e9", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = report["rows"]
    assert {r["method"] for r in rows} == {"cross-image", "pix2pix-zeroCon", "pair inference", "pair training",
                                           "osasis stylize", "osasis training"}
    assert not report["skipped"] and not [r for r in rows if "error" in r or "naive_error" in r]
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["model"]), {})[r["savers"]] = r
    for runs in by.values():  # savers change memory and time, never the work
        assert runs["none"]["unet_rows"] == runs["low-memory"]["unet_rows"] > 0
    cia = by[("cross-image", "sd1 32px")]["none"]
    assert cia["naive_unet_rows"] > cia["unet_rows"]  # the official schedule's extra plain-pass rows
    assert "| cross-image |" in (tmp_path / "gpu_suite.md").read_text()


def test_cli_memory_flags_load_with_offload_and_give_the_same_image(tmp_path, tiny_sd1_folder):
    from PIL import Image

    from styleforge.cli.main import main

    s = tmp_path / "s.png"
    Image.fromarray(IMAGE).save(s)
    common = ["appearance", "--structure", str(s), "--appearance", str(s), "--domain", "animal", "--model",
              str(tiny_sd1_folder), "--steps", "4", "--skip-steps", "1", "--adain", "full", "--no-cache",
              "--device", "cpu"]
    assert main(common + ["-o", str(tmp_path / "plain.png")]) == 0
    assert main(common + ["-o", str(tmp_path / "low.png"), "--low-memory", "--offload", "sequential",
                          "--attention-chunk-size", "7"]) == 0
    plain, low = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("plain", "low"))
    assert np.abs(plain - low).max() <= 1  # 8-bit rounding of the fp32 differences
