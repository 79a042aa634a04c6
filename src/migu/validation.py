"""One validation helper for every setting the package reads: run configs, MIGU's config, method
options, model and evaluator settings.

Every check raises :class:`ValidationError` (a ``ValueError``) with one message shape that names
the field: ``<field> must be <what is allowed>, got <value>``. ``build_dataclass`` turns a plain
mapping (YAML) into a dataclass, checking every field against its type annotation before the
dataclass's own range checks run, so a wrong type fails naming its dotted key.

Standard library only: the engine, the method registry and the light command-line paths use it
without loading torch. Booleans are never integers or numbers here (``r: true`` in YAML is a typo,
not 1), and NaN or infinity is never a setting (an lr of NaN passes every range check).
"""

from __future__ import annotations

import contextlib
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Literal


class ValidationError(ValueError):
    """A bad setting; the message names the field."""


class ConfigError(ValidationError):
    """A bad config file, field or override (what ``migu run`` and the sweep files report)."""


def invalid(field: str, expected: str, value: Any) -> ValidationError:
    """The one message shape: ``field must be expected, got value``."""
    return ValidationError(f"{field} must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_int(
    value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None, none: bool = False
) -> Any:
    """An integer in ``[minimum, maximum]`` (either bound optional), or None where ``none``."""
    if value is None and none:
        return None
    ok = _is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            what = f"an integer in [{minimum}, {maximum}]"
        elif minimum == 1:
            what = "a positive integer"
        elif minimum is not None:
            what = f"an integer >= {minimum}"
        elif maximum is not None:
            what = f"an integer <= {maximum}"
        else:
            what = "an integer"
        raise invalid(field, what + (" or null" if none else ""), value)
    return value


def interval(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``[0, 1)``, ``> 0``, ``>= 0``: an interval in words."""
    if low is not None and high is not None:
        return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def check_number(
    value: Any,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    none: bool = False,
) -> Any:
    """A finite number (an int is accepted and returned as float) in the interval given, or None
    where ``none``."""
    if value is None and none:
        return None
    where = interval(low, high, low_open, high_open)
    what = "a number" + (f" in {where}" if where.startswith(("[", "(")) else f" {where}" if where else "")
    what += " or null" if none else ""
    if not _is_number(value):
        raise invalid(field, what, value)
    v = float(value)
    ok_low = low is None or (v > low if low_open else v >= low)
    ok_high = high is None or (v < high if high_open else v <= high)
    if not (ok_low and ok_high):
        raise invalid(field, what, value)
    return v


def check_bool(value: Any, field: str, *, none: bool = False) -> Any:
    """True or false (not 0/1, not "yes"), or None where ``none``."""
    if value is None and none:
        return None
    if not isinstance(value, bool):
        raise invalid(field, "true or false" + (" or null" if none else ""), value)
    return value


def check_choice(value: Any, field: str, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared by type too: 1 is not True)."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise invalid(field, "one of " + ", ".join(str(c) for c in choices), value)
    return value


def check_strings(
    value: Any, field: str, *, what: str = "non-empty strings", single: bool = True, none: bool = False
) -> Any:
    """A non-empty list of non-empty strings as a tuple (one string alone where ``single``), or None
    where ``none``."""
    if value is None and none:
        return None
    if single and isinstance(value, str):
        value = (value,)
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise invalid(field, f"a non-empty list of {what}" + (" or null" if none else ""), value)
    return tuple(value)


def check_list(
    value: Any,
    field: str,
    item: Callable[[Any, str], Any],
    what: str,
    *,
    single: bool = False,
    none: bool = False,
) -> Any:
    """A non-empty list (or tuple) whose every element passes ``item`` (one of the checks above,
    called as ``item(element, field)``), as a tuple of what ``item`` returns; a lone element alone
    where ``single``, None where ``none``. ``what`` names the elements: the message says ``a
    non-empty list of <what>`` and shows the whole value."""
    if value is None and none:
        return None
    given = value
    if single and not isinstance(value, list | tuple):
        value = (value,)
    expected = f"a non-empty list of {what}" + (" or null" if none else "")
    if not isinstance(value, list | tuple) or not value:
        raise invalid(field, expected, given)
    try:
        return tuple(item(v, field) for v in value)
    except ValidationError:
        raise invalid(field, expected, given) from None


def check_literals(obj: Any, where: str) -> None:
    """Every ``Literal``-annotated field of dataclass ``obj`` holds one of its choices (``where``:
    the prefix naming the section, e.g. ``train.``)."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        if typing.get_origin(hint) is Literal:
            check_choice(getattr(obj, name), f"{where}{name}", typing.get_args(hint))


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A ValidationError raised inside becomes a :class:`ConfigError` with the same message (what the
    run, sweep and tune files report)."""
    try:
        yield
    except ConfigError:
        raise
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------- typed building
def dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    if is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if is_dataclass(a) and isinstance(a, type)]
        return found[0] if len(found) == 1 else None
    return None


def describe(hint: Any) -> str:
    """A type annotation in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
    if hint in simple:
        return simple[hint]
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} " + ("numbers" if all(a is float for a in args) else "values")
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict and len(args) == 2 and args[1] is not Any:
        return f"a mapping to {_plural(args[1])}"
    if origin is dict or hint is dict or (is_dataclass(hint) and isinstance(hint, type)):
        return "a mapping"
    return str(hint)


def _plural(hint: Any) -> str:
    return describe(hint).removeprefix("a ").removeprefix("an ") + "s"


def _arms(hint: Any) -> tuple[Any, ...]:
    """The types a (possibly union) annotation allows."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


class _Mismatch(Exception):
    pass


def _coerce_scalar(value: Any, hint: Any) -> Any:
    """bool, int, float or str as the hint wants it (an int is a float), or _Mismatch."""
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and _is_int(value):
        return value
    if hint is float and _is_number(value):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise _Mismatch


def _coerce_sequence(value: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    if not isinstance(value, list | tuple):
        raise _Mismatch
    if origin is tuple and args and args[-1] is Ellipsis:
        items = [coerce(v, args[0]) for v in value]
    elif origin is tuple and args:
        if len(value) != len(args):
            raise _Mismatch
        items = [coerce(v, a) for v, a in zip(value, args, strict=True)]
    else:
        items = [coerce(v, args[0]) for v in value] if args else list(value)
    return tuple(items) if origin is tuple else items


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` wants it (int -> float, list -> tuple), or _Mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return coerce(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if hint in (bool, int, float, str):
        return _coerce_scalar(value, hint)
    if origin in (tuple, list):
        return _coerce_sequence(value, origin, args)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if len(args) == 2 and args[1] is not Any:
            return {k: coerce(v, args[1]) for k, v in value.items()}  # e.g. dict[str, float]: numbers
        return value
    return value


def build_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Dataclass ``cls`` from a mapping: unknown keys, wrong types and the class's own checks are
    ConfigErrors naming the dotted key (``where``: the section's prefix, e.g. ``train.``)."""
    section = where.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{section} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {section}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        sub = dataclass_of(hint)
        if sub is not None and value is not None:
            kwargs[key] = build_dataclass(sub, value, f"{where}{key}.")
            continue
        try:
            kwargs[key] = coerce(value, hint)
        except _Mismatch:
            if isinstance(value, float) and not math.isfinite(value) and float in _arms(hint):
                raise ConfigError(f"{where}{key} must be a finite number, got {value}") from None
            raise ConfigError(f"{where}{key} must be {describe(hint)}, got {value!r}") from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # a section's own check names its dotted key already (train.lr ...); others get the section
        text = str(exc)
        raise ConfigError(text if where and text.startswith(where) else f"{section}: {text}") from exc
