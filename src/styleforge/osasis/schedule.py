"""Noise schedules, timestep grids, the encode/decode step plans and the DDIM transitions OSASIS uses.

Convention (spec §3.0): T = 1000, alpha-bar_t = prod_{s<=t} (1 - beta_s) with 0-based t; the paper's alpha_t is
this alpha-bar. The step arithmetic is the shared :mod:`styleforge.diffusion.sampling` (``predict_x0``,
``ddim_step``) on the schedule's ``alphas_cumprod`` (float64, exposed like a diffusers scheduler's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..diffusion.sampling import ddim_step, predict_x0
from ..errors import InputError

PLAN_KINDS = ("official", "consistent")
SPN_TIME_INPUTS = ("grid_index", "timestep")
CLEAN = -1  # "timestep" of the clean image when decoding from the lowest grid point (alpha-bar := 1)


class NoiseSchedule:
    """A discrete schedule in float64. Quacks like a diffusers scheduler for ``sampling.alpha_bar``."""

    def __init__(self, betas: torch.Tensor):
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
        self.num_train_timesteps = len(betas)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DiffAE / guided-diffusion ``linear`` (scaled to T as they do)."""
        scale = 1000 / T
        return cls(torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64))

    @classmethod
    def constant(cls, T: int = 1000, beta: float = 0.008) -> "NoiseSchedule":
        """DiffAE's latent ``const0.008``."""
        return cls(torch.full((T,), beta, dtype=torch.float64))

    def alpha_bar(self, t: int) -> torch.Tensor:
        return self.final_alpha_cumprod if t == CLEAN else self.alphas_cumprod[int(t)]

    def to_diffusers(self):
        """The same schedule as a diffusers ``DDIMScheduler`` (float32 inside diffusers)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler(num_train_timesteps=self.num_train_timesteps, trained_betas=self.betas.float().numpy(),
                             clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")


def ddim_grid(n: int, T: int = 1000) -> list[int]:
    """guided-diffusion ``space_timesteps(T, "ddimN")``: integer stride, starts at 0 (ddim50: 0, 20, ..., 980)."""
    for stride in range(1, T):
        if len(range(0, T, stride)) == n:
            return list(range(0, T, stride))
    raise InputError(f"no integer stride gives exactly {n} steps of a {T}-step process (choose a divisor-friendly count)")


def fractional_grid(n: int, T: int = 1000) -> list[int]:
    """guided-diffusion ``space_timesteps(T, [n])``: round(i (T-1)/(n-1)) (P2 "50": 0, 20, ..., 510, ..., 999)."""
    if n < 2 or n > T:
        raise InputError(f"step count must be in 2..{T}, got {n}")
    stride = (T - 1) / (n - 1)
    steps, cur = [], 0.0
    for _ in range(n):
        steps.append(round(cur))
        cur += stride
    return steps


@dataclass(frozen=True)
class TimestepPlan:
    """Which grid points are visited when encoding to t0 and decoding back (spec §3.0, §10.1).

    ``official``: encode over ``ddim{encode_steps}`` indices 0..floor(r N)-1 (ends at t0), decode over
    ``ddim{decode_steps}`` from index N - floor(N (1-r)) - 1, one grid stride below t0 (the released code's
    off-by-one: 450 in training, 480 at inference). ``consistent``: decoding starts at t0 itself.
    """

    t0_ratio: float = 0.5
    encode_steps: int = 100
    decode_steps: int = 50
    kind: str = "official"
    T: int = 1000

    def __post_init__(self):
        if self.kind not in PLAN_KINDS:
            raise InputError(f"timestep plan must be one of {PLAN_KINDS}, got {self.kind!r}")
        if not 0 < self.t0_ratio < 1:
            raise InputError(f"t0 ratio must be in (0, 1), got {self.t0_ratio}")
        self.decode_start_index()  # both grids exist and (consistent) share t0: refuse now, not mid-run

    @property
    def encode_grid(self) -> list[int]:
        return ddim_grid(self.encode_steps, self.T)

    @property
    def decode_grid(self) -> list[int]:
        return ddim_grid(self.decode_steps, self.T)

    @property
    def t0(self) -> int:
        """The timestep the encoder ends at."""
        return self.encode_grid[int(self.encode_steps * self.t0_ratio)]

    def encode_transitions(self) -> list[tuple[int, int, int]]:
        """(grid index k, t_from, t_to); the clean image is the state at t = 0."""
        g = self.encode_grid
        return [(k, g[k], g[k + 1]) for k in range(int(self.encode_steps * self.t0_ratio))]

    def decode_start_index(self) -> int:
        g = self.decode_grid
        if self.kind == "official":
            return self.decode_steps - int(self.decode_steps * (1 - self.t0_ratio)) - 1
        if self.t0 not in g:
            raise InputError(f"consistent plan: t0 = {self.t0} is not on the {self.decode_steps}-step decode grid "
                             f"(stride {g[1] - g[0]}); choose step counts whose grids share t0")
        return g.index(self.t0)

    def decode_transitions(self) -> list[tuple[int, int, int]]:
        """(grid index k, t_from, t_to), t_to = CLEAN for the last step."""
        g = self.decode_grid
        return [(k, g[k], g[k - 1] if k > 0 else CLEAN) for k in range(self.decode_start_index(), -1, -1)]

    def to_dict(self) -> dict:
        return asdict(self)


def ddim_transition(x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor,
                    clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM move from level ``a_from`` to ``a_to`` (encoding if a_to < a_from, Eqs. 7/11; decoding, Eq. 8).

    Returns (next state, x0_hat). With ``clamp`` x0_hat is clipped to [-1, 1] and eps re-derived from it, as
    the official sampler does (``clip_denoised=True``).
    """
    a_from = a_from.to(x.dtype) if torch.is_tensor(a_from) else torch.tensor(a_from, dtype=x.dtype)
    a_to = a_to.to(x.dtype) if torch.is_tensor(a_to) else torch.tensor(a_to, dtype=x.dtype)
    x0 = predict_x0(x, eps, a_from)
    if clamp:
        x0 = x0.clamp(-1, 1)
        eps = (x - a_from.sqrt() * x0) / (1 - a_from).sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps, x0
    return ddim_step(x, eps, a_from, a_to), x0


EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_run(eps_fn: EpsFn, x: torch.Tensor, schedule: NoiseSchedule, transitions, *, clamp: bool = True,
             progress=None) -> torch.Tensor:
    """Apply ``ddim_transition`` along ``transitions`` [(k, t_from, t_to), ...] (encoding or decoding)."""
    for _, t_from, t_to in progress(transitions) if progress else transitions:
        x, _ = ddim_transition(x, eps_fn(x, t_from), schedule.alpha_bar(t_from), schedule.alpha_bar(t_to), clamp)
    return x


def sampling_transitions(n: int, T: int = 1000) -> list[tuple[int, int, int]]:
    """Full DDIM sampling from x_T over ``ddim{n}`` (indices n-1..0), as DiffAE's ``sample``."""
    g = ddim_grid(n, T)
    return [(k, g[k], g[k - 1] if k > 0 else CLEAN) for k in range(n - 1, -1, -1)]


def q_sample(x0: torch.Tensor, a_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process (paper Eq. 9): sqrt(a) x0 + sqrt(1 - a) z."""
    a_t = a_t.to(x0.dtype)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def spn_time(kind: str, k: int, t: int) -> int:
    """The SPN's time input: the sampler's grid index (official) or the true timestep (spec §10.2)."""
    if kind not in SPN_TIME_INPUTS:
        raise InputError(f"SPN time input must be one of {SPN_TIME_INPUTS}, got {kind!r}")
    return k if kind == "grid_index" else t
