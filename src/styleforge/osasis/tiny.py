"""Tiny configurations of the OSASIS architectures (same code, small widths) for tests, examples and benchmarks.

The architectures are the released ones with small widths (spec §9): 32x32 images, UNet width 16 with
multipliers (1, 2, 2, 2), one res-block per level, attention at 8, 16-d semantic codes, GroupNorm groups 8.
DiffAE-style zero-initialised output layers make a fresh UNet output exactly 0, so
:func:`reinit_zero_layers` gives them small random weights for tests that need a non-trivial eps.
"""

from __future__ import annotations

import torch
from torch import nn

from .models import ADMUNet, DiffAEAutoencoder, LatentDDIMNet, StructurePreservingNetwork

TINY_DIFFAE = dict(image_size=32, model_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                   attention_resolutions=(8,), embed_channels=32, dropout=0.1, norm_num_groups=8,
                   enc_channel_mult=(1, 2, 2, 2), enc_num_res_blocks=1, enc_out_channels=16)
TINY_LATENT = dict(num_channels=16, num_hid_channels=32, num_layers=3, num_time_emb_channels=8)
TINY_ADM = dict(image_size=32, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                num_head_channels=16, norm_num_groups=8)
TINY_SPN = dict(width=8, hidden=16, time_channels=8, emb_dim=16, norm_num_groups=4)


@torch.no_grad()
def reinit_zero_layers(model: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Give every all-zero conv / linear weight N(0, std) values (deterministic per ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
    return model


def tiny_models(seed: int = 0, nontrivial: bool = True) -> dict:
    """{"diffae", "latent", "ddpm", "spn"} tiny random models (eval mode)."""
    torch.manual_seed(seed)
    diffae = DiffAEAutoencoder(**TINY_DIFFAE)
    latent = LatentDDIMNet(**TINY_LATENT)
    with torch.no_grad():
        latent.conds_mean.copy_(torch.randn(latent.conds_mean.shape) * 0.1)
        latent.conds_std.copy_(torch.rand(latent.conds_std.shape) + 0.5)
    ddpm = ADMUNet(**TINY_ADM)
    spn = StructurePreservingNetwork(**TINY_SPN)
    if nontrivial:
        for i, m in enumerate((diffae, ddpm)):
            reinit_zero_layers(m, seed=seed + i)
    return {"diffae": diffae.eval(), "latent": latent.eval(), "ddpm": ddpm.eval(), "spn": spn.eval()}


def tiny_clip(seed: int = 0, *, for_tiny_tokenizer: bool = False):
    """A transformers ``CLIPModel`` of the ViT-B/32 family with tiny widths (32x32 input, 16-d embeddings).

    ``for_tiny_tokenizer``: a text tower sized for :func:`styleforge.testing.tiny_tokenizer` (its vocabulary,
    77 positions), so the model and that tokenizer saved in one folder load like a released CLIP."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if for_tiny_tokenizer:
        from ..testing import tiny_tokenizer

        tok = tiny_tokenizer()
        text = dict(vocab_size=len(tok), max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = CLIPConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, **text),
        projection_dim=16)
    return CLIPModel(cfg).eval()


#: sub-folders of a tiny OSASIS set -> the flag that takes them
TINY_SET = {"ddpm": "oneshot prepare --model", "diffae": "oneshot train --model", "latent": "oneshot train --latent",
            "clip": "oneshot train/apply --clip"}


def save_tiny_osasis(folder, seed: int = 0):
    """Write a tiny random OSASIS set: ``ddpm`` (P2 ADM), ``diffae`` (DiffAE autoencoder with its semantic
    encoder), ``latent`` (latent DDIM net) and ``clip`` (a tiny CLIP with a tokenizer), each loadable by the
    ``oneshot`` commands as a local folder."""
    from pathlib import Path

    from ..testing import tiny_tokenizer

    folder = Path(folder)
    models = tiny_models(seed)
    for name in ("ddpm", "diffae", "latent"):
        models[name].save_pretrained(folder / name)
    tiny_clip(seed, for_tiny_tokenizer=True).save_pretrained(folder / "clip")
    tiny_tokenizer().save_pretrained(folder / "clip")
    return folder


class CharTokenizer:
    """A stand-in tokenizer for tiny CLIP text towers: characters -> ids, EOS appended, padded."""

    def __init__(self, vocab_size: int = 64, eos: int = 1):
        self.vocab_size, self.eos = vocab_size, eos

    def __call__(self, texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt"):
        ids = torch.full((len(texts), max_length), self.eos, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for i, text in enumerate(texts):
            toks = [2 + ord(ch) % (self.vocab_size - 2) for ch in text][: max_length - 1] + [self.eos]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class StubPerceptual(nn.Module):
    """Mean squared difference of a fixed random conv feature (spec §9 stub LPIPS); (B,) distances."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("kernel", torch.randn(4, 3, 3, 3, generator=g) * 0.3)

    def forward(self, a, b):
        fa = torch.nn.functional.conv2d(a, self.kernel.to(a))
        fb = torch.nn.functional.conv2d(b, self.kernel.to(b))
        return (fa - fb).pow(2).flatten(1).mean(1)


class StubEmbedder(nn.Module):
    """Fixed random linear map of 8x8 average-pooled pixels (spec §9 stub CLIP image encoder)."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 64, dim, generator=g) / 8)

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj.to(x)
