"""Option checks shared by the CL methods' ``validate()``: one place that names a bad option.

Every method is a dataclass whose init fields (except ``options``) are its options;
``CLMethod.__post_init__`` merges ``options`` into them, calls ``validate()`` and records the
resolved values. The checks are ``migu.validation``'s, with the field named
``method 'ewc': option 'ewc_lambda'``, so a message reads
``method 'ewc': option 'ewc_lambda' must be a number >= 0, got -1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..validation import check_bool as _bool
from ..validation import check_choice as _choice
from ..validation import check_int as _int
from ..validation import check_number as _number
from ..validation import check_strings as _strings
from .base import CLMethod


def option_field(method: CLMethod, option: str) -> str:
    """How a message names an option: ``method 'ewc': option 'ewc_lambda'``."""
    return f"method {method.name!r}: option {option!r}"


def check_int(method: CLMethod, option: str, minimum: int) -> int:
    """An integer >= minimum (bools refused: ``r: true`` in YAML is a typo, not 1)."""
    return _int(getattr(method, option), option_field(method, option), minimum=minimum)


def check_float(
    method: CLMethod, option: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """A finite number in the interval given (open or closed at each end; ``math.inf``: no upper
    bound); stored as float."""
    value = _number(
        getattr(method, option),
        option_field(method, option),
        low=None if low == -math.inf else low,
        high=None if high == math.inf else high,
        low_open=low_open,
        high_open=high_open,
    )
    setattr(method, option, value)
    return value


def check_bool(method: CLMethod, option: str) -> bool:
    """True or false (not 0/1, not "yes")."""
    return _bool(getattr(method, option), option_field(method, option))


def check_choice(method: CLMethod, option: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    return _choice(getattr(method, option), option_field(method, option), choices)


def check_names(method: CLMethod, option: str, *, allow_none: bool) -> tuple[str, ...] | None:
    """A non-empty list of non-empty module-name strings (or None where allowed); stored as a tuple."""
    value = _strings(
        getattr(method, option), option_field(method, option), what="module names", none=allow_none
    )
    if value is not None:
        setattr(method, option, value)
    return value
