"""Gram-matrix style distance on VGG19 (Gatys et al. 2016, "Image Style Transfer Using Convolutional Neural
Networks"), the appearance-fidelity metric of Cross-Image Attention (Alaluf et al. 2024, Table 1).

The paper does not fix the details; this is the convention of spec cross_image_attention §10.13: torchvision's
ImageNet VGG19, layers relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (``features`` 1, 6, 11, 20, 29), inputs
centre-cropped and resized to 512x512 and ImageNet-normalised, ``G = F Fᵀ / (C·H·W)`` per layer, score = sum over
the layers of the Frobenius norm ‖G(output) − G(appearance)‖. Absolute values will not match the paper's table.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import weights as W
from .images import pair
from .nets.vgg import VGG19_RELU, imagenet_normalize, vgg19

GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
GRAM_SIZE = 512


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): ``F Fᵀ / (C·H·W)``. Invariant to any permutation of the spatial positions."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def gram_distance_from_features(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B,) sum over layers of ‖G_a − G_b‖_F."""
    return sum(torch.linalg.matrix_norm(gram_matrix(a) - gram_matrix(b), ord="fro") for a, b in zip(feats_a, feats_b))


def build_vgg19(weights=None, *, pretrained: bool = True, offline: bool | None = None) -> nn.Module:
    net = vgg19()
    if pretrained:
        W.load_weights(net, W.VGG19, weights, offline=offline, ignore_prefixes=("classifier.",))
    return net.eval().requires_grad_(False)


_CACHE: dict = {}


@torch.no_grad()
def gram_distance(output, appearance, *, net: nn.Module | None = None, layers: Sequence[str] = GRAM_LAYERS,
                  size: int | None = GRAM_SIZE) -> torch.Tensor:
    """(B,) Gram distance between ``output`` and the ``appearance`` (style reference) image(s).

    ``net``: a VGG19 with ``forward_taps`` (default: the pretrained one, loaded once); ``size``: working size.
    """
    if net is None:
        if "vgg19" not in _CACHE:
            _CACHE["vgg19"] = build_vgg19()
        net = _CACHE["vgg19"]
    taps = [VGG19_RELU[name] for name in layers]
    x, y = pair(output, appearance, size)
    p = next(net.parameters())
    fx = net.forward_taps(imagenet_normalize(x.to(p)), taps)
    fy = net.forward_taps(imagenet_normalize(y.to(p)), taps)
    return gram_distance_from_features(fx, fy).cpu()
