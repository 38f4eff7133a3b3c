"""FreeU as a hook, without copying the UNet's forward.

Two variants:

- ``"official"``: FreeU v1 (Si et al.) as diffusers implements it (``unet.enable_freeu``): scale half of the
  backbone channels and Fourier-filter the *skip* features inside the first two decoder resolutions.
- ``"cia_backbone"``: the variant of the Cross-Image Attention code (its spec §3.10): before each up-block, scale
  channels [0:C/2] of the *backbone* tensor by b and Fourier-filter the whole tensor with threshold 1 and scale s.
  (b1, s1) act before every up-block but the last, (b2, s2) before the last (SD 1.5: 1280-channel inputs of
  up_blocks 0-2 and the 640-channel input of up_blocks.3). Keyed by up-block index, not by channel counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the central 2*threshold square of the shifted 2-D spectrum (the lowest frequencies) by ``scale``."""
    dtype = x.dtype
    spec = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = spec.shape[-2:]
    cy, cx = h // 2, w // 2
    mask = torch.ones_like(spec.real)
    mask[..., cy - threshold:cy + threshold, cx - threshold:cx + threshold] = scale
    spec = torch.fft.ifftshift(spec * mask, dim=(-2, -1))
    return torch.fft.ifftn(spec, dim=(-2, -1)).real.to(dtype)


@dataclass(frozen=True)
class FreeUConfig:
    b1: float = 1.2
    b2: float = 1.4
    s1: float = 0.9
    s2: float = 0.2
    threshold: int = 1


class BackboneFreeU:
    """The cross-image-attention FreeU variant as forward pre-hooks on the UNet's up-blocks."""

    def __init__(self, unet, config: FreeUConfig = FreeUConfig()):
        self.unet = unet
        self.config = config
        self._handles = []

    def _hook_for(self, b: float, s: float):
        thr = self.config.threshold

        def hook(module, args, kwargs):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            half = h.shape[1] // 2
            h = torch.cat([h[:, :half] * b, h[:, half:]], dim=1)
            h = fourier_filter(h, thr, s)
            if "hidden_states" in kwargs:
                kwargs = {**kwargs, "hidden_states": h}
            else:
                args = (h,) + tuple(args[1:])
            return args, kwargs

        return hook

    def enable(self) -> "BackboneFreeU":
        if not self._handles:
            c, n = self.config, len(self.unet.up_blocks)
            for j, block in enumerate(self.unet.up_blocks):
                b, s = (c.b2, c.s2) if j == n - 1 else (c.b1, c.s1)
                self._handles.append(block.register_forward_pre_hook(self._hook_for(b, s), with_kwargs=True))
        return self

    def disable(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self.enable()

    def __exit__(self, *exc):
        self.disable()


FREEU_MODES = ("off", "official", "cia_backbone")


def apply_freeu(unet, mode: str = "off", config: FreeUConfig | None = None):
    """Turn a FreeU variant on for ``unet`` (turning the others off); returns a handle with ``disable()``."""
    if mode not in FREEU_MODES:
        raise ValueError(f"freeu must be one of {FREEU_MODES}, got {mode!r}")
    unet.disable_freeu()
    for block in unet.up_blocks:  # remove backbone hooks left by an earlier call
        for hook_id, hook in list(block._forward_pre_hooks.items()):
            if getattr(hook, "__qualname__", "").startswith("BackboneFreeU"):
                del block._forward_pre_hooks[hook_id]
                block._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    if mode == "off":
        return None
    if mode == "official":
        c = config or FreeUConfig()
        unet.enable_freeu(s1=c.s1, s2=c.s2, b1=c.b1, b2=c.b2)
        return _OfficialHandle(unet)
    return BackboneFreeU(unet, config or FreeUConfig()).enable()


class _OfficialHandle:
    def __init__(self, unet):
        self.unet = unet

    def disable(self):
        self.unet.disable_freeu()
