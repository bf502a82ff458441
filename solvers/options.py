"""Method options: one frozen dataclass per method, checked before any work.

A method's options class derives from :class:`MethodOptions` and documents each field
in its docstring as ``name : one line``; ``__post_init__`` checks every value against
the field's annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[...]``,
``Any``) and a subclass adds its range checks after ``super().__post_init__()``.
Bad options raise :class:`OptionError`, a ``ValueError`` (a bad input) that is also a
``TypeError`` (as an unexpected keyword argument is).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any


class OptionError(ValueError, TypeError):
    """A method option that does not exist, or has the wrong type or value."""


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options (a method without options uses it as is)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _checked(self, f.name, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    def require(self, ok: bool, name: str, rule: str) -> None:
        """Raise :class:`OptionError` naming option ``name`` unless ``ok`` (``rule``: what it must be)."""
        if not ok:
            raise OptionError(f"option {name} must be {rule}, got {getattr(self, name)!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None or tp is Any:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _checked(opts: MethodOptions, name: str, tp: Any, value: Any) -> Any:
    """``value`` as field ``name`` of type ``tp`` (ints widen to float, lists to tuples), or OptionError."""
    ok, converted = _match(tp, value)
    if not ok:
        raise OptionError(f"option {name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return converted


def _match(tp: Any, value: Any) -> tuple[bool, Any]:
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, converted = _match(arm, value)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False, value
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            return False, value
        items = [_match(a, v) for a, v in zip(args, value)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    return isinstance(value, tp), value


def option_docs(cls: type) -> dict[str, str]:
    """``{field: its doc}`` from the class docstring's ``name : text`` lines (``a, b : text`` names two)."""
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in (cls.__doc__ or "").splitlines():
        m = re.match(r"^\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s+:\s+(.*)$", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                docs[n] = m.group(2).strip()
        elif current and line.strip():
            for n in current:
                docs[n] += " " + line.strip()
        else:
            current = []
    return docs


def build_options(method: str, cls: type, options: dict | MethodOptions | None) -> MethodOptions:
    """``cls(**options)`` with unknown names and bad values as one :class:`OptionError` naming them."""
    if isinstance(options, cls):
        return options
    if isinstance(options, MethodOptions):
        raise OptionError(f"{method} takes {cls.__name__}, got {type(options).__name__}")
    options = dict(options or {})
    names = [f.name for f in fields(cls)]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            listed = ", ".join(names) if names else "none"
            raise OptionError(f"{method} has no option {key!r}{hint} (its options: {listed})")
    try:
        return cls(**options)
    except OptionError as e:
        raise OptionError(f"{method} {e}") from None


def describe_options(method: str, cls: type) -> str:
    """A method's options, one per line: name, type, default, the first sentence of its doc."""
    docs = option_docs(cls)
    lines = [f"options of {method} (--option KEY=VALUE, values read as JSON):"]
    hints = typing.get_type_hints(cls)
    if not fields(cls):
        lines.append("  (none)")
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        doc = re.split(r"(?<=\.)\s", docs.get(f.name, ""), maxsplit=1)[0]
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}): {doc}")
    return "\n".join(lines)
