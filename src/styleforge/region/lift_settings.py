"""Settings of the full-resolution lift (:mod:`styleforge.region.lift`): defaults, ranges and their check.

Kept apart from the lift itself so the command line can read them without importing torch. The defaults were
chosen with ``benchmarks/bench_region.py fullres --grid`` (see the README's region section).
"""

from __future__ import annotations

from ..errors import InputError

PRIORS = ("global", "zero")
DEFAULT_RADIUS = 1  # box window radius, working-size pixels
DEFAULT_EPS = 1e-2  # regulariser, colours in [0, 1]
DEFAULT_SIGMA = 6.0  # pre-blur of both images before the fit, working-size pixels
MAX_RADIUS, MAX_SIGMA = 64, 100.0  # working-size pixels; the working image is a few hundred pixels at most


def check_lift_settings(radius, eps, prior: str = "global", sigma: float = DEFAULT_SIGMA) -> tuple[int, float, float]:
    """(radius, eps, sigma) checked with the words and ranges of the command line's flags."""
    from ..validation import Number, positive

    if prior not in PRIORS:
        raise InputError(f"lift_prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    return (Number(int, 0, MAX_RADIUS).check(radius, "lift_radius"), positive.check(eps, "lift_eps"),
            Number(float, 0, MAX_SIGMA).check(sigma, "lift_sigma"))
