"""Memory savers shared by every method: one settings object, one way to install it on a pipeline.

:class:`MemorySavers` holds the knobs (``offload``, VAE slicing and tiling, the attention query chunk, gradient
checkpointing); :meth:`MemorySavers.low_memory` is the set that fits an 8 GB card. :func:`apply_memory_savers`
installs them on a diffusers pipeline with diffusers' own methods (``enable_model_cpu_offload``,
``enable_sequential_cpu_offload``, ``vae.enable_slicing``/``enable_tiling``); the chunk size and checkpointing are
read by the methods' loops (:func:`gradient_checkpointing` switches it for one pass). :func:`offload_modules`
does the same offload for models that are not a ``DiffusionPipeline`` (OSASIS).

Exactness: offload, slicing, chunking and checkpointing compute the same numbers (up to float rounding of a
different reduction order); VAE tiling blends overlapping tiles and is approximate (it only acts on images larger
than the tile, 512 px for SD 1.5 by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from ..errors import InputError

OFFLOAD_MODES = ("none", "model", "sequential")
#: the query chunk --low-memory uses: a 4096-token (512 px SD 1.5) map then takes a quarter of its full size
LOW_MEMORY_CHUNK = 1024


@dataclass(frozen=True)
class MemorySavers:
    offload: str = "none"  # "model": one whole model on the accelerator at a time; "sequential": one layer at a time
    vae_slicing: bool = False  # decode/encode a batch one image at a time
    vae_tiling: bool = False  # decode/encode in overlapping tiles (approximate; only for images larger than a tile)
    vae_tile_size: int | None = None  # tile side in pixels (default: the VAE's sample size)
    attention_chunk_size: int | None = None  # query rows per explicitly computed attention map
    gradient_checkpointing: bool = False  # recompute activations in backward (training, guided passes)

    def __post_init__(self):
        if self.offload not in OFFLOAD_MODES:
            raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {self.offload!r}")
        if self.attention_chunk_size is not None and self.attention_chunk_size < 1:
            raise InputError(f"attention_chunk_size must be a positive number of query rows, got {self.attention_chunk_size}")
        if self.vae_tile_size is not None and (self.vae_tile_size < 64 or self.vae_tile_size % 8):
            raise InputError(f"vae_tile_size must be a multiple of 8, at least 64, got {self.vae_tile_size}")

    @classmethod
    def low_memory(cls, **overrides) -> "MemorySavers":
        """What fits SD 1.5 (and SDXL inference in fp16) on an 8 GB card: model offload, VAE slicing and tiling,
        1024-row attention chunks, gradient checkpointing. Explicit ``overrides`` win."""
        base = dict(offload="model", vae_slicing=True, vae_tiling=True, attention_chunk_size=LOW_MEMORY_CHUNK,
                    gradient_checkpointing=True)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_options(cls, *, low_memory: bool = False, **options) -> "MemorySavers":
        """Keyword options as the CLI and the pipelines take them (None = not given)."""
        if low_memory:
            return cls.low_memory(**options)
        return cls(**{k: v for k, v in options.items() if v is not None})

    def active(self) -> list[str]:
        """The savers switched on, as short names (for metadata and benchmark tables)."""
        default = MemorySavers()
        return [f"{f.name}={getattr(self, f.name)}" if not isinstance(getattr(self, f.name), bool) else f.name
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]


def apply_memory_savers(pipe, savers: MemorySavers, device: torch.device | str | None = None) -> MemorySavers:
    """Install ``savers`` on a diffusers pipeline; ``device`` is the execution device of the offload hooks.

    Without ``device`` the pipeline's current device is used, so offload also installs (and is tested) on a
    CPU-only machine, where it saves nothing but runs the same code path.
    """
    if savers.offload != "none":
        target = torch.device(device) if device is not None else pipe._execution_device
        if savers.offload == "model":
            pipe.enable_model_cpu_offload(device=target)
        elif target.type == "cpu":  # diffusers names it "cpu:0", which accelerate's layer-wise hooks cannot put back
            pipe.remove_all_hooks()
            offload_modules({k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)},
                            "sequential", "cpu")
        else:
            pipe.enable_sequential_cpu_offload(device=target)
    elif device is not None:
        pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        vae.enable_slicing() if savers.vae_slicing else vae.disable_slicing()
        vae.enable_tiling() if savers.vae_tiling else vae.disable_tiling()
        if savers.vae_tiling and savers.vae_tile_size:
            set_vae_tile_size(vae, savers.vae_tile_size)
    pipe._memory_savers = savers
    return savers


def set_vae_tile_size(vae, size: int) -> None:
    """Tiles of ``size`` pixels (and size / 8 latents), overlap as diffusers' default (a quarter)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = int(size)
    vae.tile_latent_min_size = int(size) // factor


def offload_modules(modules: Mapping[str, torch.nn.Module | None], mode: str, device: torch.device | str) -> list:
    """Offload plain ``nn.Module``s with accelerate's hooks, executing on ``device`` (any device, also the CPU).

    ``"model"``: each module moves to ``device`` when called and the previous one in the given order moves back to
    the CPU (diffusers' model offload); ``"sequential"``: weights stay on the CPU and each leaf layer is streamed to
    ``device`` for its forward. Returns the hooks (model mode) so a caller can offload the last module.
    """
    if mode not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    if mode == "none":
        return []
    from accelerate import cpu_offload, cpu_offload_with_hook

    device = torch.device(device)
    hooks, hook = [], None
    for module in modules.values():
        if module is None:
            continue
        if mode == "model":
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
            hooks.append(hook)
        else:
            cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)
    return hooks


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its offload hook's execution device, else the device of its weights."""
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        if hook is not None and getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def gradient_checkpointing(model, enabled: bool = True) -> Iterator[None]:
    """Gradient checkpointing on a diffusers model for the enclosed passes (its previous state restored)."""
    if not enabled:
        yield
        return
    was = bool(getattr(model, "is_gradient_checkpointing", False))
    model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was:
            model.disable_gradient_checkpointing()


def check_finite(tensor: torch.Tensor, what: str, advice: str = "try --dtype fp32 or bf16") -> torch.Tensor:
    """The NaN guard of half precision: refuse non-finite values with advice instead of saving a black image."""
    if not torch.isfinite(tensor).all():
        raise InputError(f"{what} contain NaN or infinite values (often fp16 overflow): {advice}")
    return tensor
