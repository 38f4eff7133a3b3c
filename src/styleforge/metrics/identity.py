"""Identity similarity with ArcFace IR-SE50 (Deng et al. 2019), the "ID sim" of OSASIS (Cho et al. 2024,
Table 1), computed the way pSp/e4e/HFGI's ``IDLoss`` does (spec osasis §10.13).

Convention: images in [-1, 1] brought to 256x256 by adaptive average pooling as pSp does (already-aligned
FFHQ-style face crops are assumed — no detection or alignment is done), crop rows 35:223 and columns 32:220 (the face box of a 256 FFHQ
crop), adaptive average pooling to 112x112, IR-SE50 embedding, L2 normalisation, cosine similarity between
the input's and the output's embeddings (1 for identical images; higher = identity better kept).
Weights: ``model_ir_se50.pth`` (TreB1eN InsightFace_Pytorch), a local file or a hub id hosting it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import weights as W
from .images import pair
from .nets.irse import IRSE50

FACE_SIZE = 256
CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)
EMBED_SIZE = 112


def build_arcface(weights=None, *, pretrained: bool = True, offline: bool | None = None) -> IRSE50:
    net = IRSE50()
    if pretrained:
        W.load_weights(net, W.ARCFACE_IR_SE50, weights, offline=offline)
    return net.eval().requires_grad_(False)


def face_crop(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> the 112x112 ArcFace input (pool to 256, pSp crop, pool to 112)."""
    x = images if tuple(images.shape[-2:]) == (FACE_SIZE, FACE_SIZE) else F.adaptive_avg_pool2d(images, (FACE_SIZE, FACE_SIZE))
    x = x[:, :, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]
    return F.adaptive_avg_pool2d(x, (EMBED_SIZE, EMBED_SIZE))


_CACHE: dict = {}


@torch.no_grad()
def identity_similarity(input_image, output_image, *, net: IRSE50 | None = None) -> torch.Tensor:
    """(B,) cosine similarity of ArcFace embeddings of each input and its stylization."""
    if net is None:
        if "arcface" not in _CACHE:
            _CACHE["arcface"] = build_arcface()
        net = _CACHE["arcface"]
    x, y = pair(input_image, output_image)
    p = next(net.parameters())
    ex = net.embed(face_crop(x).to(p))
    ey = net.embed(face_crop(y).to(p))
    return (ex * ey).sum(-1).cpu()
