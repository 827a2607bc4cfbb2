"""Checking and converting values to the type a config field declares."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import types
import typing
from functools import cache
from typing import Any, Literal, Union

import yaml

_NONE_WORDS = {"null", "none", "~", "None"}


class TypeMismatch(ValueError):
    """A value does not fit a field's type; the message says what was expected."""


@cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (works with ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def describe_type(tp: Any) -> str:
    """A short human name: ``int``, ``str | None``, ``one of 'a', 'b'``, ``list[int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(describe_type(a) for a in args)}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def accepts_text(tp: Any) -> bool:
    """Whether a command-line string should be taken as-is (not parsed as YAML)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return True
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (Union, types.UnionType):
        return any(accepts_text(a) for a in args if a is not type(None))
    return False


def parse_text(text: str, tp: Any) -> Any:
    """A value given on the command line, parsed for a field of type ``tp``."""
    optional = _is_optional(tp)
    if optional and text in _NONE_WORDS:
        return None
    if accepts_text(tp) and not _takes_other_than_text(tp):
        return text
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # a union of text and other types (``bool | Literal["auto"]``): text unless YAML reads
    # another type ("true")
    return text if accepts_text(tp) and isinstance(parsed, str) else parsed


def _takes_other_than_text(tp: Any) -> bool:
    """Whether a union also takes values that are not text (``bool | Literal["auto"]``)."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return False
    return not all(accepts_text(a) for a in typing.get_args(tp) if a is not type(None))


def _finite_float(value: Any) -> float:
    """A number field's value: nan and inf are refused (no option means them)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise TypeMismatch(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise TypeMismatch(f"expected a finite number, got {value!r} (nan and inf are not allowed)")
    return number


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` when it fits; ``TypeMismatch`` otherwise.

    Dataclass types are left to the caller (they need key-by-key checking).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except TypeMismatch as exc:
                errors.append(str(exc))
        raise TypeMismatch(f"expected {describe_type(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        from .errors import did_you_mean

        hint = did_you_mean(str(value), [str(a) for a in args])
        raise TypeMismatch(f"expected {describe_type(tp)}, got {value!r}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeMismatch(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeMismatch(f"expected an integer, got {value!r}")
    if tp is float:
        return _finite_float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch(f"expected a string, got {value!r} (quote it in YAML)")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch(f"expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeMismatch(f"expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(v, vt) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value in (member.value, member.name):
                return member
        raise TypeMismatch(f"expected {describe_type(tp)}, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeMismatch(f"expected {describe_type(tp)}, got {value!r}")
