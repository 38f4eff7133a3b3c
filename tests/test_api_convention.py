"""One calling convention for all five pipelines (issue 20), checked on tiny models.

``from_pretrained(folder, torch_dtype=...)`` then ``.to(device)``; ``generator=``/``seed=``; ``output_type`` in
pil|np|pt|latent; ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs``; list inputs; an output
dataclass with ``.images``; attention control that leaves the user's processors alone.
"""

import copy
import dataclasses
import inspect
import json
import typing
import warnings

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from styleforge import (CrossImageAttentionPipeline, OSASISPipeline, PairCustomizationPipeline, Pix2PixZeroConPipeline,
                        RegionStylizer)
from styleforge.errors import InputError

ALL = ("cross_image", "pix2pix", "pair", "osasis", "region")
STEPPED = ("cross_image", "pix2pix", "pair", "osasis")
LATENT = ("cross_image", "pix2pix", "pair")
CLASSES = {"cross_image": CrossImageAttentionPipeline, "pix2pix": Pix2PixZeroConPipeline,
           "pair": PairCustomizationPipeline, "osasis": OSASISPipeline, "region": RegionStylizer}
CIA_FAST = dict(num_inference_steps=6, skip_steps=2, swap_range_full=(1, 4), swap_range_half=(1, 3), adain_range=(2, 4),
                structure_injection_period=2, structure_injection_limit=3)
P2P_DELTA = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0)) * 0.1


def _img(seed, size=32):
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------- tiny models


def _pair_style(unet):
    from styleforge.pair_customization import StyleAdapter
    from styleforge.pair_customization.adapters import UNetAdapters, orthogonal_downs

    probe = UNetAdapters(copy.deepcopy(unet))
    _, downs = orthogonal_downs([layer.in_features for layer in probe.layers], 4, 4)
    g = torch.Generator().manual_seed(0)
    tensors = {name: (downs[n], torch.randn(m, 4, generator=g) * 0.3) for name, (n, m) in probe.widths.items()}
    return StyleAdapter(tensors, {"family": "sd1", "style_word": "watercolor", "alpha": 4.0, "base_model": "tiny",
                                  "targets": ["to_q", "to_k", "to_v", "to_out.0"]})


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd1_folder):
    """A model folder per pipeline, as ``from_pretrained`` takes it."""
    from styleforge.osasis.tiny import tiny_models
    from styleforge.region.inference import save_model
    from styleforge.region.model import build_models
    from styleforge.region.train import get_preset

    root = tmp_path_factory.mktemp("convention")
    m = tiny_models()
    m["diffae"].save_pretrained(root / "diffae")
    run = root / "osasis_run"
    m["diffae"].save_pretrained(run / "model" / "unet_b")
    m["spn"].save_pretrained(run / "model" / "spn")
    _img(5).save(run / "style.png")
    (run / "osasis.json").write_text(json.dumps({"diffae": str(root / "diffae"), "spn": "time",
                                                 "spn_time_input": "grid_index", "style_image": "style.png"}))
    torch.manual_seed(0)
    nets = build_models(get_preset("test"))
    save_model(root / "region", nets["encoder"], nets["generator"], {"image_size": 32})
    return {"cross_image": tiny_sd1_folder, "pix2pix": tiny_sd1_folder, "pair": tiny_sd1_folder,
            "osasis": run, "region": root / "region"}


def _load(name, folders, **kw):
    pipe = CLASSES[name].from_pretrained(folders[name], **kw)
    pipe.set_progress_bar_config(disable=True)
    if name == "pair":
        pipe.load_style(_pair_style(pipe.unet), "a")
    return pipe


@pytest.fixture(scope="module")
def pipes(folders):
    return {name: _load(name, folders).to("cpu") for name in ALL}


def _call(name, pipe, image=None, **kw):
    """One small call of each method; ``image`` replaces the main input (a list makes a batch)."""
    if name == "cross_image":
        return pipe(_img(0) if image is None else image, _img(1), "animal", adain="full", **CIA_FAST, **kw)
    if name == "pix2pix":
        kw.setdefault("num_inference_steps", 2)
        return pipe(_img(0) if image is None else image, caption="a photo of a cat", direction=P2P_DELTA,
                    captioner=None, **kw)
    if name == "pair":
        kw.setdefault("num_inference_steps", 3)
        return pipe("a photo of a cat" if image is None else image, height=32, width=32, **kw)
    if name == "osasis":
        from styleforge.osasis.pipeline import StylizeSettings

        kw.setdefault("num_inference_steps", 3)
        return pipe(_img(0) if image is None else image, settings=StylizeSettings(encode_steps=3), **kw)
    return pipe(_img(0) if image is None else image, style=_img(1), **kw)


def _batch_inputs(name):
    return ["a photo of a cat", "a photo of a dog"] if name == "pair" else [_img(0), _img(3)]


# --------------------------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("name", ALL)
def test_every_pipeline_has_the_same_methods_and_keywords(name):
    cls = CLASSES[name]
    assert issubclass(cls, DiffusionPipeline)
    loading = inspect.signature(cls.from_pretrained).parameters
    assert {"torch_dtype", "variant"} <= set(loading)
    call = inspect.signature(cls.__call__).parameters
    expected = {"generator", "seed", "output_type", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
    assert expected <= set(call), expected - set(call)
    assert ("num_inference_steps" in call) == (name in STEPPED)
    assert isinstance(cls._callback_tensor_inputs, list) and bool(cls._callback_tensor_inputs) == (name in STEPPED)
    output = typing.get_type_hints(cls.__call__)["return"]
    assert dataclasses.is_dataclass(output) and dataclasses.fields(output)[0].name == "images"


# --------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ALL)
def test_from_pretrained_with_torch_dtype_then_to(name, folders):
    pipe = _load(name, folders, torch_dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert pipe.to("cpu") is pipe and pipe.device.type == "cpu"
    with pytest.warns(DeprecationWarning, match="to\\(device\\)"):
        old = CLASSES[name].from_pretrained(folders[name], device="cpu")
    assert old.device.type == "cpu" and old.dtype == torch.float32
    assert CLASSES[name].from_pretrained(folders[name], dtype="bf16").dtype == torch.bfloat16  # diffusers 0.42's name


def test_the_dtype_is_passed_to_diffusers_only_when_given_and_under_its_current_name(folders, monkeypatch):
    from styleforge.diffusion.convention import diffusers_dtype_keyword

    seen = []
    original = DiffusionPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(dict(kwargs))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(spy))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)  # diffusers 0.42 warns about torch_dtype= this way
        CrossImageAttentionPipeline.from_pretrained(folders["cross_image"])
        CrossImageAttentionPipeline.from_pretrained(folders["cross_image"], torch_dtype="fp16")
    assert not {"torch_dtype", "dtype"} & set(seen[0]) and seen[1][diffusers_dtype_keyword()] == torch.float16
    with pytest.raises(InputError, match="disagree"):
        CrossImageAttentionPipeline.from_pretrained(folders["cross_image"], torch_dtype="fp16", dtype="bf16")


def test_variant_loads_the_variant_files(folders, tmp_path):
    from diffusers import StableDiffusionPipeline

    from styleforge.errors import ModelNotFoundError
    from styleforge.region.inference import load_model
    from styleforge.testing import tiny_components

    sd = tmp_path / "sd"
    StableDiffusionPipeline(**tiny_components("sd1"), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(sd, variant="fp16")
    assert CrossImageAttentionPipeline.from_pretrained(sd, variant="fp16").unet is not None
    region = tmp_path / "region"
    encoder, generator, _ = load_model(folders["region"])
    encoder.save_pretrained(region / "encoder", variant="fp16")
    generator.save_pretrained(region / "generator", variant="fp16")
    with pytest.raises(ModelNotFoundError):
        RegionStylizer.from_pretrained(region)  # only variant files there
    loaded = RegionStylizer.from_pretrained(region, variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(loaded.encoder.state_dict().values(), encoder.state_dict().values()))
    with pytest.raises(InputError, match="variant"):
        OSASISPipeline.from_pretrained(folders["osasis"], variant="fp16")


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", ALL)
def test_output_types_agree_and_generator_equals_seed(name, pipes):
    pipe = pipes[name]
    pil = _call(name, pipe, seed=1, output_type="pil").images
    arr = _call(name, pipe, generator=torch.Generator().manual_seed(1), output_type="np").images
    pt = _call(name, pipe, seed=1, output_type="pt").images
    assert isinstance(pil, list) and all(isinstance(i, Image.Image) for i in pil)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (len(pil), pil[0].height, pil[0].width, 3)
    assert isinstance(pt, torch.Tensor) and pt.shape == (len(pil), 3, pil[0].height, pil[0].width)
    assert 0 <= arr.min() and arr.max() <= 1
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)  # same seed, same result
    assert np.abs(np.round(arr * 255) - np.asarray(pil[0])[None]).max() <= 1
    if name in LATENT:
        latents = _call(name, pipe, seed=1, output_type="latent").images
        assert isinstance(latents, torch.Tensor) and latents.shape == (1, 4, pil[0].height // 2, pil[0].width // 2)
    else:
        with pytest.raises(InputError, match="latent"):
            _call(name, pipe, output_type="latent")
    with pytest.raises(InputError, match="output_type"):
        _call(name, pipe, output_type="numpy")


@pytest.mark.parametrize("name", ["cross_image", "pair"])
def test_seeds_change_stochastic_methods(name, pipes):
    a = _call(name, pipes[name], seed=1, output_type="pt").images
    b = _call(name, pipes[name], seed=2, output_type="pt").images
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_list_inputs_are_batched_item_by_item(name, pipes):
    pipe = pipes[name]
    items = _batch_inputs(name)
    batch = _call(name, pipe, image=items, seed=0, output_type="pt")
    assert batch.images.shape[0] == 2
    for i, item in enumerate(items):
        alone = _call(name, pipe, image=item, seed=0, output_type="pt")
        torch.testing.assert_close(batch.images[i:i + 1], alone.images, atol=1e-5, rtol=0)
        for f in dataclasses.fields(alone):  # the per-image extras are joined like the images
            if f.metadata.get("per_image") and getattr(alone, f.name) is not None:
                joined, single = getattr(batch, f.name), getattr(alone, f.name)
                assert len(joined) == 2 and (torch.allclose(joined[i:i + 1], single, atol=1e-5)
                                             if isinstance(single, torch.Tensor) else joined[i:i + 1] == single)


# --------------------------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("name", STEPPED)
def test_callback_on_step_end_sees_and_replaces_the_requested_tensors(name, pipes):
    pipe = pipes[name]
    names = list(pipe._callback_tensor_inputs)
    seen = []

    def record(p, step, timestep, kwargs):
        assert p is pipe and set(kwargs) == set(names)
        assert all(isinstance(v, torch.Tensor) for v in kwargs.values())
        seen.append(step)
        return {}

    plain = _call(name, pipe, seed=0, output_type="pt", callback_on_step_end=record,
                  callback_on_step_end_tensor_inputs=names).images
    assert seen == list(range(len(seen))) and len(seen) >= 2
    torch.testing.assert_close(plain, _call(name, pipe, seed=0, output_type="pt").images)  # observing changes nothing

    last = seen[-1]
    key = names[0]

    def replace(p, step, timestep, kwargs):
        return {key: torch.full_like(kwargs[key], 0.25)} if step == last else {}

    kind = "latent" if name in LATENT else "pt"
    out = _call(name, pipe, seed=0, output_type=kind, callback_on_step_end=replace,
                callback_on_step_end_tensor_inputs=[key]).images
    expected = 0.25 if kind == "latent" else (0.25 + 1) / 2  # a pixel-space sample in [-1, 1] comes out in [0, 1]
    torch.testing.assert_close(out, torch.full_like(out, expected))
    with pytest.raises(InputError, match="not available"):
        _call(name, pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_region_refuses_a_step_callback(pipes):
    with pytest.raises(InputError, match="no denoising steps"):
        _call("region", pipes["region"], callback_on_step_end=lambda *a: {})


@pytest.mark.parametrize("name", ["pix2pix", "pair"])
def test_the_old_callback_still_works_with_a_deprecation_warning(name, pipes):
    calls = []
    with pytest.warns(DeprecationWarning, match="callback_on_step_end"):
        _call(name, pipes[name], seed=0, output_type="latent", callback=lambda step, t, *rest: calls.append(step))
    assert calls == list(range(len(calls))) and len(calls) >= 2


# --------------------------------------------------------------------------------------------- attention control


@pytest.mark.parametrize("name", ["cross_image", "pix2pix"])
def test_attention_control_leaves_the_users_processors_alone(name, pipes):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    from styleforge.diffusion.attention import attention_layers

    class Counting(AttnProcessor2_0):
        def __init__(self):
            super().__init__()
            self.calls = self.while_controlled = 0

        def __call__(self, attn, *args, **kwargs):
            self.calls += 1
            self.while_controlled += attn.processor is not self  # called by the method's processor, as its fallback
            return super().__call__(attn, *args, **kwargs)

    pipe = pipes[name]
    pipe.enable_attention_slicing(1)
    # Cross-Image Attention controls decoder self-attention (encoder self-attention is free), pix2pix-zeroCon its
    # PatchNCE layers, encoder self-attention by default (decoder self-attention is free)
    free_place, controlled_place = ("down", "up") if name == "cross_image" else ("up", "down")
    self_layers = [layer for layer in attention_layers(pipe.unet) if layer.kind == "self"]
    free = next(layer.name for layer in self_layers if layer.place == free_place)
    controlled = next(layer.name for layer in self_layers if layer.place == controlled_place)
    counters = {free: Counting(), controlled: Counting()}
    for layer, processor in counters.items():
        pipe.unet.get_submodule(layer).set_processor(processor)
    before = dict(pipe.unet.attn_processors)
    try:
        _call(name, pipe, seed=0, output_type="latent")
        after = pipe.unet.attn_processors
        assert all(after[k] is v for k, v in before.items())  # everything is as the user left it
        assert sum(isinstance(p, SlicedAttnProcessor) for p in after.values()) == len(after) - 2
        # the free layer ran the user's processor throughout and was never taken; the controlled one ran it whenever
        # the method left it alone (CIA: outside its swap window and in the plain guidance pass; pix2pix-zeroCon:
        # in the noise passes)
        assert counters[free].calls > counters[controlled].calls and counters[free].while_controlled == 0
        assert counters[controlled].while_controlled > 0
    finally:
        pipe.unet.set_attn_processor(AttnProcessor2_0())


# --------------------------------------------------------------------------------------------- CLI metadata


def test_region_metadata_keeps_input_paths_as_given(folders, tmp_path, monkeypatch):
    from styleforge.cli.main import main
    from styleforge.io import read_metadata

    monkeypatch.chdir(tmp_path)
    _img(0, 40).save("content.png")
    _img(1).save("look.png")
    assert main(["region", "apply", "--model", str(folders["region"]), "--content", "content.png", "--style", "look.png",
                 "-o", "out.png", "--device", "cpu", "--strip", "false"]) == 0
    meta = read_metadata("out.png")
    assert meta["content"] == "content.png" and meta["style"] == ["look.png"]
