"""LoRA adapters with fixed orthonormal down-projections on a UNet's attention projections (spec §3.2-3.3).

For every targeted ``nn.Linear`` W0 (out m x in n) an adapter ``name`` adds ``(alpha / r) * B A x`` to the layer's
output, with A (r x n) the down-projection and B (m x r) the up-projection (paper Eq. 2). PairCustomization keeps
two adapters on the same layers, ``content`` and ``style``; their A matrices are disjoint row blocks of one seeded
orthonormal basis per input width, so A_c A_s^T = 0 and the two updates B_c A_c and B_s A_s have orthogonal row
spaces for any B (paper §3.2 "orthogonal adaptation").

Why not PEFT: PEFT keeps A as a trainable ``nn.Linear`` (and ``set_adapter`` turns its ``requires_grad`` back on,
spec §3.3), has no per-adapter stop-gradient inside one forward pass, and renames the UNet's modules. Here A is a
registered *buffer* (it cannot reach an optimizer), the UNet's own modules and state dict are untouched (the
adapters run from forward hooks), and which adapters are active, at which strength and whether their gradient is
stopped is one small piece of state switched by a context manager.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .constants import DEFAULT_BASIS_SEED, DEFAULT_TARGETS  # noqa: F401 (re-exported)

CONTENT, STYLE = "content", "style"


def orthonormal_basis(width: int, seed: int = DEFAULT_BASIS_SEED) -> torch.Tensor:
    """Q of the QR factorisation of a seeded (width x width) standard-normal matrix; its rows are orthonormal.

    The draw equals the official ``torch.manual_seed(seed); torch.randn(n, n)`` on the CPU, but comes from a
    private generator so the global RNG is left alone (the official code reseeds it, spec §3.3). QR runs in float64
    so the float32 rows are orthonormal to ~1e-7.
    """
    gen = torch.Generator("cpu").manual_seed(int(seed))
    gaussian = torch.randn(width, width, generator=gen, dtype=torch.float32)
    q, _ = torch.linalg.qr(gaussian.double())
    return q.float().contiguous()  # LAPACK returns Q column-major


def find_targets(unet: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> dict[str, nn.Linear]:
    """``{module name: Linear}`` for every Linear whose name ends in one of ``targets`` (sorted by name)."""
    targets = tuple(targets)
    if not targets:
        raise ValueError("no target modules given")
    found = {name: mod for name, mod in unet.named_modules()
             if isinstance(mod, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)}
    if not found:
        raise ValueError(f"no nn.Linear in the UNet matches the targets {targets}")
    return dict(sorted(found.items()))


class LoRA(nn.Module):
    """One low-rank update (alpha / r) B A of one layer. ``down`` is a buffer when fixed, a parameter otherwise."""

    def __init__(self, down: torch.Tensor, out_features: int, alpha: float, *, trainable_down: bool = False,
                 up: torch.Tensor | None = None):
        super().__init__()
        rank = down.shape[0]
        if trainable_down:
            self.down = nn.Parameter(down.clone())
        else:  # a fixed A may be one tensor shared by all layers of its width (SDXL: ~10 MB instead of ~400 MB)
            self.register_buffer("down", down)
        up = torch.zeros(out_features, rank, dtype=down.dtype, device=down.device) if up is None else up.clone()
        self.up = nn.Parameter(up.to(down.dtype))
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        down, up = (self.down.detach(), self.up.detach()) if detach else (self.down, self.up)
        return F.linear(F.linear(x.to(down.dtype), down), up) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha / r) B A (m x n)."""
        return (self.up @ self.down) * self.scale


#: Adapter names are ModuleDict keys; a name that is an attribute of nn.ModuleDict ("train", "to", "half", ...) or
#: that starts with this prefix is stored under prefix + name, so every name is usable and the mapping is one-to-one.
_KEY_PREFIX = "adapter__"
_PROBE = nn.ModuleDict()


@functools.lru_cache(maxsize=None)  # called for every adapter in every adapted layer's forward
def adapter_key(name: str) -> str:
    """The ModuleDict key under which adapter ``name`` is stored."""
    return _KEY_PREFIX + name if hasattr(_PROBE, name) or name.startswith(_KEY_PREFIX) else name


def adapter_name(key: str) -> str:
    return key[len(_KEY_PREFIX):] if key.startswith(_KEY_PREFIX) else key


class LayerAdapters(nn.Module):
    """The adapters of one targeted Linear, by adapter name (stored under :func:`adapter_key`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.lora = nn.ModuleDict()


@dataclass
class _ActiveState:
    scales: dict  # adapter name -> multiplier of its output (1 = as trained)
    detached: frozenset  # adapter names whose gradient is stopped (spec §3.4 sg[.])


class UNetAdapters(nn.Module):
    """LoRA adapters on a UNet's target Linears, applied through forward hooks.

    Nothing is active by default, so the UNet behaves exactly as the base model until :meth:`active` switches
    adapters on. Adapter tensors live in this module (``layers.<i>.lora.<name>.{down,up}``); :meth:`tensors`
    exports them under the UNet's module names.
    """

    def __init__(self, unet: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS):
        super().__init__()
        self.targets = tuple(targets)
        found = find_targets(unet, self.targets)
        self.names = list(found)
        self.layers = nn.ModuleList(LayerAdapters(m.in_features, m.out_features) for m in found.values())
        self._state = _ActiveState({}, frozenset())
        self._handles = [mod.register_forward_hook(self._hook(i)) for i, mod in enumerate(found.values())]
        from ..diffusion.memory import execution_device

        self._init_device = execution_device(unet)  # not the weights' device: offload leaves them on the CPU or meta

    # ------------------------------------------------------------------------------------------- hooks

    def _hook(self, index: int):
        def hook(module, args, output):
            state = self._state
            if not state.scales:
                return output
            loras = self.layers[index].lora
            x = args[0]
            for name, multiplier in state.scales.items():
                if multiplier == 0:
                    continue
                delta = loras[adapter_key(name)](x, detach=name in state.detached)
                output = output + (delta if multiplier == 1 else multiplier * delta).to(output.dtype)
            return output

        return hook

    def remove(self) -> None:
        """Detach the hooks: the UNet is the base model again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------------------------------- adapters

    @property
    def adapter_names(self) -> list[str]:
        return [adapter_name(k) for k in self.layers[0].lora.keys()] if len(self.layers) else []

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """``{module name: (in_features, out_features)}``."""
        return {n: (l.in_features, l.out_features) for n, l in zip(self.names, self.layers)}

    def add(self, name: str, rank: int, *, alpha: float | None = None, downs: Mapping[int, torch.Tensor] | None = None,
            trainable_down: bool = False, init_std: float | None = None, generator: torch.Generator | None = None) -> None:
        """Add adapter ``name`` with rank ``rank`` and zero up-projections on every layer.

        ``downs`` maps input width -> (rank x width) down-projection shared by all layers of that width (the
        orthogonal construction). Without it each layer gets its own Gaussian A with std ``init_std`` (default 1/r,
        PEFT's "gaussian" init), drawn from ``generator`` in layer order: the ``orthogonal=False`` ablation.
        """
        if "." in name or not name:
            raise ValueError(f"adapter name must be non-empty and contain no '.', got {name!r}")
        if name in self.adapter_names:
            raise ValueError(f"adapter {name!r} already exists")
        device = self._device()
        for layer in self.layers:
            if downs is not None:
                down = downs[layer.in_features]
                if down.shape != (rank, layer.in_features):
                    raise ValueError(f"down-projection for width {layer.in_features} has shape {tuple(down.shape)}")
            else:
                std = init_std if init_std is not None else 1.0 / rank
                down = torch.randn(rank, layer.in_features, generator=generator) * std
            layer.lora[adapter_key(name)] = LoRA(down.to(device, torch.float32), layer.out_features, rank if alpha is None else alpha,
                                    trainable_down=trainable_down)

    def add_from_tensors(self, name: str, tensors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], alpha: float | None,
                         dtype: torch.dtype | None = None) -> None:
        """Add adapter ``name`` from ``{module name: (down, up)}`` (a loaded file); shapes must fit these layers."""
        if name in self.adapter_names:
            raise ValueError(f"adapter {name!r} already exists")
        missing = set(self.names) - set(tensors)
        extra = set(tensors) - set(self.names)
        if missing or extra:
            some = sorted(missing or extra)[0]
            raise ValueError(f"the adapter's layers do not match this UNet ({len(missing)} missing, {len(extra)} unknown, "
                             f"e.g. {some!r})")
        for mod_name, layer in zip(self.names, self.layers):
            down, up = tensors[mod_name]
            if down.shape[1] != layer.in_features or up.shape[0] != layer.out_features or up.shape[1] != down.shape[0]:
                raise ValueError(f"the adapter's shapes do not fit layer {mod_name!r}: A {tuple(down.shape)}, "
                                 f"B {tuple(up.shape)} for a Linear({layer.in_features} -> {layer.out_features})")
        device = self._device()
        for mod_name, layer in zip(self.names, self.layers):
            down, up = tensors[mod_name]
            d = dtype or down.dtype
            lora = LoRA(down.to(device, d), layer.out_features, down.shape[0] if alpha is None else alpha,
                        up=up.to(device, d))
            lora.up.requires_grad_(False)
            layer.lora[adapter_key(name)] = lora

    def delete(self, name: str) -> None:
        for layer in self.layers:
            del layer.lora[adapter_key(name)]

    def loras(self, name: str) -> list[LoRA]:
        return [layer.lora[adapter_key(name)] for layer in self.layers]

    def tensors(self, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module name: (down, up)}`` of adapter ``name`` (detached views; fixed A may be shared between layers)."""
        key = adapter_key(name)
        return {n: (l.lora[key].down.detach(), l.lora[key].up.detach()) for n, l in zip(self.names, self.layers)}

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The up-projections (and the down-projections when they are parameters), in layer order."""
        return [p for lora in self.loras(name) for p in lora.parameters()]

    def _device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return self._init_device

    # ------------------------------------------------------------------------------------------- activation

    @contextlib.contextmanager
    def active(self, scales: Mapping[str, float] | None = None, *, detached: Iterable[str] = ()) -> Iterator[None]:
        """Run with adapters ``{name: multiplier}`` active (none: the base model); gradients of ``detached`` stopped.

        The previous state is restored on exit, also after an exception (spec §8.4 #27).
        """
        scales = dict(scales or {})
        unknown = (set(scales) | set(detached)) - set(self.adapter_names)
        if unknown:
            raise KeyError(f"unknown adapter(s) {sorted(unknown)}; have {self.adapter_names}")
        previous = self._state
        self._state = _ActiveState(scales, frozenset(detached))
        try:
            yield
        finally:
            self._state = previous


def orthogonal_downs(widths: Iterable[int], content_rank: int, style_rank: int, seed: int = DEFAULT_BASIS_SEED
                     ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per input width n: A_c = Q_n[0:r_c], A_s = Q_n[r_c:r_c + r_s] (spec §3.3 steps 1-2)."""
    widths = sorted(set(widths))
    if content_rank < 1 or style_rank < 1:
        raise ValueError(f"ranks must be >= 1, got content {content_rank}, style {style_rank}")
    if content_rank + style_rank > widths[0]:
        raise ValueError(f"content_rank + style_rank = {content_rank + style_rank} exceeds the smallest adapted input "
                         f"width {widths[0]}: the two down-projections cannot be orthogonal")
    content, style = {}, {}
    for n in widths:
        q = orthonormal_basis(n, seed)
        content[n], style[n] = q[:content_rank].clone(), q[content_rank:content_rank + style_rank].clone()
    return content, style


def attach_pair_adapters(unet: nn.Module, *, content_rank: int = 64, style_rank: int = 64, content_alpha: float | None = None,
                         style_alpha: float | None = None, targets: Iterable[str] = DEFAULT_TARGETS,
                         basis_seed: int = DEFAULT_BASIS_SEED, orthogonal: bool = True, seed: int = 0) -> UNetAdapters:
    """Hook a content and a style adapter onto ``unet``'s attention projections (zero B; alpha = rank by default).

    ``orthogonal=True``: fixed A from the seeded per-width orthonormal bases (buffers). ``False``: the ablation, with
    trainable Gaussian A (std 1/r, drawn from ``seed``) and no orthogonality.
    """
    adapters = UNetAdapters(unet, targets)
    if orthogonal:
        content_downs, style_downs = orthogonal_downs((l.in_features for l in adapters.layers), content_rank, style_rank,
                                                      basis_seed)
        adapters.add(CONTENT, content_rank, alpha=content_alpha, downs=content_downs)
        adapters.add(STYLE, style_rank, alpha=style_alpha, downs=style_downs)
    else:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        adapters.add(CONTENT, content_rank, alpha=content_alpha, trainable_down=True, generator=gen)
        adapters.add(STYLE, style_rank, alpha=style_alpha, trainable_down=True, generator=gen)
    return adapters
