"""FID (Heusel et al. 2017) and ArtFID (Wright & Ommer 2022, "ArtFID: Quantitative Evaluation of Neural Style
Transfer").

FID convention (pytorch-fid / clean-fid "legacy" mode, spec region_wise §5.3): Inception-v3 with the TF FID
weights (``pt_inception-2015-12-05``, pytorch-fid's FID blocks), images in [-1, 1] bilinearly resized to 299x299,
2048-d pool3 features, ``FID = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½)`` with unbiased (N−1) covariances.

ArtFID (spec osasis §5): ``(1 + mean LPIPS_alex(content_i, stylized_i)) · (1 + FID(style set, stylized set))``,
where the FID uses the art-trained Inception (``art_inception.pth`` of the art-fid package). That checkpoint is
loaded into the same Inception-v3 module names with torchvision's (non-FID) blocks; its classifier head is not
used. Its preprocessing here is the FID one above (our assumption: the art-fid package feeds [0, 1] tensors to its
own wrapper, which we could not inspect). This is the *finite* ArtFID; the package's default ArtFID∞
extrapolates FID over subsets of 5000+ images.

Small-sample caveats — read before reporting a number:

- With N images the covariance has rank ≤ N − 1 < 2048 for any N ≤ 2048, so Σ is singular; FID stays defined
  (we take the square root through a symmetric eigendecomposition) but is **biased upwards, and the bias
  depends on N** (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score"). Compare methods only
  at the same N, on the same reference set; never compare with numbers from papers computed at 10k–50k images.
- A handful of images (a comparison report) gives a number dominated by that bias; it is shown as a rough
  indication with its N, and a warning is issued below :data:`SMALL_SAMPLE`.
- With a single image the covariance is undefined: FID needs at least 2 images per set.
"""

from __future__ import annotations

import warnings
import torch
from torch import nn

from ..errors import InputError
from . import weights as W
from .images import to_tensor
from .nets.inception import FID_INPUT_SIZE, InceptionV3

SMALL_SAMPLE = 2048  # below the feature dimension the covariance is singular and FID strongly N-dependent


def build_fid_inception(weights=None, *, pretrained: bool = True, offline: bool | None = None) -> InceptionV3:
    net = InceptionV3(num_classes=1008, fid_blocks=True)
    if pretrained:
        W.load_weights(net, W.FID_INCEPTION, weights, offline=offline)
    return net.eval().requires_grad_(False)


def build_art_inception(weights=None, *, pretrained: bool = True, offline: bool | None = None) -> InceptionV3:
    net = InceptionV3(num_classes=1000, fid_blocks=False)
    if pretrained:
        W.load_weights(net, W.ART_INCEPTION, weights, offline=offline, ignore_prefixes=("fc.", "AuxLogits."))
        nn.init.zeros_(net.fc.weight)  # the head is unused; make that visible rather than random
    return net.eval().requires_grad_(False)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of (N, D) features; N >= 2."""
    f = features.double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"FID needs at least 2 images per set (got {f.shape[0] if f.ndim == 2 else 'a malformed feature array'})")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1Σ2)^½).

    Tr((Σ1Σ2)^½) is computed as Σ sqrt(eig(Σ1^½ Σ2 Σ1^½)): that matrix is similar to Σ1Σ2 and symmetric PSD,
    so the eigenvalues are real and the result is stable for singular Σ (few samples).
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    mu1, mu2 = mu1.reshape(-1), mu2.reshape(-1)
    s1, s2 = s1.reshape(mu1.numel(), mu1.numel()), s2.reshape(mu2.numel(), mu2.numel())
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return max(float(value), 0.0)


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor, *, warn: bool = True) -> float:
    for f in (features_a, features_b):
        if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] != features_a.shape[1]:
            raise InputError(f"FID needs at least 2 images per set and equal feature sizes (got shapes "
                             f"{tuple(features_a.shape)} and {tuple(features_b.shape)})")
    n = min(features_a.shape[0], features_b.shape[0])
    if warn and n < SMALL_SAMPLE:
        warnings.warn(f"FID from {n} images per set: biased upwards and N-dependent (see styleforge.metrics.fid); "
                      "compare only at equal N", stacklevel=2)
    if max(features_a.shape[0], features_b.shape[0]) < features_a.shape[1]:
        return _frechet_low_rank(features_a.double(), features_b.double())
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def _frechet_low_rank(fa: torch.Tensor, fb: torch.Tensor) -> float:
    """The same Fréchet distance from the samples, for N < D (exact, not an approximation).

    With Σ1 = AAᵀ, Σ2 = BBᵀ (A = centred samplesᵀ / sqrt(N−1)), the non-zero eigenvalues of Σ1Σ2 are those of
    (AᵀB)(AᵀB)ᵀ, so Tr((Σ1Σ2)^½) is the nuclear norm of AᵀB — an N1 x N2 problem instead of a D x D one.
    """
    a = (fa - fa.mean(0)) / (fa.shape[0] - 1) ** 0.5
    b = (fb - fb.mean(0)) / (fb.shape[0] - 1) ** 0.5
    tr_covmean = torch.linalg.matrix_norm(a @ b.T, ord="nuc")
    value = (fa.mean(0) - fb.mean(0)).pow(2).sum() + a.pow(2).sum() + b.pow(2).sum() - 2 * tr_covmean
    return max(float(value), 0.0)


@torch.no_grad()
def inception_features(net: InceptionV3, images, *, batch_size: int = 16, progress: bool = False,
                       resize: int | None = FID_INPUT_SIZE) -> torch.Tensor:
    """(N, 2048) pool features of images (paths, PIL images, or a tensor batch in [-1, 1]), in batches.

    ``resize``: the network's input size (299, the FID convention; other values only for smoke tests)."""
    from tqdm.auto import tqdm

    if isinstance(images, torch.Tensor):
        items = images if images.ndim == 4 else images[None]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    n = items.shape[0] if isinstance(items, torch.Tensor) else len(items)
    p = next(net.parameters())
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="inception features"):
        chunk = items[start:start + batch_size]
        x = to_tensor(chunk, name="image")
        out.append(net.pool_features(x.to(p), resize=resize).double().cpu())
    return torch.cat(out)


_CACHE: dict = {}


def _default(name: str):
    if name not in _CACHE:
        _CACHE[name] = build_fid_inception() if name == "fid" else build_art_inception()
    return _CACHE[name]


def fid(images_a, images_b, *, net: InceptionV3 | None = None, progress: bool = False) -> float:
    """FID between two image sets (see the module docstring for the convention and the small-sample caveats)."""
    net = net or _default("fid")
    return fid_from_features(inception_features(net, images_a, progress=progress), inception_features(net, images_b, progress=progress))


def art_fid(stylized, style, content, *, inception: InceptionV3 | None = None, lpips=None, progress: bool = False,
            resize: int | None = FID_INPUT_SIZE) -> dict:
    """Finite ArtFID of a stylized set: ``(1 + LPIPS_alex content distance) · (1 + FID(style, stylized))``.

    ``style`` is the style set the FID is taken against; a common choice (spec osasis §10.12) pairs each stylized
    image with its own reference, repeated. ``content`` pairs one-to-one with ``stylized``. Returns a dict with
    ``art_fid``, ``fid``, ``content_lpips`` and ``n``.
    """
    from .lpips import lpips_distance

    inception = inception or _default("art")
    stylized_t = to_tensor(stylized, name="stylized image")
    content_t = to_tensor(content, tuple(stylized_t.shape[-2:]), name="content image")
    if content_t.shape[0] != stylized_t.shape[0]:
        raise InputError(f"ArtFID pairs content and stylized images one-to-one: got {content_t.shape[0]} and {stylized_t.shape[0]}")
    fid_value = fid_from_features(inception_features(inception, style, progress=progress, resize=resize),
                                  inception_features(inception, stylized_t, progress=progress, resize=resize), warn=False)
    content_dist = float(lpips_distance(content_t, stylized_t, net=lpips if lpips is not None else "alex").mean())
    return {"art_fid": (1 + content_dist) * (1 + fid_value), "fid": fid_value, "content_lpips": content_dist,
            "n": int(stylized_t.shape[0])}
