"""Option checks shared by the CL methods' ``validate()``: one place that names a bad option.

Every method is a dataclass whose init fields (except ``options``) are its options;
``CLMethod.__post_init__`` merges ``options`` into them, calls ``validate()`` and records the
resolved values.
"""

from __future__ import annotations

import math
from typing import Any

from .base import CLMethod


def _bad(method: CLMethod, option: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"method {method.name!r}: option {option!r} must be {expected}, got {value!r}")


def check_int(method: CLMethod, option: str, minimum: int) -> int:
    """An integer >= minimum (bools refused: ``r: true`` in YAML is a typo, not 1)."""
    value = getattr(method, option)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(method, option, f"an integer >= {minimum}", value)
    return value


def check_float(
    method: CLMethod, option: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """A finite number in the interval given (open or closed at each end); stored as float."""
    value = getattr(method, option)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(method, option, "a number", value)
    value = float(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise _bad(method, option, f"in {interval}", value)
    setattr(method, option, value)
    return value


def check_names(method: CLMethod, option: str, *, allow_none: bool) -> tuple[str, ...] | None:
    """A non-empty list of non-empty module-name strings (or None where allowed); stored as a tuple."""
    value = getattr(method, option)
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(method, option, "a non-empty list of module names", value)
    value = tuple(value)
    setattr(method, option, value)
    return value
