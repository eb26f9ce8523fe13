"""Plug-in options: one way to turn a YAML mapping into a validated settings dataclass.

Every plug-in (pre-training task, loss-weighting method, sampler) declares its options as a
frozen dataclass; the run configuration's own sections are built the same way. This module
is the one place that

- suggests the closest known name for a typo (``did_you_mean``),
- checks and converts YAML values against the dataclass annotations (``coerce``), and
- checks declared numeric ranges (``bounded`` / ``probability`` fields, ``check_bounds``).

It lives in ``schedules`` because that package is the torch-free bottom layer: the config,
the tasks and the weighting methods all import it without pulling in torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class OptionsError(ValueError):
    """Options that cannot be used, with a message meant for the user."""


def did_you_mean(name: object, choices: Iterable[object]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' if none is close.

    A close spelling wins; otherwise a choice the name starts with (or that starts with
    the name), shortest first: "lr_rate" -> "lr".
    """
    name = str(name)
    known = [str(c) for c in choices]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        close = sorted((c for c in known if name.startswith(c) or c.startswith(name)), key=len)
    return f' (did you mean "{close[0]}"?)' if close and name else ""


def unknown_name_message(what: str, name: object, known: Iterable[object]) -> str:
    """'unknown <what> 'name' (did you mean "x"?); known: [...]'."""
    names = sorted(str(k) for k in known)
    return f"unknown {what} {name!r}{did_you_mean(name, names)}; known: {names}"


# ---------------------------------------------------------------- ranges


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    **kwargs: Any,
) -> Any:
    """A dataclass field whose numeric value must lie in [low, high] (open ends if asked)."""
    bounds = {"low": low, "high": high, "low_open": low_open, "high_open": high_open}
    metadata = {**kwargs.pop("metadata", {}), "bounds": bounds}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def probability(default: float) -> Any:
    """A dataclass field holding a probability in [0, 1]."""
    return bounded(default, low=0.0, high=1.0)


def _range_text(bounds: Mapping[str, Any]) -> str:
    low, high = bounds["low"], bounds["high"]
    left = "(" if bounds["low_open"] or low is None else "["
    right = ")" if bounds["high_open"] or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def check_bounds(settings: Any, where: str = "") -> None:
    """Raise OptionsError for any ``bounded`` field of ``settings`` outside its range."""
    for spec in dataclasses.fields(settings):
        bounds = spec.metadata.get("bounds")
        value = getattr(settings, spec.name)
        if bounds is None or value is None:
            continue
        low, high = bounds["low"], bounds["high"]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and not math.isnan(value)
        if ok and low is not None:
            ok = value > low if bounds["low_open"] else value >= low
        if ok and high is not None:
            ok = value < high if bounds["high_open"] else value <= high
        if not ok:
            name = f"{where}.{spec.name}" if where else spec.name
            raise OptionsError(f"{name} must lie in {_range_text(bounds)}, got {value!r}")


class Settings:
    """Base of settings dataclasses: ranges declared with ``bounded`` are checked on creation.

    A subclass with its own ``__post_init__`` calls ``super().__post_init__()``.
    """

    def __post_init__(self) -> None:
        check_bounds(self)


# ---------------------------------------------------------------- coercion


def _number(text: str, where: str, error: type[Exception]) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise error(f"{where}: expected a number, got {text!r}") from None


def _scalar(value: Any, annotation: Any, where: str, error: type[Exception]) -> Any:
    """bool / int / float / str, with YAML's quirks (``3e-4`` is read as a string)."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise error(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float) and isinstance(value, str):
        value = _number(value, where, error)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        if numeric and isinstance(value, int):
            return value
        if numeric and float(value).is_integer():
            return int(value)
        raise error(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if numeric:
            return float(value)
        raise error(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        return value
    if numeric:
        return str(value)
    raise error(f"{where}: expected a string, got {value!r}")


def coerce(value: Any, annotation: Any, where: str, error: type[Exception] = OptionsError) -> Any:
    """Check/convert one YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where, error)
    if annotation in (bool, int, float, str):
        return _scalar(value, annotation, where, error)
    if origin in (list, Sequence, tuple) and origin is not None:
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]", error) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise error(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2 and args[1] is not Any:
            return {str(k): coerce(v, args[1], f"{where}.{k}", error) for k, v in value.items()}
        return dict(value)
    return value


def build_settings(
    cls: type[T],
    values: Mapping[str, Any] | None,
    where: str,
    error: type[Exception] = OptionsError,
) -> T:
    """Build settings dataclass ``cls`` from a mapping: unknown keys raise with a suggestion,
    values are coerced to the field types, declared ranges are checked."""
    if values is not None and not isinstance(values, Mapping):
        raise error(f"{where}: expected a mapping, got {values!r}")
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise error(f"unknown key {where}.{key}{did_you_mean(key, names)}; known: {names}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}", error) for k, v in values.items()}
    try:  # ranges (``Settings``) and a settings class's own ``__post_init__`` checks
        settings = cls(**kwargs)
        if not isinstance(settings, Settings):
            check_bounds(settings)
    except (ValueError, TypeError) as problem:
        raise error(f"{where}: {problem}") from problem
    return settings


def option_names(cls: type) -> list[str]:
    """The option names a settings dataclass accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]
