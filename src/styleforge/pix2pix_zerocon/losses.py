"""The three losses of pix2pix-zeroCon.

* the noise regulariser of pix2pix-zero's DDIM inversion (autocorrelation pyramid + KL to N(0, I)), applied to
  every predicted noise map by plain gradient descent on the map itself (spec §3.3, p2p-zero code);
* the cross-attention loss L_c (paper Eq. 14, in p2p-zero's squared form, spec §3.6.1);
* the patch-wise contrastive loss L_e (PatchNCE, paper Eq. 15-16, spec §3.7).

All functions are pure: they take tensors (and a seeded generator where randomness is involved) and never touch
a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError

#: the pyramid stops after the first level whose height is at most this (64 -> 32 -> 16 -> 8: four levels)
AUTOCORR_MIN_SIDE = 8
#: keeps log(Var) finite for a constant map, as in the official code
KL_EPS = 1e-7


# --------------------------------------------------------------------------------------------- regulariser


def draw_shift(side: int, generator: torch.Generator | None = None) -> int:
    """A roll offset uniform in [1, side // 2 - 1]; 1 when that range is empty.

    The lower bound 1 is pix2pix-zero's 2024 fix: an offset of 0 turns the term into a variance penalty.
    """
    high = side // 2  # exclusive
    if high - 1 < 1:
        return 1
    return int(torch.randint(1, high, (1,), generator=generator).item())


#: ``shift_fn(height) -> offset``: where the autocorrelation loss gets each roll offset from
ShiftFn = Callable[[int], int]


def autocorrelation_loss(noise: torch.Tensor, *, generator: torch.Generator | None = None,
                         shift: int | ShiftFn | None = None) -> torch.Tensor:
    """L_ac of spec §3.3: squared mean products of each channel with its rolled self, over an average-pool pyramid.

    As in the official code, every channel of every batch item has its own pyramid and every (channel, level) its
    own offset, drawn in that order (channels outer, levels inner) from the level's *height* (also on non-square
    maps, where the height also decides when the pyramid stops), and both axes roll by that one offset.
    ``shift`` fixes the offset (an int, tests) or draws it (``shift(height) -> int``); by default it is
    :func:`draw_shift` with ``generator``.
    """
    if noise.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) noise map, got shape {tuple(noise.shape)}")
    if shift is None:
        offset = lambda height: draw_shift(height, generator)  # noqa: E731
    elif isinstance(shift, int):
        offset = lambda height: shift  # noqa: E731
    else:
        offset = shift
    total = noise.new_zeros(())
    for item in noise.split(1):
        for channel in item.split(1, dim=1):
            level = channel
            while True:
                height, width = level.shape[-2:]
                if min(height, width) >= 2:  # a 1-pixel axis has nothing to correlate (and nothing to pool)
                    d = offset(height)
                    total = total + (level * level.roll(d, dims=-2)).mean() ** 2
                    total = total + (level * level.roll(d, dims=-1)).mean() ** 2
                if height <= AUTOCORR_MIN_SIDE or min(height, width) < 2:
                    break
                level = F.avg_pool2d(level, kernel_size=2)
    return total


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """L_KL of spec §3.3 over all elements jointly: Var + Mean^2 - 1 - log(Var + 1e-7) (unbiased variance)."""
    var = noise.var()
    return var + noise.mean() ** 2 - 1 - torch.log(var + KL_EPS)


@dataclass(frozen=True)
class RegularizerSettings:
    """pix2pix-zero's defaults: 5 outer steps of (5 autocorrelation steps + 1 KL step), both weights 20."""

    lambda_ac: float = 20.0
    lambda_kl: float = 20.0
    steps: int = 5
    rolls: int = 5

    @property
    def active(self) -> bool:
        return self.steps > 0 and (self.lambda_ac > 0 or self.lambda_kl > 0)


def _grad_of(loss_fn, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        var = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(var), var)
    return grad


def regularize_noise(noise: torch.Tensor, settings: RegularizerSettings = RegularizerSettings(), *,
                     generator: torch.Generator | None = None, shift: int | ShiftFn | None = None) -> torch.Tensor:
    """Push a predicted noise map towards white Gaussian noise by gradient descent on the map (no model involved).

    ``eps <- eps - lambda_ac / rolls * grad L_ac`` (``rolls`` times), then ``eps <- eps - lambda_kl * grad L_KL``,
    all repeated ``steps`` times. Batches are regularised one sample at a time (diffusers PR #2942). Computed in
    fp32 and returned in the input's dtype.
    """
    if not settings.active:
        return noise
    out = []
    for sample in noise.float().split(1):
        eps = sample
        for _ in range(settings.steps):
            if settings.lambda_ac > 0:
                for _ in range(settings.rolls):
                    grad = _grad_of(lambda v: autocorrelation_loss(v, generator=generator, shift=shift), eps)
                    eps = eps - settings.lambda_ac / settings.rolls * grad
            if settings.lambda_kl > 0:
                eps = eps - settings.lambda_kl * _grad_of(kl_divergence, eps)
        out.append(eps.detach())
    return torch.cat(out).to(noise.dtype)


# --------------------------------------------------------------------------------------------- cross-attention


def cross_attention_loss(edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """One layer's term of L_c: squared differences summed over positions and tokens, averaged over (batch, heads).

    Maps are (B, heads, N, tokens). The paper's Eq. 14 writes the plain norm; the squared form (p2p-zero code) has
    a gradient of exactly zero where the maps agree, which a no-op edit relies on.
    """
    diff = edited.float() - reference.to(edited.device, torch.float32)
    return (diff ** 2).sum(dim=(-2, -1)).mean()


# --------------------------------------------------------------------------------------------- PatchNCE


def patch_nce_loss(query: torch.Tensor, keys: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """PatchNCE (paper Eq. 15-16) for S patches at shared positions.

    ``query`` (B, S, C) comes from the reference trajectory (h, stop-gradient), ``keys`` (B, S, C) from the edited
    one; row a of ``keys`` is the positive of query a, the other rows its negatives. Both are L2-normalised over
    channels; the loss is the cross-entropy of q_a . k_b / tau towards b = a, averaged over queries and batch items.
    """
    if query.shape != keys.shape or query.ndim != 3:
        raise ValueError(f"query and keys must both be (B, S, C); got {tuple(query.shape)} and {tuple(keys.shape)}")
    q = F.normalize(query.detach().float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    logits = torch.bmm(q, k.transpose(1, 2)) / tau  # (B, S, S): diagonal = positives
    b, s, _ = logits.shape
    target = torch.arange(s, device=logits.device).expand(b, s)
    return F.cross_entropy(logits.reshape(b * s, s), target.reshape(-1))


def pool_patches(features: torch.Tensor, patch_size: int) -> torch.Tensor | None:
    """(B, C, h, w) features averaged over non-overlapping p x p patches, as (B, h/p * w/p, C); None if too small."""
    if patch_size > min(features.shape[-2:]):
        return None
    pooled = F.avg_pool2d(features, patch_size) if patch_size > 1 else features
    return pooled.flatten(2).transpose(1, 2)


def sample_patch_ids(n_positions: int, n_patches: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """S = min(n_patches, n_positions) distinct positions, drawn from ``generator`` (on the CPU)."""
    return torch.randperm(n_positions, generator=generator)[: min(n_patches, n_positions)]


@dataclass(frozen=True)
class PatchNCESettings:
    """Spec §3.7: 256 patches per layer and patch size, patch sizes {1, 2}, temperature 0.07, no projection head."""

    num_patches: int = 256
    patch_sizes: Sequence[int] = (1, 2)
    tau: float = 0.07

    def __post_init__(self):
        if self.num_patches < 2:
            raise InputError("PatchNCE needs at least 2 patches (one positive and one negative)")
        if not self.patch_sizes or any(int(p) < 1 for p in self.patch_sizes):
            raise InputError(f"patch sizes must be positive integers, got {self.patch_sizes}")
        if self.tau <= 0:
            raise InputError(f"the temperature must be positive, got {self.tau}")
