"""Which parts of Cross-Image Attention are active at each denoising iteration (spec §3.11), as pure functions.

Iteration ``i`` runs over the N = K - S steps left after skipping. The official code sets its step counter in a
callback *after* each step, so inside the UNet it reads ``max(i - 1, 0)``: every attention window lags one
iteration (``step_index_lag=1``, the default). ``step_index_lag=0`` applies the windows to ``i`` itself (paper).
AdaIN and the segmentation read the counter after the step (``i + 1 - lag``); guidance reads ``i`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GUIDANCE_SCHEDULES = ("linear_to_half", "constant")


@dataclass(frozen=True)
class TransferSchedule:
    num_iterations: int  # N = K - S
    swap_ranges: dict  # layer factor -> [start, end) on the in-UNet counter (SD 1.5: {1: (10, 90), 2: (10, 70)})
    guidance_range: tuple[int, int] = (10, 90)  # inclusive on both ends, on i (the official code's test)
    guidance_scale: float = 3.5
    guidance_schedule: str = "linear_to_half"
    adain_range: tuple[int, int] = (20, 100)  # [start, end) on the after-step counter
    structure_injection: bool = True
    injection_period: int = 5
    injection_limit: int = 40
    step_index_lag: int = 1

    def counter(self, i: int) -> int:
        """The step counter seen inside the UNet during iteration i."""
        return max(i - self.step_index_lag, 0)

    def swap_factors(self, i: int) -> tuple[int, ...]:
        s = self.counter(i)
        return tuple(sorted(f for f, (a, b) in self.swap_ranges.items() if a <= s < b))

    def inject(self, i: int) -> bool:
        s = self.counter(i)
        return self.structure_injection and s % self.injection_period == 0 and s < self.injection_limit

    def guidance_scales(self) -> torch.Tensor:
        """alpha_i for every iteration: the code's linear decay from alpha to max(alpha/2, 1), or constant (paper)."""
        a, n = self.guidance_scale, self.num_iterations
        if self.guidance_schedule == "constant":
            return torch.full((n,), float(a), dtype=torch.float64)
        return torch.linspace(a, max(a / 2, 1.0), n, dtype=torch.float64)

    def guidance(self, i: int) -> float | None:
        """The appearance-guidance scale at iteration i, or None where the swap pass is used alone."""
        lo, hi = self.guidance_range
        if self.guidance_scale <= 1 or not lo <= i <= hi:
            return None
        return float(self.guidance_scales()[i])

    def after_step(self, i: int) -> int:
        return i + 1 - self.step_index_lag

    def capture(self, i: int) -> bool:
        """Attention maps for self-segmentation are recorded during this iteration."""
        return self.counter(i) == self.adain_range[0] - 1

    def masks_ready(self, i: int) -> bool:
        return self.after_step(i) == self.adain_range[0]

    def adain(self, i: int) -> bool:
        """AdaIN is applied to OUT after iteration i's update."""
        return self.adain_range[0] <= self.after_step(i) < self.adain_range[1]

    def activity(self, i: int) -> dict:
        return {"swap": self.swap_factors(i), "inject": bool(self.swap_factors(i)) and self.inject(i),
                "guidance": self.guidance(i), "capture": self.capture(i), "adain": self.adain(i)}
