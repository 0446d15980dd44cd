"""Typed dataclass fields from user input: the one coercion behind learner configs
(marl/config.py ``build_config``) and environment options (envs/base.py ``parse_options``).

A field's annotation is its contract: ``int``, ``float`` (ints are accepted and converted),
``bool``, ``str``, ``Literal[...]`` for a choice among named values, ``list[X]`` / ``tuple[X, ...]``
(elements checked), unions (``list | tuple``, ``X | None``) and ``Any``. Unknown keys and values that
break the contract are errors that name the field and list the valid keys or choices, so a typo in a
manifest is refused when it is validated rather than inside a run. Only the standard library is used
here, so both the environment layer and the learners can import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping


class FieldError(ValueError):
    """A value that does not fit its field's annotation; the message says what was expected."""


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` annotation (empty for any other annotation)."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def describe(annotation: Any) -> str:
    """A short human name for an annotation: ``int``, ``student|teacher``, ``list of B|Q|F``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (list, tuple) and args:
        return f"{origin.__name__} of {describe(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if annotation is type(None):
        return "null"
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` in its field's canonical type (an int for a float field becomes a float, a list
    for a tuple field a tuple); raises FieldError("must be ..., got ...") when it does not fit."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        # Equal and of the same type: True must not pass for 1, nor 7 for "7".
        if any(value == c and type(value) is type(c) for c in args):
            return value
        hint = ""
        if not isinstance(value, str) and str(value) in args:  # YAML read `difficulty: 7` as a number
            kind = type(value).__name__
            hint = f" ({'an' if kind[0] in 'aeiou' else 'a'} {kind}; quote it: {str(value)!r})"
        raise FieldError(f"must be one of {', '.join(map(str, args))}, got {value!r}{hint}")
    if origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return coerce(value, member)
            except FieldError:
                pass
        raise FieldError(f"must be {describe(annotation)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FieldError(f"must be {describe(annotation)}, got {value!r}")
        element = args[0] if args and (origin is list or args[1:] in ((), (Ellipsis,))) else Any
        items = []
        for i, item in enumerate(value):
            try:
                items.append(coerce(item, element))
            except FieldError as exc:
                raise FieldError(f"[{i}] {exc}") from None
        return items if origin is list else tuple(items)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        hint = ""
        if isinstance(value, str) and _parses_as_float(value):
            hint = " (YAML reads a number like 1e-3 as text; write it with a dot: 1.0e-3)"
        raise FieldError(f"must be float, got {value!r}{hint}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FieldError(f"must be int, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise FieldError(f"must be null, got {value!r}")
    if isinstance(annotation, type):  # bool, str, list, tuple, dict, ...
        if isinstance(value, annotation):
            return list(value) if annotation is list else value
        if annotation is tuple and isinstance(value, list):
            return tuple(value)
        raise FieldError(f"must be {describe(annotation)}, got {value!r}")
    return value  # an annotation this module does not model: left to the dataclass itself


def parse_fields(
    cls: type, values: Mapping[str, Any], where: str, error: type[Exception] = ValueError, noun: str = "key"
) -> dict[str, Any]:
    """``values`` checked against the fields of dataclass ``cls`` and coerced to their types.

    Raises ``error`` naming ``where`` (e.g. "algorithm 'ddn'"), the field, and the valid keys or
    choices. ``noun`` is what the caller's users call a field ("key", "option")."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields]
    unknown = [k for k in values if k not in names]
    if unknown:
        valid = ", ".join(f"{n} ({describe(hints[n])})" for n in names)
        close = {k: difflib.get_close_matches(str(k), names, n=1) for k in unknown}
        guesses = "; ".join(
            f"did you mean {c[0]!r}?" if len(unknown) == 1 else f"{k!r}: did you mean {c[0]!r}?"
            for k, c in close.items()
            if c
        )
        raise error(
            f"{where}: unknown {noun}(s) {sorted(map(str, unknown))}"
            + (f" ({guesses})" if guesses else "")
            + f"; valid {noun}s: {valid}"
        )
    out = {}
    for name, value in values.items():
        try:
            out[name] = coerce(value, hints[name])
        except FieldError as exc:
            problem = str(exc)
            sep = "" if problem.startswith("[") else " "  # an element: 'distill_losses'[1] must be ...
            raise error(f"{where}: {noun} {name!r}{sep}{problem}") from None
    return out


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
