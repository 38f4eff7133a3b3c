"""Finding and loading the published weight files of the metric networks.

Every metric network loads the *standard* file its authors published (torchvision's VGG/AlexNet files, the
``lpips`` package's linear heads, pytorch-fid's Inception, DINO's ViT, the IR-SE50 ArcFace of pSp/e4e) into a
module defined in this toolkit whose state-dict keys and shapes are those of the published checkpoint.

A weight source is resolved in this order:

1. an explicit ``source``: a local file, a folder holding the file, a ``owner/name`` Hugging Face hub id (the
   file is fetched by its standard name) or ``owner/name/path/in/repo.pth`` (a path that does not exist locally
   and does not start with ``.``, ``/`` or ``~`` is read as a hub reference);
2. the environment variable ``STYLEFORGE_METRIC_WEIGHTS`` (a folder searched for the standard file name);
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision, lpips and pytorch-fid put these
   files, so a machine that ran those packages needs no download;
4. the file's official download URL, unless offline (``HF_HUB_OFFLINE=1`` or ``offline=True``).

Whatever fails becomes a one-line :class:`~styleforge.errors.ModelNotFoundError` naming the file and saying how
to provide it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import ModelNotFoundError
from ..loading import host_reachable, is_offline, local_files_only, unavailable_reason

ENV_WEIGHTS_DIR = "STYLEFORGE_METRIC_WEIGHTS"


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: its standard name, where it is published, and what it is for."""

    key: str  # short name used in messages and flags, e.g. "vgg16"
    filename: str  # the file name as published
    description: str
    url: str | None = None  # the official download location
    hub_repo: str | None = None  # a Hugging Face repository that hosts the same file
    hub_filename: str | None = None  # its name inside ``hub_repo`` (default: ``filename``)


# The standard files. The URLs are the ones the reference packages themselves download from.
VGG16 = WeightFile("vgg16", "vgg16-397923af.pth", "torchvision ImageNet VGG16",
                   url="https://download.pytorch.org/models/vgg16-397923af.pth")
VGG19 = WeightFile("vgg19", "vgg19-dcbb9e9d.pth", "torchvision ImageNet VGG19",
                   url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth")
ALEXNET = WeightFile("alexnet", "alexnet-owt-7be5be79.pth", "torchvision ImageNet AlexNet",
                     url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
LPIPS_VGG_HEADS = WeightFile("lpips-vgg", "vgg.pth", "lpips v0.1 linear heads for VGG16",
                             url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth")
LPIPS_ALEX_HEADS = WeightFile("lpips-alex", "alex.pth", "lpips v0.1 linear heads for AlexNet",
                              url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth")
FID_INCEPTION = WeightFile("fid-inception", "pt_inception-2015-12-05-6726825d.pth",
                           "pytorch-fid Inception-v3 (TF FID weights)",
                           url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
ART_INCEPTION = WeightFile("art-inception", "art_inception.pth", "ArtFID Inception-v3 trained on art (art-fid package)",
                           url="https://huggingface.co/matthias-wright/art_inception/resolve/main/art_inception.pth",
                           hub_repo="matthias-wright/art_inception")
DINO_VITB8 = WeightFile("dino-vitb8", "dino_vitbase8_pretrain.pth", "DINO ViT-B/8 backbone (facebookresearch/dino)",
                        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth")
DINO_VITB16 = WeightFile("dino-vitb16", "dino_vitbase16_pretrain.pth", "DINO ViT-B/16 backbone (facebookresearch/dino)",
                         url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth")
# Published only on Google Drive (TreB1eN/InsightFace_Pytorch, re-shared by pSp/e4e/HFGI): no URL we can fetch.
ARCFACE_IR_SE50 = WeightFile("arcface", "model_ir_se50.pth", "ArcFace IR-SE50 (TreB1eN InsightFace_Pytorch, as used by pSp/e4e)")

ALL_FILES = {f.key: f for f in (VGG16, VGG19, ALEXNET, LPIPS_VGG_HEADS, LPIPS_ALEX_HEADS, FID_INCEPTION, ART_INCEPTION,
                                DINO_VITB8, DINO_VITB16, ARCFACE_IR_SE50)}


def weights_in_folder(folder: str | os.PathLike) -> dict[str, Path]:
    """``key -> path`` for every standard file found in ``folder`` (``dreamsim`` -> the folder itself when it holds an
    unzipped DreamSim checkpoint)."""
    folder = Path(folder).expanduser()
    found = {key: folder / f.filename for key, f in ALL_FILES.items() if (folder / f.filename).is_file()}
    if (folder / "dino_vitb16_lora").is_dir():
        found["dreamsim"] = folder
    return found


def torch_hub_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _how_to_provide(spec: WeightFile) -> str:
    where = f"download {spec.url}" if spec.url else f"obtain {spec.filename} ({spec.description})"
    return (f"{where} and pass its path (or a folder holding it) as the weights of '{spec.key}', "
            f"or put it in ${ENV_WEIGHTS_DIR} or {torch_hub_cache()}")


def _missing(spec: WeightFile, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"{spec.description} weights {spec.filename} not available ({reason}); {_how_to_provide(spec)}")


def _from_hub(spec: WeightFile, repo: str, filename: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_files_only(offline)))
    except Exception as e:  # network, cache, authentication, missing file: all mean "not available"
        reason = unavailable_reason(e, offline)
        raise _missing(spec, f"hub {repo}/{filename}: {reason}") from None


def resolve_weight_file(spec: WeightFile, source: str | os.PathLike | None = None, *, offline: bool | None = None) -> Path:
    """The local path of ``spec``'s file (see the module docstring for the search order)."""
    offline = is_offline(offline)
    if source is not None:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            if (path / spec.filename).is_file():
                return path / spec.filename
            raise _missing(spec, f"no {spec.filename} in folder {path}")
        parts = text.split("/")
        if text.startswith((".", "/", "~")) or len(parts) < 2 or not all(parts):
            raise _missing(spec, f"file not found: {text}")
        # not a local path: a hub reference, owner/name (standard file name) or owner/name/path/in/repo
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or spec.hub_filename or spec.filename
        return _from_hub(spec, repo, filename, offline)
    folder = os.environ.get(ENV_WEIGHTS_DIR)
    if folder and (Path(folder) / spec.filename).is_file():
        return Path(folder) / spec.filename
    cached = torch_hub_cache() / spec.filename
    if cached.is_file():
        return cached
    if spec.hub_repo:
        try:
            return _from_hub(spec, spec.hub_repo, spec.hub_filename or spec.filename, offline=True)
        except ModelNotFoundError:
            pass  # not in the HF cache; try the download below
    if offline:
        raise _missing(spec, "offline mode and not in the local caches")
    if spec.url is None:
        raise _missing(spec, "it has no public download URL")
    if not host_reachable(spec.url):
        raise _missing(spec, f"no network ({spec.url.split('/')[2]} does not answer) and not in the local caches")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(cached), progress=True)
    except Exception as e:
        raise _missing(spec, f"download failed: {type(e).__name__}") from None
    return cached


def read_state_dict(path: str | os.PathLike, spec: WeightFile | None = None) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a .pth/.pt/.bin (``weights_only``) or .safetensors file.

    Wrappers used by the reference repositories are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"teacher": ...}`` (full DINO training checkpoints), and ``module.`` / ``backbone.`` prefixes.
    """
    path = Path(path)
    label = spec.filename if spec else path.name
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # truncated files, pickles that are not plain tensors (refused by weights_only)
        raise ModelNotFoundError(f"{path} is damaged or not a {label} weight file") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ModelNotFoundError(f"{path} is not a state dict (found {type(state).__name__})")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str,
              ignore_prefixes: Iterable[str] = (), optional_suffixes: Iterable[str] = ("num_batches_tracked",)) -> None:
    """Strictly load ``state`` into ``module``: every parameter must be present with the published shape.

    Keys under ``ignore_prefixes`` (a classifier head the metric does not use) are dropped; buffers ending in
    ``optional_suffixes`` may be absent (old checkpoints predate BatchNorm's ``num_batches_tracked``).
    A mismatch is a :class:`ModelNotFoundError` naming the first offending keys.
    """
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    optional = tuple(optional_suffixes)
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"wrong shape {wrong[:2]}")
        raise ModelNotFoundError(f"the weights are not a {what} checkpoint: " + "; ".join(parts))
    merged = dict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in state.items()})
    module.load_state_dict(merged, strict=True)


def load_weights(module: torch.nn.Module, spec: WeightFile, source=None, *, offline: bool | None = None,
                 ignore_prefixes: Iterable[str] = ()) -> torch.nn.Module:
    """Resolve ``spec``'s file, read it and load it strictly into ``module`` (returned in eval mode, frozen)."""
    path = resolve_weight_file(spec, source, offline=offline)
    load_into(module, read_state_dict(path, spec), what=spec.description, ignore_prefixes=ignore_prefixes)
    return module.eval().requires_grad_(False)
