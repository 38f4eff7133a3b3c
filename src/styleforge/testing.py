"""Tiny, randomly initialised Stable-Diffusion-shaped components for offline tests and demos.

Everything here is built in code in about a second on a CPU: a UNet with self- and cross-attention at two
decoder resolutions, a VAE, CLIP text encoder(s), a CLIP tokenizer whose vocabulary is written locally, and
a DDIM scheduler with SD's settings. :func:`save_tiny_model` writes them as a diffusers model folder, so
the CLI can be run end to end with ``--model <folder>``.

The shapes mirror the real models (SD 1.x: one text encoder, 77 tokens; SDXL: two encoders, pooled embeds,
time ids, no attention in the highest-resolution blocks); only the widths are small.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

SD1 = "sd1"
SDXL = "sdxl"

#: Words that get a single token each in the tiny tokenizer (so token spans are easy to reason about).
TINY_WORDS = (
    "a photo of an the in on with and cat dog animal building cake car bird zebra giraffe horse face "
    "painting digital illustration style smiling sketch watercolor person man woman"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer_files(folder: str | Path, words=TINY_WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a small CLIP BPE: every byte, plus one token per word in ``words``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:  # left-to-right merges: c1 c2 -> c1c2, c1c2 c3 -> c1c2c3, ... , last piece carries </w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if (left, right) not in merges:
                merges.append((left, right))
            if merged not in vocab:
                vocab.append(merged)
            left = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer_files(tmp)
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="<|endoftext|>")
    return tok


def tiny_text_encoder(hidden_size: int = 32, with_projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=1000, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=hidden_size, bos_token_id=624, eos_token_id=625, pad_token_id=625,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval()


def tiny_unet(family: str = SD1, seed: int = 0):
    """Decoder self-attention at the latent resolution and at half of it (SD 1.x), or at 1/2 and 1/4 (SDXL)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if family == SD1:
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        )
    elif family == SDXL:
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), cross_attention_dim=64, attention_head_dim=(2, 4, 8),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8,
        )
    else:
        raise ValueError(f"unknown family {family!r}")
    return unet.eval()


def tiny_vae(seed: int = 0):
    """Downsamples by 2 (one down block), so a 32x32 image has a 16x16 latent."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    ).eval()


def sd_scheduler():
    """DDIM with Stable Diffusion's training schedule (scaled-linear betas, offset 1, alpha_T not forced to 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_components(family: str = SD1, seed: int = 0) -> dict:
    """Keyword arguments for a diffusers-style pipeline constructor: vae, text_encoder(s), tokenizer(s), unet, scheduler."""
    components = dict(vae=tiny_vae(seed), unet=tiny_unet(family, seed), scheduler=sd_scheduler(),
                      tokenizer=tiny_tokenizer())
    if family == SD1:
        components["text_encoder"] = tiny_text_encoder(32, seed=seed)
    else:
        components["text_encoder"] = tiny_text_encoder(32, seed=seed)
        components["text_encoder_2"] = tiny_text_encoder(32, with_projection=True, seed=seed + 1)
        components["tokenizer_2"] = tiny_tokenizer()
    return components


def save_tiny_model(folder: str | Path, family: str = SD1, seed: int = 0) -> Path:
    """Write tiny components as a diffusers model folder (loads with ``from_pretrained`` and ``--model``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    c = tiny_components(family, seed)
    if family == SD1:
        pipe = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(**c)
    from .io import atomic_folder

    with atomic_folder(folder) as tmp:  # complete or absent: a full disk leaves no partial model folder
        pipe.save_pretrained(tmp)
    return Path(folder)


def full_size_components(family: str = SD1, seed: int = 0) -> dict:
    """Randomly initialised components with the real architectures (SD 1.5 or SDXL base), for benchmarks.

    Random weights time exactly like trained ones; the tokenizer is the tiny local one (token ids stay below the
    real vocabulary size), so nothing is downloaded.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512 if family == SD1 else 1024, scaling_factor=0.18215 if family == SD1 else 0.13025)
    text = lambda hidden, layers, heads, proj=False: (CLIPTextModelWithProjection if proj else CLIPTextModel)(  # noqa: E731
        CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                       num_attention_heads=heads, max_position_embeddings=77, projection_dim=1280 if proj else 768,
                       hidden_act="quick_gelu" if hidden == 768 else "gelu", bos_token_id=624, eos_token_id=625,
                       pad_token_id=625)).eval()
    if family == SD1:
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        return dict(vae=vae.eval(), unet=unet.eval(), scheduler=sd_scheduler(), tokenizer=tiny_tokenizer(),
                    text_encoder=text(768, 12, 12))
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    return dict(vae=vae.eval(), unet=unet.eval(), scheduler=sd_scheduler(), tokenizer=tiny_tokenizer(),
                text_encoder=text(768, 12, 12), text_encoder_2=text(1280, 32, 20, proj=True), tokenizer_2=tiny_tokenizer())
