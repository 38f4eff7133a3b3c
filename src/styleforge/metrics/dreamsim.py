"""DreamSim distance (Fu et al. 2023, "DreamSim: Learning New Dimensions of Human Visual Similarity using
Synthetic Data"), the metric of PairCustomization (Jones et al. 2024; spec pair_customization §5.3).

``d(a, b) = 1 − cos(f(a), f(b))`` with ``f`` the DreamSim embedding. As the ``dreamsim`` package (v0.1 code and
config) computes it: each image resized to 224x224 (bicubic) in [0, 1]; each backbone normalises it its own way
and contributes one vector; the vectors are concatenated; the embedding is L2-normalised and then centred
(its own mean subtracted: ``normalize_embeds=True``, the package default); distance = 1 − cosine. Symmetric,
0 for identical images, within [0, 2].

Networks, as the published ``dreamsim_checkpoint.zip`` (v0.1) lays them out — the default ensemble of three
ViT-B/16 branches whose embeddings are concatenated (768 + 512 + 512 = 1792-d):

- **DINO** (``dino_vitb16``): DINO's ViT with its backbone file ``dino_vitbase16_pretrain.pth`` (DreamSim's torch hub
  cache keeps it in ``checkpoints/``), ImageNet normalisation, the CLS token of the output of block 11 *before* the
  final LayerNorm (DreamSim hooks the block);
- **CLIP** (``clip_vitb16``, OpenAI) and **OpenCLIP** (``open_clip_vitb16``, laion400m_e31): the vision towers in
  DreamSim's "CLIP as DINO" files ``clip_vitb16_pretrain.pth.tar`` / ``open_clip_vitb16_pretrain.pth.tar`` (DINO key
  layout + ``pos_drop`` = ln_pre + ``proj``), CLIP normalisation, ``norm(x)[:, 0] @ proj`` (the CLIP image
  embedding); QuickGELU for OpenAI CLIP, GELU for OpenCLIP, LayerNorm eps 1e-5;
- each branch's LoRA (rank 16, alpha 0.5, on every ``attn.qkv``) from its PEFT folder ``<branch>_lora/``, merged
  into the qkv weights (``W += alpha/r · B A``; dropout is inactive at evaluation).

:meth:`DreamSim.from_pretrained` takes the unzipped checkpoint folder and builds the full ensemble. With
``ensemble=False`` (or when only the DINO files are given) it builds the DINO-only variant: its numbers are
DreamSim-like, *not* those of the paper's ensemble; the instance's ``variant`` says which one was built.
Not verified against the ``dreamsim`` package numerically here (no network to fetch the weights).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelNotFoundError
from . import weights as W
from .images import pair, resize, to_tensor
from .nets.vgg import imagenet_normalize
from .nets.vit import VisionTransformer, dino_vitb16

DREAMSIM_SIZE = 224
DINO_LAYER = 11
DEFAULT_LORA_ALPHA, DEFAULT_LORA_R = 0.5, 16  # dreamsim v0.1 ``lora_config``
_LORA_KEY = re.compile(r"blocks\.(\d+)\.attn\.qkv\.lora_([AB])(?:\.default)?\.weight$")


class DinoBranch(nn.Module):
    """DreamSim's DINO branch: CLS token of block ``layer``'s output (before the final norm)."""

    def __init__(self, vit: VisionTransformer | None = None, layer: int = DINO_LAYER):
        super().__init__()
        self.vit = vit if vit is not None else dino_vitb16()
        self.layer = min(layer, len(self.vit.blocks) - 1)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.vit.block_output(imagenet_normalize(images01 * 2 - 1), self.layer)[:, 0]


def merge_lora(vit: VisionTransformer, adapter: dict[str, torch.Tensor], scale: float) -> int:
    """Add ``scale · B @ A`` to each block's qkv weight; returns the number of blocks changed."""
    pieces: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in adapter.items():
        m = _LORA_KEY.search(key)
        if m:
            pieces.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for index, ab in pieces.items():
        if index >= len(vit.blocks) or set(ab) != {"A", "B"}:
            raise ModelNotFoundError(f"the LoRA adapter does not fit this ViT (block {index}, parts {sorted(ab)})")
        qkv = vit.blocks[index].attn.qkv
        delta = ab["B"].float() @ ab["A"].float()
        if delta.shape != qkv.weight.shape:
            raise ModelNotFoundError(f"LoRA update of block {index} has shape {tuple(delta.shape)}, qkv has {tuple(qkv.weight.shape)}")
        with torch.no_grad():
            qkv.weight += scale * delta.to(qkv.weight)
    return len(pieces)


def _merge_lora_folder(vit: VisionTransformer, folder: str | os.PathLike) -> None:
    adapter, scale = load_lora_folder(folder)
    if merge_lora(vit, adapter, scale) == 0:
        raise ModelNotFoundError(f"{folder} holds no qkv LoRA weights (keys like blocks.N.attn.qkv.lora_A.weight)")


def load_lora_folder(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], float]:
    """(adapter tensors, scale) from a PEFT adapter folder (``adapter_model.safetensors`` or ``.bin``)."""
    folder = Path(folder)
    files = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise ModelNotFoundError(f"no adapter_model.safetensors/.bin in {folder}: pass the dino_vitb16_lora folder of "
                                 "dreamsim_checkpoint.zip (https://github.com/ssundaram21/dreamsim/releases)")
    alpha, r = DEFAULT_LORA_ALPHA, DEFAULT_LORA_R
    config = folder / "adapter_config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        alpha, r = float(cfg.get("lora_alpha", alpha)), int(cfg.get("r", r))
    return W.read_state_dict(path), alpha / r


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BRANCH_FILES = {  # branch -> (file of the converted tower, LoRA folder) in the unzipped dreamsim checkpoint
    "clip_vitb16": ("clip_vitb16_pretrain.pth.tar", "clip_vitb16_lora"),
    "open_clip_vitb16": ("open_clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_lora"),
}


class ClipBranch(nn.Module):
    """DreamSim's CLIP / OpenCLIP branch: CLIP-normalised input, ``norm(tokens)[:, 0] @ proj``."""

    def __init__(self, vit: VisionTransformer, proj: torch.Tensor):
        super().__init__()
        self.vit = vit
        self.proj = nn.Parameter(proj.clone(), requires_grad=False)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        mean = images01.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = images01.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        return self.vit((images01 - mean) / std)[:, 0] @ self.proj


def clip_as_dino_vit(kind: str, *, patch_size: int = 16, embed_dim: int = 768, depth: int = 12, num_heads: int = 12) -> VisionTransformer:
    """The tower of DreamSim's converted CLIP files (``kind`` = "clip" for OpenAI CLIP, "open_clip" for OpenCLIP)."""
    return VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             act="quick_gelu" if kind == "clip" else "gelu", eps=1e-5, pre_norm=True)


def load_clip_branch(path: str | os.PathLike, kind: str) -> ClipBranch:
    """A :class:`ClipBranch` from a ``*_vitb16_pretrain.pth.tar`` file (``{"state_dict": {..., "proj": (768, 512)}}``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"DreamSim {kind} tower {path.name} not found at {path}: unzip dreamsim_checkpoint.zip "
                                 "(https://github.com/ssundaram21/dreamsim/releases/download/v0.1.0/dreamsim_checkpoint.zip)")
    state = dict(W.read_state_dict(path))
    if "proj" not in state:
        raise ModelNotFoundError(f"{path} is not a DreamSim CLIP-as-DINO file (no 'proj' tensor)")
    proj = state.pop("proj")
    vit = clip_as_dino_vit(kind)
    W.load_into(vit, state, what=f"DreamSim {kind} ViT-B/16")
    return ClipBranch(vit, proj)


class DreamSim(nn.Module):
    """Concatenated branch embeddings, normalised and centred; :meth:`distance` = 1 − cosine."""

    def __init__(self, branches: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None, *,
                 size: int = DREAMSIM_SIZE, normalize_embeds: bool = True, variant: str = "custom"):
        super().__init__()
        self.variant = variant
        self.branches = nn.ModuleList([b for b in (branches or [DinoBranch()]) if isinstance(b, nn.Module)])
        self._callables = list(branches or self.branches)
        self.size, self.normalize_embeds = size, normalize_embeds
        self.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike | None = None, *, ensemble: bool = True, dino_weights=None,
                        lora_folder: str | os.PathLike | None = None, offline: bool | None = None) -> "DreamSim":
        """DreamSim from the unzipped ``dreamsim_checkpoint.zip`` folder (or ``$STYLEFORGE_DREAMSIM_DIR``).

        ``ensemble=True``: the published DINO + CLIP + OpenCLIP model. ``ensemble=False``: the DINO branch alone.
        ``dino_weights`` / ``lora_folder`` override where the DINO backbone file and its LoRA folder are found.
        """
        folder = checkpoint_dir or os.environ.get("STYLEFORGE_DREAMSIM_DIR")
        folder = Path(folder).expanduser() if folder else None
        if lora_folder is None and folder is not None:
            lora_folder = folder / "dino_vitb16_lora"
        if lora_folder is None:
            raise ModelNotFoundError("DreamSim needs its checkpoint folder (unzipped dreamsim_checkpoint.zip from "
                                     "https://github.com/ssundaram21/dreamsim/releases/download/v0.1.0/dreamsim_checkpoint.zip, "
                                     "with dino_vitb16_lora/); pass it as the 'dreamsim' weights or set STYLEFORGE_DREAMSIM_DIR")
        if dino_weights is None and folder is not None and (folder / "checkpoints" / W.DINO_VITB16.filename).is_file():
            dino_weights = folder / "checkpoints" / W.DINO_VITB16.filename  # where DreamSim's torch hub call put it
        vit = dino_vitb16()
        W.load_weights(vit, W.DINO_VITB16, dino_weights, offline=offline, ignore_prefixes=("head.",))
        _merge_lora_folder(vit, lora_folder)
        branches: list[nn.Module] = [DinoBranch(vit)]
        if not ensemble:
            return cls(branches, variant="dino_vitb16")
        if folder is None:
            raise ModelNotFoundError("the DreamSim ensemble needs the checkpoint folder (its CLIP and OpenCLIP towers); "
                                     "pass it, or ask for the DINO-only variant (ensemble=False)")
        for name, (tower, lora) in BRANCH_FILES.items():
            branch = load_clip_branch(folder / tower, "clip" if name == "clip_vitb16" else "open_clip")
            _merge_lora_folder(branch.vit, folder / lora)
            branches.append(branch)
        return cls(branches, variant="ensemble")

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        x = to_tensor(images, name="image")
        p = next(self.parameters(), None)
        device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
        x01 = ((resize(x, self.size) + 1) / 2).to(device, dtype)
        feats = torch.cat([branch(x01).float() for branch in self._callables], dim=-1)
        if self.normalize_embeds:
            feats = F.normalize(feats, dim=-1)
            feats = feats - feats.mean(dim=-1, keepdim=True)
        return feats.cpu()

    def distance(self, a, b) -> torch.Tensor:
        x, y = pair(a, b)
        return (1 - F.cosine_similarity(self.embed(x), self.embed(y), dim=-1)).clamp(0, 2)


_CACHE: dict = {}


def dreamsim_distance(a, b, *, model: DreamSim | None = None) -> torch.Tensor:
    """(B,) DreamSim distance (see the module docstring for what the default model covers)."""
    if model is None:
        if "dreamsim" not in _CACHE:
            _CACHE["dreamsim"] = DreamSim.from_pretrained()
        model = _CACHE["dreamsim"]
    return model.distance(a, b)


def diversity(images, *, model: DreamSim | None = None) -> float:
    """Mean pairwise DreamSim distance within a set (PairCustomization App. A, Eq. 12); 0 for identical images."""
    if model is None:
        model = _CACHE.get("dreamsim") or DreamSim.from_pretrained()
    e = model.embed(images)
    n = e.shape[0]
    if n < 2:
        return 0.0
    sim = F.normalize(e, dim=-1) @ F.normalize(e, dim=-1).T
    iu = torch.triu_indices(n, n, 1)
    return float((1 - sim[iu[0], iu[1]]).clamp(0, 2).mean())
