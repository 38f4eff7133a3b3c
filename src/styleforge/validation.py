"""Checks of numeric options, shared by the command line and the Python API.

Each check is an object that works twice: as an ``argparse`` ``type=`` (it parses the text and refuses a bad
value with :class:`argparse.ArgumentTypeError`) and as a check of a Python value (``check(value, "name")`` raises
:class:`~styleforge.errors.InputError`). Both say the same words: the option and the accepted range. The CLI
parsers are the one description of each method's options, so anything that reads them (a web form, a batch
file) finds the range in the check's attributes (``minimum``, ``maximum``, ``kind``).

This module imports nothing heavy: CLI modules use it at import time.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from .errors import InputError

#: Largest working side (pixels) any method accepts: bigger sizes take hours or exhaust memory, never finish usefully.
MAX_WORKING_SIDE = 4096
#: Largest long-side / short-side ratio of a working image (beyond it the short side shrinks to nothing or the long
#: side explodes when the short side is scaled to the model's size).
MAX_ASPECT_RATIO = 16.0


def option_name(name: str) -> str:
    """How a Python keyword is named in a refusal (the keyword itself; the CLI's argparse names the flag)."""
    return name


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Number:
    """A finite int or float, optionally within [minimum, maximum] (``None`` = unbounded on that side).

    ``optional=True`` also accepts ``None`` (and the text ``none`` on the command line).
    """

    def __init__(self, kind: type = float, minimum: float | None = None, maximum: float | None = None, *,
                 optional: bool = False, what: str | None = None):
        self.kind, self.minimum, self.maximum, self.optional = kind, minimum, maximum, optional
        self.what = what
        self.__name__ = self.describe()  # argparse names a failing type by its __name__

    def describe(self) -> str:
        noun = self.what or ("an integer" if self.kind is int else "a finite number")
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"{noun} in [{_fmt(lo)}, {_fmt(hi)}]"
        if lo is not None:
            return f"{noun} >= {_fmt(lo)}"
        if hi is not None:
            return f"{noun} <= {_fmt(hi)}"
        return noun

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (``None`` if it is accepted)."""
        if value is None:
            return None if self.optional else "is required"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy and torch scalars
            except (TypeError, ValueError):
                return f"must be {self.describe()}, got {value!r}"
        if self.kind is int and (isinstance(value, float) and not float(value).is_integer()):
            return f"must be {self.describe()}, got {value!r}"
        if not math.isfinite(value):
            return f"must be {self.describe()}, got {value}"
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return f"must be {self.describe()}, got {_fmt(value)}"
        return None

    def check(self, value: Any, name: str) -> Any:
        """Return ``value`` (as ``kind``), or raise :class:`InputError` naming ``name``."""
        why = self.problem(value)
        if why:
            raise InputError(f"{option_name(name)} {why}")
        return None if value is None else self.kind(value)

    def __call__(self, text: str) -> Any:
        if self.optional and text.strip().lower() in ("none", ""):
            return None
        try:
            value = int(text) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        why = self.problem(value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value


class Pair:
    """``"START,END"`` of two numbers, each checked by ``item``; ``ordered`` requires START <= END."""

    def __init__(self, item: Number, *, ordered: bool = True, labels: tuple[str, str] = ("START", "END")):
        self.item, self.ordered, self.labels = item, ordered, labels
        self.minimum, self.maximum, self.kind = item.minimum, item.maximum, item.kind
        self.__name__ = self.describe()

    def describe(self) -> str:
        a, b = self.labels
        order = f" with {a} <= {b}" if self.ordered else ""
        return f"{a},{b}: two values, each {self.item.describe()}{order}"

    def problem(self, value: Any) -> str | None:
        try:
            a, b = value
        except (TypeError, ValueError):
            return f"must be {self.describe()}, got {value!r}"
        for x in (a, b):
            why = self.item.problem(x)
            if why:
                return f"must be {self.describe()}, got {_fmt(a)},{_fmt(b)}"
        if self.ordered and a > b:
            return f"must have {self.labels[0]} <= {self.labels[1]}, got {_fmt(a)},{_fmt(b)}"
        return None

    def check(self, value: Any, name: str) -> Any:
        if value is None:
            return None
        why = self.problem(value)
        if why:
            raise InputError(f"{option_name(name)} {why}")
        return tuple(self.item.kind(x) for x in value)

    def __call__(self, text: str) -> tuple:
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            a, b = (int(x) if self.item.kind is int else float(x) for x in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        why = self.problem((a, b))
        if why:
            raise argparse.ArgumentTypeError(why)
        return a, b


# The checks every command uses (one object each, so the same words appear everywhere).
finite = Number(float)
non_negative = Number(float, 0)
positive = Number(float, 1e-12, what="a number > 0")
fraction = Number(float, 0, 1)
open_fraction = Number(float, 1e-6, 1, what="a fraction")  # a depth or ratio that must not be 0 (t0 / T)
count = Number(int, 1)  # how many of something: at least one
non_negative_int = Number(int, 0)  # an index, an offset, or a "0 = off" interval
any_int = Number(int)
side = Number(int, 8, MAX_WORKING_SIDE, what="a size in pixels")  # an explicit working width/height/size
optional_side = Number(int, 8, MAX_WORKING_SIDE, optional=True, what="a size in pixels")
optional_count = Number(int, 1, optional=True)
optional_finite = Number(float, optional=True)
optional_non_negative = Number(float, 0, optional=True)
optional_positive = Number(float, 1e-12, optional=True, what="a number > 0")
steps = Number(int, 1, 10_000)
fraction_pair = Pair(fraction)
int_pair = Pair(non_negative_int)


class SideOrPair:
    """An optional working size: one side, or a (width, height) pair (a pipeline's ``size``), each side a ``side``."""

    def check(self, value: Any, name: str) -> Any:
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise InputError(f"{option_name(name)} must be one side or (width, height), got {value!r}")
            return tuple(side.check(v, name) for v in value)
        return optional_side.check(value, name)


optional_size = SideOrPair()


def check_all(**named: tuple[Any, "Number | Pair"]) -> None:
    """For Python entry points: ``check_all(strength=(strength, fraction), steps=(steps, V.steps))``."""
    for name, (value, rule) in named.items():
        rule.check(value, name)


def check_working_size(width: int, height: int, what: str = "working image") -> None:
    """Refuse a working size whose side or aspect ratio is beyond the limits (before any memory is allocated)."""
    if min(width, height) < 1:
        raise InputError(f"{what} would be {width}x{height} pixels; use a larger --size or image")
    if max(width, height) > MAX_WORKING_SIDE:
        raise InputError(f"{what} would be {width}x{height} pixels, over the limit of {MAX_WORKING_SIDE} per side; "
                         "pass a smaller --size/--width/--height or crop the image")
    check_aspect(width, height, what)


def check_aspect(width: int, height: int, what: str = "image") -> None:
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(f"{what} is {width}x{height} pixels (aspect ratio {ratio:.0f}:1), over the limit of "
                         f"{MAX_ASPECT_RATIO:g}:1; crop it first")
