"""Prompt encoding for SD 1.x (one CLIP encoder) and SDXL (two encoders, pooled embeds, time ids)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch


@dataclass
class Conditioning:
    """Everything the UNet needs besides the latent and the timestep, for a batch of prompts."""

    embeds: torch.Tensor  # (B, L, D) token embeddings for cross-attention
    pooled: torch.Tensor | None = None  # (B, P) SDXL pooled text embedding
    time_ids: torch.Tensor | None = None  # (B, 6) SDXL size/crop conditioning

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def unet_kwargs(self, batch: int | None = None) -> dict:
        """``encoder_hidden_states`` (and SDXL's ``added_cond_kwargs``), repeated to ``batch`` rows if given."""
        c = self if batch is None or batch == len(self) else self.repeat(batch // len(self))
        kwargs = {"encoder_hidden_states": c.embeds}
        if c.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": c.pooled, "time_ids": c.time_ids}
        return kwargs

    def repeat(self, n: int) -> "Conditioning":
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        return Conditioning(rep(self.embeds), rep(self.pooled), rep(self.time_ids))

    def to(self, device=None, dtype=None) -> "Conditioning":
        mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return Conditioning(mv(self.embeds), mv(self.pooled), mv(self.time_ids))

    def with_size(self, height: int, width: int) -> "Conditioning":
        """SDXL time ids for an uncropped image generated at its own size (diffusers' default)."""
        if self.pooled is None:
            return self
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.pooled.dtype, device=self.pooled.device)
        return replace(self, time_ids=ids.repeat(len(self), 1))

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return Conditioning(cat([c.embeds for c in items]), cat([c.pooled for c in items]), cat([c.time_ids for c in items]))


def _token_ids(tokenizer, prompts: Sequence[str], device) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


class PromptEncoder:
    """Encodes prompts with one (SD 1.x) or two (SDXL) CLIP text encoders, like the diffusers pipelines do.

    ``clip_skip`` follows diffusers: the number of final layers to skip (SD 1.x); SDXL always takes the
    penultimate layer of both encoders, and zeros as the unconditional embedding when
    ``force_zeros_for_empty_prompt`` (SDXL base's setting).
    """

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence, *, force_zeros_for_empty_prompt: bool = True,
                 clip_skip: int | None = None):
        self.tokenizers = [t for t in tokenizers if t is not None]
        self.text_encoders = [e for e in text_encoders if e is not None]
        if len(self.tokenizers) != len(self.text_encoders) or not self.text_encoders:
            raise ValueError("need as many tokenizers as text encoders (1 for SD 1.x, 2 for SDXL)")
        self.is_sdxl = len(self.text_encoders) == 2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.clip_skip = clip_skip

    @property
    def device(self) -> torch.device:
        from .memory import execution_device  # offload hooks leave the weights elsewhere

        return execution_device(self.text_encoders[0])

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], *, negative: bool = False) -> Conditioning:
        """Encode ``prompts``. ``negative=True`` marks an unconditional/negative prompt (SDXL zeros for "")."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not self.is_sdxl:
            ids = _token_ids(self.tokenizers[0], prompts, self.device)
            enc = self.text_encoders[0]
            if self.clip_skip is None:
                return Conditioning(enc(ids)[0])
            hidden = enc(ids, output_hidden_states=True).hidden_states[-(self.clip_skip + 1)]
            return Conditioning(enc.text_model.final_layer_norm(hidden))
        if negative and self.force_zeros_for_empty_prompt and all(p == "" for p in prompts):
            n, length = len(prompts), self.tokenizers[0].model_max_length
            width = sum(e.config.hidden_size for e in self.text_encoders)
            dtype = self.text_encoders[0].dtype
            embeds = torch.zeros(n, length, width, device=self.device, dtype=dtype)
            return Conditioning(embeds, torch.zeros(n, self.text_encoders[1].config.projection_dim, device=self.device, dtype=dtype))
        hiddens, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            out = enc(_token_ids(tok, prompts, enc.device), output_hidden_states=True)
            hiddens.append(out.hidden_states[-2 - (self.clip_skip or 0)])
            pooled = out[0]  # the second encoder's projected pooled output (text_embeds)
        return Conditioning(torch.cat(hiddens, dim=-1), pooled)

    def token_span(self, prompt: str, word: str) -> list[int]:
        """Token positions (with the start token at 0) of ``word`` inside ``prompt`` under the first tokenizer.

        Found by matching the word's own token ids inside the prompt's ids, so a word that CLIP splits into several
        BPE tokens gives all of them. Empty if the word is not in the prompt.
        """
        tok = self.tokenizers[0]
        ids = tok(prompt).input_ids
        for variant in (word, word.lower(), " " + word):
            w = tok(variant, add_special_tokens=False).input_ids
            for i in range(1, len(ids) - len(w) + 1):
                if w and ids[i:i + len(w)] == w:
                    return list(range(i, i + len(w)))
        return []
