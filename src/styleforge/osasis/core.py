"""Steps shared by training (stage 1) and stylization (stage 2): sampling codes and faces, encoding to t0,
and the SPN-augmented decode step (paper Eqs. 12-14)."""

from __future__ import annotations

import torch

from .models import DiffAEAutoencoder, LatentDDIMNet
from .schedule import NoiseSchedule, TimestepPlan, ddim_run, ddim_transition, sampling_transitions, spn_time


@torch.no_grad()
def sample_semantic_codes(latent_net: LatentDDIMNet, n: int, *, steps: int = 200, generator=None,
                          schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """z_sem ~ latent DDIM (eta 0, ``ddim{steps}``, no clamping) from N(0, I), then de-normalised."""
    p = next(latent_net.parameters())
    schedule = schedule or NoiseSchedule.constant()
    z = torch.randn(n, latent_net.config.num_channels, generator=generator, device=p.device, dtype=p.dtype)
    z = ddim_run(lambda x, t: latent_net(x, t), z, schedule, sampling_transitions(steps, schedule.num_train_timesteps),
                 clamp=False)
    return latent_net.denormalize(z)


@torch.no_grad()
def initial_noise(unet: DiffAEAutoencoder, n: int, generator=None) -> torch.Tensor:
    p = next(unet.parameters())
    size = unet.config.image_size
    return torch.randn(n, unet.config.in_channels, size, size, generator=generator, device=p.device, dtype=p.dtype)


@torch.no_grad()
def generate_photos(unet: DiffAEAutoencoder, z: torch.Tensor, *, steps: int = 20, generator=None,
                    schedule: NoiseSchedule | None = None, clamp: bool = True, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """Domain-A faces for training: DDIM sampling of eps_A from x_T ~ N(0, I) conditioned on ``z``."""
    schedule = schedule or NoiseSchedule.linear()
    x = initial_noise(unet, z.shape[0], generator) if x_T is None else x_T
    return ddim_run(lambda x, t: unet(x, t, z), x, schedule, sampling_transitions(steps, schedule.num_train_timesteps),
                    clamp=clamp).clamp(-1, 1)


@torch.no_grad()
def encode_to_t0(unet: DiffAEAutoencoder, images: torch.Tensor, z: torch.Tensor, plan: TimestepPlan,
                 schedule: NoiseSchedule, *, clamp: bool = True) -> torch.Tensor:
    """Deterministic DDIM encoding of clean images to x_{t0} with eps_A and their own code (Eqs. 7, 11)."""
    return ddim_run(lambda x, t: unet(x, t, z), images, schedule, plan.encode_transitions(), clamp=clamp)


def spn_decode_step(unet_b: DiffAEAutoencoder, spn, x: torch.Tensor, image: torch.Tensor, k: int, t: int, t_next: int,
                    schedule: NoiseSchedule, *, spn_weight: float, spn_time_input: str = "grid_index",
                    cond: torch.Tensor, style_cond: torch.Tensor | None = None, styled_levels=(),
                    style_middle: bool = False, clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x'_t = x_t + lambda SPN(I, tau) (Eq. 12), then a DDIM step of eps_B at x'_t (Eqs. 13-14).

    Returns (x at t_next, x0_hat). The SPN sees the clean domain-A image, never x_t.
    """
    shifted = x if spn is None else x + spn_weight * spn(image, spn_time(spn_time_input, k, t))
    eps = unet_b(shifted, t, cond, style_cond=style_cond, styled_levels=styled_levels, style_middle=style_middle)
    return ddim_transition(shifted, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_next), clamp)
