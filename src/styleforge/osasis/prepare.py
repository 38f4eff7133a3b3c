"""OSASIS stage 0: a photorealistic counterpart I_A^style of the artwork (paper A.1; official ``gen_style_domA.py``).

SDEdit with the P2-weighting pixel DDPM: resize the artwork to 256, noise it with Eq. 9 to index floor(N r) of
guided-diffusion's fractional N-step grid (N = 50, r = 0.5: t = 510), denoise ancestrally with the learned
variance and clipped x0 (Eq. 10, guided-diffusion's posterior form) down to index 0, for n candidates; keep the
one minimising l1_weight * mean|x - I_B| + lpips_weight * LPIPS(x, I_B) (code weights 10 : 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..errors import InputError
from .models import ADMUNet
from .schedule import PLAN_KINDS, NoiseSchedule, fractional_grid, q_sample


@dataclass
class PrepareSettings:
    """Defaults: the official script except the candidate count (paper 30; official README ``--n 1``)."""

    num_candidates: int = 30
    steps: int = 50
    t0_ratio: float = 0.5
    plan: str = "official"  # official: noise to index floor(N r), denoise from index floor(N r) - 1
    l1_weight: float = 10.0
    lpips_weight: float = 1.0
    seed: int = 1
    batch_size: int = 8
    clamp: bool = True

    def __post_init__(self):
        if self.plan not in PLAN_KINDS:
            raise InputError(f"plan must be one of {PLAN_KINDS}, got {self.plan!r}")
        from .. import validation as V

        V.check_all(num_candidates=(self.num_candidates, V.count), steps=(self.steps, V.steps),
                    t0_ratio=(self.t0_ratio, V.open_fraction), l1_weight=(self.l1_weight, V.non_negative),
                    lpips_weight=(self.lpips_weight, V.non_negative), batch_size=(self.batch_size, V.count))

    def to_dict(self) -> dict:
        return asdict(self)


class RespacedDDPM:
    """guided-diffusion's ``SpacedDiffusion`` quantities on a sub-grid of the 1000-step linear schedule."""

    def __init__(self, timesteps: list[int], base: NoiseSchedule | None = None):
        base = base or NoiseSchedule.linear()
        self.timesteps = timesteps
        acp = base.alphas_cumprod[timesteps]
        prev = torch.cat([acp.new_ones(1), acp[:-1]])
        self.alphas_cumprod, self.alphas_cumprod_prev = acp, prev
        self.betas = 1 - acp / prev
        self.posterior_variance = self.betas * (1 - prev) / (1 - acp)
        # the first posterior variance is 0: guided-diffusion substitutes the second one in the log
        self.posterior_log_variance_clipped = torch.log(torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.coef_x0 = self.betas * prev.sqrt() / (1 - acp)
        self.coef_xt = (1 - prev) * (1 - self.betas).sqrt() / (1 - acp)

    def p_sample(self, model: ADMUNet, x: torch.Tensor, i: int, noise: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """x_{i-1} ~ N(posterior mean(x0_hat, x_i), learned variance) (Eq. 10 in guided-diffusion's form)."""
        out = model(x, self.timesteps[i])
        c = x.shape[1]
        eps, v = out[:, :c], out[:, c:]
        f = lambda a: a.to(x.dtype)  # noqa: E731
        acp = f(self.alphas_cumprod[i])
        x0 = (x - (1 - acp).sqrt() * eps) / acp.sqrt()
        if clamp:
            x0 = x0.clamp(-1, 1)
        mean = f(self.coef_x0[i]) * x0 + f(self.coef_xt[i]) * x
        if i == 0:
            return mean
        frac = (v + 1) / 2
        log_var = frac * f(self.betas[i].log()) + (1 - frac) * f(self.posterior_log_variance_clipped[i])
        return mean + (0.5 * log_var).exp() * noise


@torch.no_grad()
def photo_counterparts(ddpm: ADMUNet, style: torch.Tensor, settings: PrepareSettings, *, progress=None) -> torch.Tensor:
    """n SDEdit candidates (n, 3, H, W) of the artwork ``style`` (1, 3, H, W) in [-1, 1]."""
    s = settings
    diffusion = RespacedDDPM(fractional_grid(s.steps))
    start = int(s.steps * s.t0_ratio)
    first = start - 1 if s.plan == "official" else start  # the released script denoises from one index lower
    g = torch.Generator(device=style.device).manual_seed(s.seed)
    outs = []
    for i0 in range(0, s.num_candidates, s.batch_size):
        n = min(s.batch_size, s.num_candidates - i0)
        x0 = style.expand(n, -1, -1, -1)
        x = q_sample(x0, diffusion.alphas_cumprod[start], torch.randn(x0.shape, generator=g, device=style.device, dtype=style.dtype))
        indices = range(first, -1, -1)
        for i in progress(indices) if progress else indices:
            x = diffusion.p_sample(ddpm, x, i, torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype), s.clamp)
        outs.append(x.clamp(-1, 1))
    return torch.cat(outs)


def selection_scores(candidates: torch.Tensor, style: torch.Tensor, perceptual: Callable | None,
                     settings: PrepareSettings) -> torch.Tensor:
    """l1_weight * mean|x - I_B| + lpips_weight * LPIPS(x, I_B) per candidate (lower is better)."""
    target = style.expand_as(candidates)
    score = settings.l1_weight * (candidates - target).abs().flatten(1).mean(1)
    if settings.lpips_weight:
        if perceptual is None:
            raise InputError("the selection score uses LPIPS (lpips_weight > 0) but no perceptual network was given")
        with torch.no_grad():
            score = score + settings.lpips_weight * perceptual(candidates, target).flatten().to(score)
    return score


def prepare_style_photo(ddpm: ADMUNet, style: torch.Tensor, perceptual: Callable | None,
                        settings: PrepareSettings | None = None, *, progress=None):
    """(best candidate (1, 3, H, W), all candidates, their scores)."""
    s = settings or PrepareSettings()
    cands = photo_counterparts(ddpm, style, s, progress=progress)
    scores = selection_scores(cands, style, perceptual, s)
    return cands[int(scores.argmin())][None], cands, scores
