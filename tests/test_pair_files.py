"""PairCustomization files in and out: styleforge styles load in diffusers, official / diffusers LoRA files load here.

Tiny random SD 1.x / SDXL components. "Our path" is what ``pair apply`` runs for a style: the base UNet with the
style adapter active at strength 1 (``pipe.load_style`` + ``pipe.adapters.active``). diffusers' path is
``pipe.load_lora_weights`` on a stock diffusers pipeline built from the same components.
"""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from styleforge.cli.main import main
from styleforge.errors import InputError
from styleforge.pair_customization import PairCustomizationPipeline, PairCustomizationTrainer, StyleAdapter
from styleforge.pair_customization.adapters import STYLE, UNetAdapters, orthogonal_downs
from styleforge.pair_customization.pipeline import make_scheduler
from styleforge.pair_customization.style_io import STYLE_META, STYLE_WEIGHTS


def copied(components):
    c = dict(components)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if c.get(key) is not None:
            c[key] = copy.deepcopy(c[key])
    return c


def ours(components, style, name=None, **kw):
    pipe = PairCustomizationPipeline(**copied(components))
    pipe.set_progress_bar_config(disable=True)
    name = pipe.load_style(style, name, **kw)
    return pipe, name


def diffusers_pipe(components, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    c = copied(components)
    if family == "sd1":
        return StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionXLPipeline(**c)


def unet_call(pipe_unet, cond_kwargs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        return pipe_unet(x, 400, **cond_kwargs).sample


def style_output(pipe, name, cond_kwargs):
    with pipe.adapters.active({name: 1.0}):
        return unet_call(pipe.unet, cond_kwargs)


def random_tensors(unet, rank=4, seed=0, scale=0.3):
    probe = UNetAdapters(copy.deepcopy(unet))
    _, downs = orthogonal_downs([l.in_features for l in probe.layers], rank, rank)
    g = torch.Generator().manual_seed(seed)
    return {n: (downs[i], torch.randn(o, rank, generator=g) * scale) for n, (i, o) in probe.widths.items()}


def pair_images(tmp_path):
    rng = np.random.RandomState(0)
    paths = tmp_path / "photo.png", tmp_path / "painting.png"
    for p in paths:
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(p)
    return paths


def test_trained_style_loads_in_diffusers_at_its_alpha(sd1_components, tmp_path):
    """``pair train`` output -> diffusers ``load_lora_weights(folder)`` == the trained adapter == our apply path."""
    c = copied(sd1_components)
    trainer_pipe = PairCustomizationPipeline(**c)
    trainer = PairCustomizationTrainer(trainer_pipe, style_word="ink", content_rank=4, style_rank=4, style_alpha=12.0,
                                       resolution=32, lr=1e-2, iterations=3, style_start=1, checkpoint_every=0,
                                       save_content=True)
    trainer.train(*pair_images(tmp_path), tmp_path / "st", progress=False)
    cond = trainer_pipe.encode_prompt("a photo of a dog in ink style").unet_kwargs()
    with trainer.adapters.active({STYLE: 1.0}):
        trained = unet_call(trainer_pipe.unet, cond)  # the adapter as trained: alpha 12 on rank 4, scale 3
    base = unet_call(sd1_components["unet"], cond)
    assert (trained - base).abs().max() > 1e-3

    weights = load_file(str(tmp_path / "st" / STYLE_WEIGHTS))
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in weights)
    meta = json.loads((tmp_path / "st" / STYLE_META).read_text())
    assert meta["trained_alpha"] == 12.0 and meta["alpha"] == 4.0 and meta["format_version"] == 2

    dpipe = diffusers_pipe(sd1_components, "sd1")
    dpipe.load_lora_weights(str(tmp_path / "st"))  # the folder, as users call it (content/ is a subfolder)
    theirs = unet_call(dpipe.unet, cond)
    pipe, name = ours(sd1_components, tmp_path / "st")
    assert torch.allclose(theirs, trained, atol=1e-5, rtol=0) and torch.allclose(style_output(pipe, name, cond), trained,
                                                                                atol=1e-5, rtol=0)


def test_format_1_style_folders_still_load(sd1_components, tmp_path):
    tensors = random_tensors(sd1_components["unet"])
    meta = {"format": "styleforge.pair_customization.style", "format_version": 1, "family": "sd1", "style_word": "ink",
            "alpha": 8.0, "rank": 4, "targets": ["to_q", "to_k", "to_v", "to_out.0"], "base_model": "tiny"}
    old = tmp_path / "old"
    old.mkdir()
    save_file({f"{m}.lora_{ab}.weight": t for m, (a, b) in tensors.items() for ab, t in (("A", a.clone()), ("B", b.clone()))},
              str(old / STYLE_WEIGHTS))
    (old / STYLE_META).write_text(json.dumps(meta))
    new = StyleAdapter(tensors, dict(meta, format_version=2))
    new.save(tmp_path / "new")
    cond = {"encoder_hidden_states": torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))}
    a = style_output(*ours(sd1_components, old), cond)
    b = style_output(*ours(sd1_components, tmp_path / "new"), cond)
    assert torch.allclose(a, b, atol=1e-6, rtol=0) and (a - unet_call(sd1_components["unet"], cond)).abs().max() > 1e-3


def official_file(unet, path, seed=0):
    """The official script's export: ``unet.<module>.lora.down/up.weight``, no alphas, no style word."""
    tensors = random_tensors(unet, seed=seed)
    sd = {}
    for m, (a, b) in tensors.items():
        sd[f"unet.{m}.lora.down.weight"], sd[f"unet.{m}.lora.up.weight"] = a.clone(), b.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def official_sample(dpipe, pipe, prompt, suffix, steps, guidance, lora_scale, seed=0):
    """The official text-to-image loop (Eq. 10, Euler from the model config, style guidance from step 0, adapters
    toggled with diffusers' ``set_adapters`` as the official pipeline does) on diffusers' LoRA-loaded UNet."""
    sched = make_scheduler("euler", pipe.scheduler.config)
    sched.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt(prompt), pipe.encode_prompt("", negative=True)
    styled = pipe.encode_prompt(f"{prompt} {suffix}")
    both = type(cond).cat([uncond, cond])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            dpipe.set_adapters("style_weights", 0)
            e_u, e_c = dpipe.unet(torch.cat([inp, inp]), t, **both.unet_kwargs()).sample.chunk(2)
            dpipe.set_adapters("style_weights", 1)
            e_l = dpipe.unet(inp, t, **styled.unet_kwargs()).sample
            x = sched.step(e_u + guidance * (e_c - e_u) + lora_scale * (e_l - e_c), t, x).prev_sample
    return x


def test_official_file_gives_the_official_pipelines_result(sdxl_components, tmp_path):
    path = official_file(sdxl_components["unet"], tmp_path / "lora-dog-digital-art-style" / "pytorch_lora_weights.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(path.with_name("pytorch_lora_weights_kohya.safetensors")))
    loaded = StyleAdapter.load(path.parent)  # the output folder: the diffusers file is chosen over the kohya copy
    assert loaded.metadata["format"] == "diffusers-lora" and loaded.alpha is None and loaded.style_word == ""
    with pytest.raises(InputError, match="no style word"):
        ours(sdxl_components, path)
    pipe, name = ours(sdxl_components, path, style_word="digital art")
    dpipe = diffusers_pipe(sdxl_components, "sdxl")
    dpipe.load_lora_weights(str(path), adapter_name="style_weights")  # as the official evaluate script
    cond = pipe.encode_prompt("a photo of a cat in digital art style").unet_kwargs()
    dpipe.set_adapters("style_weights", 1)
    assert torch.allclose(unet_call(dpipe.unet, cond), style_output(pipe, name, cond), atol=1e-5, rtol=0)
    # the whole sampling run with our defaults (Euler, guidance from the first step) equals the official loop
    out = pipe("a photo of a cat", style_scale=3.0, guidance_scale=5.0, num_inference_steps=4, output_type="latent")
    ref = official_sample(dpipe, pipe, "a photo of a cat", "in digital art style", 4, 5.0, 3.0)
    assert torch.allclose(out.latents, ref, atol=1e-4, rtol=0)
    plain = pipe("a photo of a cat", style_scale=0.0, guidance_scale=5.0, num_inference_steps=4, output_type="latent")
    assert (plain.latents - ref).abs().max() > 1e-2  # the style changes the result


def test_kohya_and_text_encoder_files_are_refused(tmp_path):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(InputError, match="kohya/A1111"):
        StyleAdapter.load(tmp_path / "k.safetensors")
    save_file({"text_encoder.x.lora.down.weight": torch.zeros(4, 8), "text_encoder.x.lora.up.weight": torch.zeros(8, 4)},
              str(tmp_path / "te.safetensors"))
    with pytest.raises(InputError, match="text encoder"):
        StyleAdapter.load(tmp_path / "te.safetensors")


@pytest.mark.parametrize("folder", ["train", "to", "half"])
def test_style_named_like_a_module_attribute(sd1_components, tmp_path, folder):
    style = StyleAdapter(random_tensors(sd1_components["unet"]), {"family": "sd1", "style_word": "ink", "alpha": 4.0,
                                                                 "targets": ["to_k", "to_out.0", "to_q", "to_v"]})
    style.save(tmp_path / folder)
    pipe, name = ours(sd1_components, tmp_path / folder)
    assert name == folder and pipe.adapters.adapter_names == [folder]
    other = StyleAdapter(random_tensors(sd1_components["unet"], seed=1), dict(style.metadata, targets=["to_q", "to_k", "to_v", "to_out.0"]))
    assert pipe.load_style(other, "eval") == "eval"  # the same layers named in another order
    out = pipe("a dog", styles=[folder, "eval"], style_scale=1.0, num_inference_steps=2, output_type="latent")
    assert torch.isfinite(out.latents).all()
    pipe.unload_style(folder)
    assert pipe.adapters.adapter_names == ["eval"]


def test_pair_apply_cli_official_file_and_attribute_named_folder(tmp_path, tiny_sdxl_folder, tiny_sd1_folder, sdxl_components,
                                                               sd1_components):
    path = official_file(sdxl_components["unet"], tmp_path / "pytorch_lora_weights.safetensors")
    apply = ["pair", "apply", "--style", str(path), "--prompt", "a photo of a cat", "--steps", "2", "--model",
             str(tiny_sdxl_folder)]
    assert main(apply + ["-o", str(tmp_path / "a.png")]) == 2  # no style word
    assert main(apply + ["--style-word", "digital art", "-o", str(tmp_path / "a.png")]) == 0
    style = StyleAdapter(random_tensors(sd1_components["unet"]), {"family": "sd1", "style_word": "ink", "alpha": 4.0,
                                                                 "base_model": str(tiny_sd1_folder)})
    style.save(tmp_path / "train")
    assert main(["pair", "apply", "--style", str(tmp_path / "train"), "--prompt", "a dog", "--steps", "2",
                 "-o", str(tmp_path / "b.png")]) == 0
