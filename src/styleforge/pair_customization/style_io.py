"""A learned style on disk: ``style.safetensors`` (A and B of every adapted layer) plus ``style.json``.

The weights file is a diffusers/PEFT LoRA file, so other tools load it as is (``pipe.load_lora_weights(folder)``):
keys ``unet.<unet module>.lora_A.weight`` (A, r x n) and ``unet.<unet module>.lora_B.weight`` (B, m x r), fp32, A
included because it is part of the adapter (spec §3.10). The LoRA scale alpha / r is folded into the stored B, so
the file means the same update B A in every tool, whatever alpha the style was trained with (tools disagree on
where alpha lives; none has to look for it here). The JSON sidecar (also embedded in the safetensors header, so
the file alone is enough) records the base model, its family, ranks, the trained alpha, targets, the style word,
the basis seed, the training settings and the toolkit version. Loading onto a model of another family is refused.

Also read: style files of format 1 (keys without ``unet.``, alpha only in the JSON) and LoRA files saved by other
tools in the diffusers layouts, such as the official PairCustomization script's ``pytorch_lora_weights.safetensors``
(``unet.<module>.lora.down.weight`` / ``lora.up.weight``, no alphas, no style word: the word comes from the caller).
kohya / A1111 files (``lora_unet_...``) and text-encoder LoRAs are refused with a message saying so.
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
from ..io import atomic_write

STYLE_WEIGHTS = "style.safetensors"
STYLE_META = "style.json"
CONTENT_DIR = "content"  # the content adapter, exported on request, as a style folder of its own
FORMAT = "styleforge.pair_customization.style"
FORMAT_VERSION = 2  # 2: diffusers keys (unet. prefix), LoRA scale folded into B
#: ``format`` of a LoRA file written by another tool (no styleforge metadata)
FOREIGN_FORMAT = "diffusers-lora"
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
        """The diffusers/PEFT LoRA state dict: ``unet.<module>.lora_A/B.weight``, B times alpha / r (scale 1)."""
        scale = (self.alpha if self.alpha is not None else self.rank) / self.rank
        out = {}
        for mod, (a, b) in self.tensors.items():
            b = b.detach().float().cpu() * scale if scale != 1 else b.detach().float().cpu()
            out[f"unet.{mod}.lora_A.weight"] = a.detach().float().cpu().clone(memory_format=torch.contiguous_format)  # own storage per key
            out[f"unet.{mod}.lora_B.weight"] = b.clone(memory_format=torch.contiguous_format)
        return out

    def file_metadata(self) -> dict[str, Any]:
        """The metadata as written: alpha = rank because :meth:`state_dict` folds the scale into B."""
        meta = dict(self.metadata, format=FORMAT, format_version=FORMAT_VERSION)
        if self.alpha is not None and float(self.alpha) != self.rank:
            meta["trained_alpha"] = float(self.alpha)
        meta["alpha"] = float(self.rank)
        return meta

    def save(self, folder: str | os.PathLike, *, weights_name: str = STYLE_WEIGHTS, meta_name: str | None = STYLE_META,
             overwrite: bool = True) -> Path:
        """Write ``folder/style.safetensors`` and ``folder/style.json`` atomically; returns the weights path."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"style output must be a folder: {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.file_metadata(), indent=2, sort_keys=True, default=str)
        weights = folder / weights_name
        if weights.exists() and not overwrite:
            raise OutputError(f"output exists: {weights} (pass --overwrite to replace it)")
        with atomic_write(weights) as tmp:
            save_file(self.state_dict(), str(tmp), metadata={_HEADER_KEY: text, "format": "pt"})
        if meta_name:
            with atomic_write(folder / meta_name) as tmp:
                tmp.write_text(text + "\n")
        return weights

    @classmethod
    def load(cls, path: str | os.PathLike, *, weights_name: str = STYLE_WEIGHTS) -> "StyleAdapter":
        """From a style folder (``style.safetensors`` + ``style.json``) or a ``.safetensors`` LoRA file.

        A folder without ``style.safetensors`` is read like diffusers does: its one LoRA file (or
        ``pytorch_lora_weights.safetensors``). Files from other tools carry no style word (``style_word`` is empty).
        """
        path = Path(path)
        weights = _weights_file(path, weights_name)
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
            elif _HEADER_KEY in header:
                meta = json.loads(header[_HEADER_KEY])
            else:
                meta = None
        except (ValueError, UnicodeDecodeError):  # not JSON, or not text
            raise InputError(f"{weights} has damaged style metadata") from None
        if meta is not None and not isinstance(meta, dict):
            raise InputError(f"{weights} has damaged style metadata (not a JSON object)")
        if meta is not None and meta.get("format") != FORMAT:
            raise InputError(f"{weights} is not a styleforge PairCustomization style (format {meta.get('format')!r})")
        if meta is not None and int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"{weights} was written by a newer styleforge (format {meta['format_version']}); upgrade")
        tensors = lora_pairs(raw, weights)
        if meta is None:
            meta = foreign_metadata(tensors)
        meta.setdefault("name", path.stem if path.is_file() else path.name)
        return cls(dict(sorted(tensors.items())), meta)


#: (down, up) key suffixes: PEFT / diffusers >= 0.26, and the older diffusers layout the official script writes
_LORA_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"))
_DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"


def _weights_file(path: Path, weights_name: str) -> Path:
    if path.is_dir() and not (path / weights_name).is_file():
        found = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        named = [p for p in found if p.name == _DIFFUSERS_LORA_NAME]
        if named or len(found) == 1:
            return (named or found)[0]
        raise InputError(f"style not found: {path / weights_name}" + (f" (and {len(found)} other .safetensors files "
                         "there; pass the file)" if found else ""))
    weights = path / weights_name if path.is_dir() else path
    if not weights.is_file():
        raise InputError(f"style not found: {weights}" + ("" if path.exists() else " (no such file or folder)"))
    return weights


def lora_pairs(raw: dict[str, torch.Tensor], where: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{unet module: (A, B)}`` from a LoRA state dict in a diffusers layout; other layouts are refused clearly."""
    keys = list(raw)
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k for k in keys):
        raise InputError(f"{where} is a kohya/A1111-format LoRA (keys like {keys[0]!r}); PairCustomization reads "
                         "diffusers-format LoRA files (the official script also writes pytorch_lora_weights.safetensors)")
    if any(k.startswith(("text_encoder", "te.", "te_")) for k in keys):
        raise InputError(f"{where} adapts a text encoder; PairCustomization styles adapt the UNet only")
    if keys and all(k.startswith("unet.") for k in keys):
        raw = {k[len("unet."):]: v for k, v in raw.items()}
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for down_suffix, up_suffix in _LORA_SUFFIXES:
        for key in raw:
            if key.endswith(down_suffix):
                mod = key[: -len(down_suffix)]
                b = raw.get(mod + up_suffix)
                if b is None:
                    raise InputError(f"{where} is damaged: no up-projection for {mod!r}")
                tensors[mod] = (raw[key], b)
    if not tensors or 2 * len(tensors) != len(raw):
        extra = sorted(k for k in raw if not k.endswith(tuple(s for pair in _LORA_SUFFIXES for s in pair)))
        raise InputError(f"{where} is damaged or not a PairCustomization style (unpaired LoRA tensors"
                         + (f", e.g. {extra[0]!r})" if extra else ")"))
    return tensors


def foreign_metadata(tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Metadata of a LoRA saved by another tool: alpha = rank (the diffusers/PEFT default), family from the widths.

    The official PairCustomization script trains SDXL (cross-attention K/V read 2048-wide text features).
    """
    from ..loading import DEFAULT_SD1_MODEL, DEFAULT_SDXL_MODEL
    from .adapters import DEFAULT_TARGETS

    widths = {a.shape[1] for a, _ in tensors.values()}
    family, base = ("sdxl", DEFAULT_SDXL_MODEL) if 2048 in widths else ("sd1", DEFAULT_SD1_MODEL) if 768 in widths else ("", "")
    covered = all(any(m == t or m.endswith("." + t) for t in DEFAULT_TARGETS) for m in tensors)
    return {"format": FOREIGN_FORMAT, "family": family, "base_model": base, "style_word": "", "alpha": None,
            "targets": list(DEFAULT_TARGETS) if covered else sorted(tensors)}

