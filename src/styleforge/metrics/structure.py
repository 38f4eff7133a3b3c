"""Structure distance on DINO ViT-B/8 key self-similarity (Tumanyan et al. 2022, "Splicing ViT Features for
Semantic Appearance Transfer"), the structure metric of OSASIS (Table 1, "Structure dist") and pix2pix-zeroCon
(Fig. 5, "Dist"), as in the Splice / Plug-and-Play / PnPInversion evaluation code.

Convention (specs osasis §5, pix2pix_zerocon §4): the input image is resized so its shorter side is 224 (longer
side at most 480; bilinear, antialiased) and the other image is resized to the same size; ImageNet
normalisation; the keys of the last block (index 11) of DINO ViT-B/8, all heads concatenated per token, CLS
token included; ``S(x)`` = token × token cosine self-similarity; distance = ``MSE(S(input), S(output))``.
Symmetric, 0 for identical images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .images import pair, short_side_resize
from .nets.vgg import imagenet_normalize
from .nets.vit import VisionTransformer, dino_vitb8

STRUCTURE_LAYER = 11
SHORT_SIDE = 224
MAX_SIDE = 480


def build_dino_vitb8(weights=None, *, pretrained: bool = True, offline: bool | None = None) -> VisionTransformer:
    net = dino_vitb8()
    if pretrained:
        # a full DINO training checkpoint also carries the projection head: not part of the backbone
        W.load_weights(net, W.DINO_VITB8, weights, offline=offline, ignore_prefixes=("head.",))
    return net.eval().requires_grad_(False)


def cosine_self_similarity(tokens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, T, D) -> (B, T, T) cosine similarities (symmetric, unit diagonal for non-zero tokens)."""
    norms = tokens.norm(dim=-1, keepdim=True)
    return (tokens @ tokens.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp_min(eps)


def key_self_similarity(net: VisionTransformer, images: torch.Tensor, layer: int = STRUCTURE_LAYER) -> torch.Tensor:
    """(B, T, T) self-similarity of the concatenated-head keys of block ``layer``; ``images`` ImageNet-normalised."""
    keys = net.block_keys(images, layer)  # (B, heads, T, d)
    b, h, t, d = keys.shape
    return cosine_self_similarity(keys.transpose(1, 2).reshape(b, t, h * d))


_CACHE: dict = {}


@torch.no_grad()
def structure_distance(input_image, output_image, *, net: VisionTransformer | None = None,
                       layer: int | None = None, short_side: int = SHORT_SIDE, max_side: int | None = MAX_SIDE) -> torch.Tensor:
    """(B,) MSE between the DINO key self-similarity matrices of the input and the output."""
    if net is None:
        if "dino" not in _CACHE:
            _CACHE["dino"] = build_dino_vitb8()
        net = _CACHE["dino"]
    layer = len(net.blocks) - 1 if layer is None else layer
    x, y = pair(input_image, output_image)
    x = short_side_resize((x + 1) / 2, short_side, max_side) * 2 - 1
    y = F.interpolate((y + 1) / 2, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    p = next(net.parameters())
    sx = key_self_similarity(net, imagenet_normalize(x.to(p)), layer)
    sy = key_self_similarity(net, imagenet_normalize(y.to(p)), layer)
    return (sx - sy).pow(2).flatten(1).mean(1).cpu()
