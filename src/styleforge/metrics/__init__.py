"""Evaluation metrics of the papers the toolkit implements, each with its network defined here (no torchvision).

=====================  ============================================  ==============================================
metric                 function                                      reproduces
=====================  ============================================  ==============================================
LPIPS (Alex, VGG)      :func:`lpips.lpips_distance`                  Zhang et al. 2018, lpips v0.1
background LPIPS       :func:`lpips.background_lpips`                pix2pix-zeroCon Table I
SSIM, PSNR, RMSE       :mod:`pixel`                                  Wang et al. 2004; TCP Table 1
Gram distance          :func:`gram.gram_distance`                    Cross-Image Attention Table 1 (spec §10.13)
structure distance     :func:`structure.structure_distance`          Splice (Tumanyan 2022); OSASIS, p2p-zeroCon
CLIP score/direction   :mod:`clip`                                   Hessel 2021; Gal 2022; p2p-zero CLIP Acc
FID, ArtFID            :mod:`fid`                                    Heusel 2017; Wright & Ommer 2022 (OSASIS)
identity similarity    :func:`identity.identity_similarity`          OSASIS Table 1 (pSp ArcFace protocol)
DreamSim               :func:`dreamsim.dreamsim_distance`            Fu et al. 2023; PairCustomization
mask IoU               :func:`iou.mask_iou`                          Cross-Image Attention Table 1
=====================  ============================================  ==============================================

Every function accepts an already-built network (``net=`` / ``model=``) so random-init networks can be used in
tests; without one the published weights are loaded once (see :mod:`styleforge.metrics.weights`).
"""

from importlib import import_module

_EXPORTS = {
    "lpips_distance": "lpips",
    "background_lpips": "lpips",
    "LPIPS": "lpips",
    "ssim": "pixel",
    "psnr": "pixel",
    "rmse": "pixel",
    "gram_matrix": "gram",
    "gram_distance": "gram",
    "structure_distance": "structure",
    "clip_score": "clip",
    "clip_accuracy": "clip",
    "clip_directional_similarity": "clip",
    "frechet_distance": "fid",
    "fid": "fid",
    "art_fid": "fid",
    "identity_similarity": "identity",
    "dreamsim_distance": "dreamsim",
    "DreamSim": "dreamsim",
    "mask_iou": "iou",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'styleforge.metrics' has no attribute {name!r}")
