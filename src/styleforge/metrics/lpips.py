"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), version
0.1 of the ``lpips`` package, and background LPIPS under a mask (pix2pix-zeroCon Table I, spec §4).

Convention, as ``lpips.LPIPS(net=..., version='0.1')``: inputs in [-1, 1] at their own size (no resize; the
second image follows the first's size); a fixed scaling layer ``(x - shift) / scale`` with shift (-.030, -.088,
-.188) and scale (.458, .448, .450); backbone features at

- AlexNet: relu1..relu5 (``features`` 1, 4, 7, 9, 11; 64, 192, 384, 256, 256 channels);
- VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (``features`` 3, 8, 15, 22, 29; 64, 128, 256, 512, 512);

each unit-normalised over channels (eps 1e-10), squared difference, the learned non-negative 1x1 head
(``lin{k}.model.1.weight`` of shape (1, C, 1, 1)), spatial mean, summed over the five layers. Weights: the
torchvision ImageNet backbone file and the package's ``alex.pth`` / ``vgg.pth`` heads.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .images import pair
from .nets.vgg import AlexNet, VGG, vgg16

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
BACKBONES = {
    # name: (taps into ``features``, channels per tap)
    "alex": ((1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ((3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


class NetLinLayer(nn.Module):
    """The lpips 1x1 head: ``model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPSHeads(nn.Module):
    """``lin0`` .. ``lin{n-1}``: the layout of the published ``alex.pth`` / ``vgg.pth`` files."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.num_layers = len(channels)
        for k, c in enumerate(channels):
            setattr(self, f"lin{k}", NetLinLayer(c))

    def layer(self, k: int) -> NetLinLayer:
        return getattr(self, f"lin{k}")


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """``backbone`` is any module with ``forward_taps(x, taps)`` (the toolkit's AlexNet/VGG, or a test stub)."""

    def __init__(self, backbone: nn.Module, taps: Sequence[int], channels: Sequence[int], name: str = "custom"):
        super().__init__()
        self.net = backbone
        self.taps = tuple(taps)
        self.heads = LPIPSHeads(channels)
        with torch.no_grad():  # published heads are non-negative (so LPIPS >= 0); keep random ones so too
            for k in range(len(channels)):
                self.heads.layer(k).model[1].weight.abs_()
        self.name = name
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def build(cls, net: str = "alex") -> "LPIPS":
        """Randomly initialised LPIPS of the published shape (tests, or before loading weights)."""
        if net not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONES)}, got {net!r}")
        taps, channels = BACKBONES[net]
        backbone = AlexNet() if net == "alex" else vgg16()
        return cls(backbone, taps, channels, name=net)

    @classmethod
    def from_pretrained(cls, net: str = "alex", *, backbone_weights=None, heads_weights=None, offline: bool | None = None) -> "LPIPS":
        model = cls.build(net)
        backbone_spec = W.ALEXNET if net == "alex" else W.VGG16
        heads_spec = W.LPIPS_ALEX_HEADS if net == "alex" else W.LPIPS_VGG_HEADS
        W.load_weights(model.net, backbone_spec, backbone_weights, offline=offline, ignore_prefixes=("classifier.",))
        # newer lpips releases also store the heads under ``lins.k``: same tensors, ignored
        W.load_weights(model.heads, heads_spec, heads_weights, offline=offline, ignore_prefixes=("lins.",))
        return model.eval().requires_grad_(False)

    def layer_maps(self, x0: torch.Tensor, x1: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer (B, 1, h_k, w_k) maps of the head-weighted squared feature differences."""
        x0 = (x0 - self.shift) / self.scale
        x1 = (x1 - self.shift) / self.scale
        f0 = self.net.forward_taps(x0, self.taps)
        f1 = self.net.forward_taps(x1, self.taps)
        return [self.heads.layer(k)((_unit_normalize(a) - _unit_normalize(b)) ** 2) for k, (a, b) in enumerate(zip(f0, f1))]

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """(B,) distances, or with ``spatial`` the (B, 1, H, W) map (each layer bilinearly upsampled, summed)."""
        maps = self.layer_maps(x0, x1)
        if spatial:
            size = x0.shape[-2:]
            return sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps)
        return sum(m.mean(dim=(2, 3)) for m in maps).flatten()


_CACHE: dict = {}


def get_lpips(net: str = "alex", **kw) -> LPIPS:
    """A cached pretrained LPIPS (one load per process and settings)."""
    key = ("lpips", net, tuple(sorted((k, str(v)) for k, v in kw.items())))
    if key not in _CACHE:
        _CACHE[key] = LPIPS.from_pretrained(net, **kw)
    return _CACHE[key]


@torch.no_grad()
def lpips_distance(a, b, *, net: str | LPIPS = "alex", size=None) -> torch.Tensor:
    """(B,) LPIPS between images ``a`` and ``b`` (``net`` = "alex", "vgg" or an LPIPS module)."""
    model = net if isinstance(net, nn.Module) else get_lpips(net)
    x, y = pair(a, b, size)
    p = next(model.parameters())
    return model(x.to(p), y.to(p)).cpu()


@torch.no_grad()
def background_lpips(a, b, foreground_mask, *, net: str | LPIPS = "alex", mode: str = "spatial", size=None) -> torch.Tensor:
    """(B,) LPIPS restricted to the background (where ``foreground_mask`` is 0).

    ``mode="spatial"`` (default, spec pix2pix_zerocon §4 decision): the spatial LPIPS map averaged over background
    pixels. Convolutional receptive fields reach a few pixels across the mask border, so an edit inside the mask
    can move the score slightly near the border. ``mode="masked"`` (the PnPInversion benchmark variant): both
    images multiplied by the background mask, then whole-image LPIPS; edits inside the mask then cannot change it.
    The mask is any :func:`styleforge.io.load_mask` input (white = foreground), resampled to the image grid. An
    empty background gives NaN with a warning.
    """
    from ..io import load_mask

    model = net if isinstance(net, nn.Module) else get_lpips(net)
    x, y = pair(a, b, size)
    p = next(model.parameters())
    x, y = x.to(p), y.to(p)
    if isinstance(foreground_mask, torch.Tensor) and foreground_mask.ndim == 4:
        fg = (F.interpolate(foreground_mask.float(), size=x.shape[-2:], mode="area") >= 0.5).float()
    else:
        fg = load_mask(foreground_mask, size=tuple(x.shape[-2:]), required=False)
    background = (1 - fg).to(p).expand(x.shape[0], 1, -1, -1)
    area = background.flatten(1).sum(1)
    if (area == 0).any():
        warnings.warn("background LPIPS: the mask covers the whole image, so there is no background (NaN returned)")
    if mode == "spatial":
        dist = (model(x, y, spatial=True) * background).flatten(1).sum(1) / area
    elif mode == "masked":
        dist = model(x * background, y * background)
        dist = torch.where(area > 0, dist, torch.full_like(dist, float("nan")))
    else:
        raise ValueError(f"mode must be 'spatial' or 'masked', got {mode!r}")
    return dist.cpu()
