"""Self-segmentation of the object from attention maps, for masked AdaIN (cross-image attention spec §5).

Pixels are clustered by their self-attention rows (k-means, 5 clusters); each cluster is scored by the object
noun's cross-attention inside it; clusters scoring above 1.4x the mean of the other clusters are the object.
The clustering is the official one: scikit-learn's ``KMeans(n_clusters=5, n_init=10)`` (greedy k-means++, Lloyd,
best of 10 by inertia) drawing from numpy's RandomState seeded with 1, the appearance map fitted first and the
structure map second from the same stream (the official code seeds the global RNG, ``np.random.seed(1)``, then
fits both). Departure: the noun is found by CLIP-token matching instead of NLTK tagging.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

#: the official code's k-means seed (np.random.seed(1) before the appearance and structure fits)
SEGMENTATION_SEED = 1


def kmeans(points: torch.Tensor, k: int, *, n_init: int = 10,
           random_state: int | np.random.RandomState | None = SEGMENTATION_SEED) -> torch.Tensor:
    """Cluster labels (N,) of ``points`` (N, D): scikit-learn's KMeans, as the official code calls it.

    A shared ``np.random.RandomState`` continues its stream across calls (the official global-RNG order).
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    data = points.detach().float().cpu().numpy()
    k = min(k, data.shape[0])
    with warnings.catch_warnings():  # fewer distinct rows than clusters: empty clusters are skipped by the caller
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(data).labels_
    return torch.from_numpy(labels.astype(np.int64))


def normalise_noun_map(m: torch.Tensor) -> torch.Tensor:
    """The official normalisation (m - |min m|) / max m. Not min-max scaling; kept for fidelity."""
    return (m - m.min().abs()) / m.max()


def foreground_clusters(scores: dict[int, float], ratio: float = 1.4) -> list[int]:
    """Clusters whose score beats ``ratio`` x the mean of the others (one occurrence of the maximum removed)."""
    values = list(scores.values())
    if len(values) < 2:
        return list(scores)
    rest = values.copy()
    rest.remove(max(rest))
    threshold = ratio * (sum(rest) / len(rest))
    return [c for c, s in scores.items() if s > threshold]


def object_mask(labels: torch.Tensor, noun_map: torch.Tensor, *, ratio: float = 1.4) -> torch.Tensor:
    """Binary object mask (r, r) from cluster labels (r, r) and the object noun's cross-attention map.

    ``noun_map``: on any square grid that divides r; it is upsampled by pixel repetition (the official x2 from the 32
    grid to the 64 grid). Empty clusters are skipped (no 0/0 score).
    """
    r = labels.shape[-1]
    side = noun_map.shape[-1]
    noun = noun_map.float().repeat_interleave(r // side, 0).repeat_interleave(r // side, 1)
    noun = normalise_noun_map(noun)
    scores = {c: noun[labels == c].mean().item() for c in labels.unique().tolist()}
    fg = foreground_clusters(scores, ratio)
    return torch.isin(labels, torch.tensor(fg, dtype=labels.dtype)).float()


def self_segment(self_attention: torch.Tensor, noun_map: torch.Tensor, *, num_segments: int = 5, ratio: float = 1.4,
                 random_state: int | np.random.RandomState | None = SEGMENTATION_SEED) -> torch.Tensor:
    """Binary object mask (r, r) from one image's head-averaged self-attention (r*r, r*r) and its noun map."""
    r = int(round(self_attention.shape[0] ** 0.5))
    labels = kmeans(self_attention, num_segments, random_state=random_state).view(r, r)
    return object_mask(labels, noun_map, ratio=ratio)


def cluster_pair(self_maps: torch.Tensor, *, num_segments: int = 5, seed: int = SEGMENTATION_SEED) -> list[torch.Tensor]:
    """Labels (r, r) of the appearance row, then the structure row, of (2, r*r, r*r) self-attention maps, fitted in
    that order from one RandomState(seed): the official code's global-RNG sequence."""
    stream = np.random.RandomState(seed)
    r = int(round(self_maps.shape[-1] ** 0.5))
    return [kmeans(self_maps[row], num_segments, random_state=stream).view(r, r) for row in range(2)]


def masks_from_capture(capture, token_span: list[int], *, num_segments: int = 5,
                       seed: int = SEGMENTATION_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(appearance mask, structure mask), each (r, r), from a :class:`SegmentationCapture` of one pass."""
    if capture.self_maps is None or capture.cross_maps is None:
        raise RuntimeError("no attention maps were captured for self-segmentation")
    masks = []
    for row, labels in enumerate(cluster_pair(capture.self_maps[:2], num_segments=num_segments, seed=seed)):
        cross = capture.cross_maps[row]  # (n, 77)
        side = int(round(cross.shape[0] ** 0.5))
        noun = cross[:, token_span].mean(dim=-1).view(side, side)
        masks.append(object_mask(labels, noun))
    return masks[0], masks[1]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a (r, r) mask to the latent grid (1, 1, h, w)."""
    m = mask[None, None].float()
    return m if tuple(m.shape[-2:]) == tuple(size) else F.interpolate(m, size=size, mode="nearest")
