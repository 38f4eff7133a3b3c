"""Settings of the full-resolution lift (:mod:`styleforge.region.lift`): defaults, ranges and their check.

Kept apart from the lift itself so the command line can read them without importing torch. The defaults were
chosen with ``benchmarks/bench_region.py fullres --grid`` (see the README's region section).
"""

from __future__ import annotations

from ..errors import InputError
from ..validation import Number, positive

PRIORS = ("global", "zero")
DEFAULT_RADIUS = 1  # box window radius, working-size pixels
DEFAULT_EPS = 1e-2  # regulariser, colours in [0, 1]
DEFAULT_SIGMA = 6.0  # pre-blur of both images before the fit, working-size pixels
MAX_RADIUS, MAX_SIGMA = 64, 100.0  # working-size pixels; the working image is a few hundred pixels at most
# the accepted ranges: one definition for the command line's flags and the Python API's checks
RADIUS_RANGE = Number(int, 0, MAX_RADIUS)
SIGMA_RANGE = Number(float, 0, MAX_SIGMA)
FEATHER_RANGE = Number(float, 0, 1000)  # the mask's feathering, and the paste-back edge's at native output size


def check_lift_settings(radius, eps, prior: str = "global", sigma: float = DEFAULT_SIGMA) -> tuple[int, float, float]:
    """(radius, eps, sigma) checked with the words and ranges of the command line's flags."""
    if prior not in PRIORS:
        raise InputError(f"lift_prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    return (RADIUS_RANGE.check(radius, "lift_radius"), positive.check(eps, "lift_eps"),
            SIGMA_RANGE.check(sigma, "lift_sigma"))
