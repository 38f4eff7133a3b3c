"""Small pure functions for DDIM-grid sampling: noise prediction, the DDIM step, the edit-friendly DDPM step.

Timesteps and the cumulative alphas come from a diffusers scheduler (its ``alphas_cumprod`` and spacing), so any
DDIM-compatible configuration works. Notation: ``a_t`` is alpha-bar at the current timestep, ``a_prev`` at the
next, less noisy one.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from .prompts import Conditioning

#: ``eps_fn(x, t) -> predicted noise``; built by :func:`noise_predictor` or by a method with its own logic.
EpsFn = Callable[[torch.Tensor, torch.Tensor | int], torch.Tensor]


def timesteps_for(scheduler, num_inference_steps: int) -> torch.Tensor:
    """The scheduler's sampling grid, noisiest first (SD 1.5, 100 steps: 991, 981, ..., 1)."""
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps.clone()


def step_ratio(scheduler, num_inference_steps: int) -> int:
    return scheduler.config.num_train_timesteps // num_inference_steps


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    """alpha-bar at ``t``; negative ``t`` (the step after the last) reads the scheduler's final value."""
    t = int(t)
    if t < 0:
        return scheduler.final_alpha_cumprod.clone() if torch.is_tensor(scheduler.final_alpha_cumprod) else torch.tensor(scheduler.final_alpha_cumprod)
    return scheduler.alphas_cumprod[t].clone()


def alpha_pair(scheduler, t: int | torch.Tensor, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha-bar at t, alpha-bar at the previous grid point t - ratio)."""
    return alpha_bar(scheduler, t), alpha_bar(scheduler, int(t) - step_ratio(scheduler, num_inference_steps))


def predict_x0(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from level ``a_t`` to ``a_prev``; also the inverse step with the levels swapped."""
    return a_prev.sqrt() * predict_x0(x, eps, a_t) + (1 - a_prev).sqrt() * eps


def ddpm_variance(a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """DDIM's sigma_t^2 at eta = 1 (the DDPM posterior variance on the sub-sampled grid)."""
    return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def ddpm_mean(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """The deterministic part of the eta-DDIM step. The official edit-friendly code uses eta*sigma^2 under the root."""
    var = ddpm_variance(a_t, a_prev)
    return a_prev.sqrt() * predict_x0(x, eps, a_t) + (1 - a_prev - eta * var).clamp(min=0).sqrt() * eps


def ddpm_step(x, eps, a_t, a_prev, z: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Edit-friendly DDPM step: mean + eta * sigma_t * z with a given noise map z (cross-image attention §3.8)."""
    return ddpm_mean(x, eps, a_t, a_prev, eta) + eta * ddpm_variance(a_t, a_prev).sqrt() * z


def noise_predictor(unet, cond: Conditioning, *, uncond: Conditioning | None = None, guidance_scale: float = 1.0,
                    cross_attention_kwargs: dict | None = None) -> EpsFn:
    """eps(x, t) for a batch of latents: conditional only, or classifier-free guidance in one batched call.

    ``cond`` holds one row per latent row (or one row shared by all).
    """
    use_cfg = uncond is not None and guidance_scale != 1.0

    def eps_fn(x: torch.Tensor, t) -> torch.Tensor:
        b = x.shape[0]
        if not use_cfg:
            return unet(x, t, **cond.unet_kwargs(b), cross_attention_kwargs=cross_attention_kwargs).sample
        both = Conditioning.cat([_rows(uncond, b), _rows(cond, b)])
        e_u, e_c = unet(torch.cat([x, x]), t, **both.unet_kwargs(), cross_attention_kwargs=cross_attention_kwargs).sample.chunk(2)
        return e_u + guidance_scale * (e_c - e_u)

    return eps_fn


def _rows(c: Conditioning, b: int) -> Conditioning:
    return c if len(c) == b else c.repeat(b // len(c))


def ddim_sample(eps_fn: EpsFn, x: torch.Tensor, scheduler, timesteps: torch.Tensor, num_inference_steps: int,
                *, progress=None) -> torch.Tensor:
    """Run DDIM (eta = 0) from ``x`` at ``timesteps[0]`` down the given grid."""
    for t in progress(timesteps) if progress else timesteps:
        a_t, a_prev = alpha_pair(scheduler, t, num_inference_steps)
        x = ddim_step(x, eps_fn(x, t), a_t, a_prev)
    return x


def edit_friendly_sample(eps_fn: EpsFn, x: torch.Tensor, scheduler, timesteps: torch.Tensor, noise: torch.Tensor,
                         num_inference_steps: int, *, eta: float = 1.0, progress=None) -> torch.Tensor:
    """Run the edit-friendly DDPM sampler from ``x`` with one stored noise map per step (``noise[i]`` at ``timesteps[i]``)."""
    for i, t in enumerate(progress(timesteps) if progress else timesteps):
        a_t, a_prev = alpha_pair(scheduler, t, num_inference_steps)
        x = ddpm_step(x, eps_fn(x, t), a_t, a_prev, noise[i].to(x), eta)
    return x


@contextlib.contextmanager
def count_unet_calls(unet=None) -> Iterator[dict]:
    """Counts UNet forward calls and the latent rows they processed: ``{"calls": n, "rows": m}``.

    ``unet=None`` counts every diffusers ``UNet2DConditionModel`` of the process, also ones loaded inside the
    block (the batch runner counts whole commands this way).
    """
    counts = {"calls": 0, "rows": 0}

    def count(sample):
        counts["calls"] += 1
        counts["rows"] += sample.shape[0]

    if unet is not None:
        handle = unet.register_forward_pre_hook(lambda m, args, kwargs: count(args[0] if args else kwargs["sample"]),
                                                with_kwargs=True)
    else:
        from diffusers import UNet2DConditionModel
        from torch.nn.modules.module import register_module_forward_hook

        def hook(module, args, kwargs, output):
            if isinstance(module, UNet2DConditionModel):
                count(args[0] if args else kwargs["sample"])

        handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()
