"""A learned style on disk: ``style.safetensors`` (A and B of every adapted layer) plus ``style.json``.

Keys are PEFT-style, ``<unet module>.lora_A.weight`` (A, r x n) and ``<unet module>.lora_B.weight`` (B, m x r), fp32,
A included because it is part of the adapter (spec §3.10). The JSON sidecar (also embedded in the safetensors
header, so the file alone is enough) records the base model, its family, ranks, alphas, targets, the style word,
the basis seed, the training settings and the toolkit version. Loading onto a model of another family is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError, OutputError

STYLE_WEIGHTS = "style.safetensors"
STYLE_META = "style.json"
CONTENT_WEIGHTS = "content.safetensors"
FORMAT = "styleforge.pair_customization.style"
FORMAT_VERSION = 1
_HEADER_KEY = "styleforge_pair_style"
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sdxl": "SDXL"}


def style_prompt(prompt: str, style_word: str) -> str:
    """``"{prompt} in {style_word} style"``: the official suffix joined with one space (spec §3.4)."""
    return f"{prompt} in {style_word} style"


@dataclass
class StyleAdapter:
    """One adapter's tensors ``{module name: (A, B)}`` and its metadata."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.metadata.get("family", "")

    @property
    def style_word(self) -> str:
        return self.metadata.get("style_word", "")

    @property
    def alpha(self) -> float | None:
        return self.metadata.get("alpha")

    @property
    def rank(self) -> int:
        return int(next(iter(self.tensors.values()))[0].shape[0])

    @property
    def base_model(self) -> str:
        return self.metadata.get("base_model", "")

    def prompt_for(self, prompt: str) -> str:
        return style_prompt(prompt, self.style_word)

    # ------------------------------------------------------------------------------------------- checks

    def check_compatible(self, family: str, widths: dict[str, tuple[int, int]], model_id: str = "") -> None:
        """Refuse, with one clear line, a base model of another family or with other layer shapes."""
        name = self.metadata.get("name") or "this style"
        if self.family and self.family != family:
            raise InputError(f"{name} was trained on a {FAMILY_NAMES.get(self.family, self.family)} model "
                             f"({self.base_model or 'unknown base'}) and cannot be used with the "
                             f"{FAMILY_NAMES.get(family, family)} model {model_id or ''}".rstrip())
        missing = sorted(set(widths) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(widths))
        if missing or extra:
            raise InputError(f"{name} does not fit this model's attention layers ({len(missing)} missing, {len(extra)} "
                             f"unknown; e.g. {(missing or extra)[0]!r}): was it trained on another base model "
                             f"({self.base_model})?")
        for mod, (n, m) in widths.items():
            a, b = self.tensors[mod]
            if a.shape[1] != n or b.shape[0] != m:
                raise InputError(f"{name} does not fit layer {mod!r} (adapter {b.shape[0]}x{a.shape[1]}, layer {m}x{n}): "
                                 f"trained on another base model ({self.base_model})?")

    # ------------------------------------------------------------------------------------------- files

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for mod, (a, b) in self.tensors.items():
            out[f"{mod}.lora_A.weight"] = a.detach().float().cpu().clone(memory_format=torch.contiguous_format)  # own storage per key
            out[f"{mod}.lora_B.weight"] = b.detach().float().cpu().clone(memory_format=torch.contiguous_format)
        return out

    def save(self, folder: str | os.PathLike, *, weights_name: str = STYLE_WEIGHTS, meta_name: str | None = STYLE_META,
             overwrite: bool = True) -> Path:
        """Write ``folder/style.safetensors`` and ``folder/style.json`` atomically; returns the weights path."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"style output must be a folder: {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        meta = dict(self.metadata, format=FORMAT, format_version=FORMAT_VERSION)
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        weights = folder / weights_name
        if weights.exists() and not overwrite:
            raise OutputError(f"output exists: {weights} (pass --overwrite to replace it)")
        atomic_write(weights, lambda tmp: save_file(self.state_dict(), tmp, metadata={_HEADER_KEY: text}))
        if meta_name:
            atomic_write(folder / meta_name, lambda tmp: Path(tmp).write_text(text + "\n"))
        return weights

    @classmethod
    def load(cls, path: str | os.PathLike, *, weights_name: str = STYLE_WEIGHTS) -> "StyleAdapter":
        """From a style folder (``style.safetensors`` + ``style.json``) or a ``.safetensors`` file."""
        path = Path(path)
        weights = path / weights_name if path.is_dir() else path
        if not weights.is_file():
            raise InputError(f"style not found: {weights}" + ("" if path.exists() else " (no such file or folder)"))
        try:
            with safe_open(str(weights), framework="pt") as f:
                header = f.metadata() or {}
                raw = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:
            raise InputError(f"{weights} is damaged or not a safetensors file") from None
        sidecar = weights.with_name(STYLE_META) if weights.name == STYLE_WEIGHTS else None
        try:
            if sidecar is not None and sidecar.is_file():
                meta = json.loads(sidecar.read_text())
            else:
                meta = json.loads(header[_HEADER_KEY])
        except (KeyError, ValueError, UnicodeDecodeError):
            raise InputError(f"{weights} is not a styleforge PairCustomization style (no readable style metadata)") from None
        if not isinstance(meta, dict):
            raise InputError(f"{weights} is damaged (its style metadata is not a JSON object)")
        if meta.get("format") != FORMAT:
            raise InputError(f"{weights} is not a styleforge PairCustomization style (format {meta.get('format')!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"{weights} was written by a newer styleforge (format {meta['format_version']}); upgrade")
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in raw:
            if key.endswith(".lora_A.weight"):
                mod = key[: -len(".lora_A.weight")]
                b = raw.get(f"{mod}.lora_B.weight")
                if b is None:
                    raise InputError(f"{weights} is damaged: no lora_B for {mod!r}")
                tensors[mod] = (raw[key], b)
        if not tensors or 2 * len(tensors) != len(raw):
            raise InputError(f"{weights} is damaged or not a PairCustomization style (unpaired LoRA tensors)")
        meta.setdefault("name", path.stem if path.is_file() else path.name)
        return cls(dict(sorted(tensors.items())), meta)


def atomic_write(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    from ..io import atomic_write as atomic

    with atomic(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_dir(final: Path, fill) -> Path:
    """``fill(tmp_dir)`` then rename the folder onto ``final`` (replacing an older one)."""
    from ..io import atomic_folder

    with atomic_folder(final) as tmp:
        fill(tmp)
    return Path(final)
