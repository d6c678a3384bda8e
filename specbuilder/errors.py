"""Errors for people: every problem with a spec names its path and says what to do.

``ModelSpec`` raises pydantic's ``ValidationError`` whose messages are already rewritten here
(``must be >= 0, got -1``); ``SpecError`` carries the same problems as plain data for the CLI,
the server and anyone who wants ``layers[2].negative_slope: must be >= 0, got -1``.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from specbuilder_wire.results import Problem

Loc = tuple[int | str, ...]


def format_path(loc: Iterable[int | str]) -> str:
    """``('layers', 2, 'negative_slope')`` -> ``layers[2].negative_slope``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MAX_TEXT = 1000
"""Longest path or message a problem keeps: both can echo the input, which can be megabytes."""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text):,} characters)"


class SpecError(ValueError):
    """A spec is invalid; ``problems`` lists every problem found, each with its path."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = [Problem(_clip(p.path), _clip(p.message), p.type) for p in problems]
        super().__init__("\n".join(map(str, self.problems)))

    @classmethod
    def from_validation(cls, error: ValidationError) -> SpecError:
        return cls([Problem(format_path(e["loc"]), e["msg"], e["type"]) for e in error.errors()])

    def errors(self) -> list[dict[str, str]]:
        """The problems as dicts: ``{"path", "message", "type"}``."""
        return [{"path": p.path, "message": p.message, "type": p.type} for p in self.problems]


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'relu6'?"`` when something close exists, else ``""``."""
    options = list(choices)
    if len(word) > 3 * max(map(len, options), default=0):  # too long to be close (ratio < 0.6): spare difflib megabytes
        return ""
    close = difflib.get_close_matches(word.lower(), options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


_SHORT = reprlib.Repr()
"""How messages echo a value: briefly, however large it is (a hostile spec sends megabytes)."""
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother, _SHORT.maxlist = 80, 60, 80, 12


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return _SHORT.repr(int(value))
    return _SHORT.repr(value)


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "model_type": "an object", "dict_type": "an object", "model_attributes_type": "an object",
}


def friendly(error: ErrorDetails, fields_at: dict[Loc, Sequence[str]]) -> tuple[str, str]:
    """A clearer ``(type, message)`` for one pydantic error; ``fields_at`` lists known fields by parent loc."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, bound = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                     "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        return kind, f"must be {op} {_show(ctx[bound])}, got {_show(value)}"
    if kind in _TYPE_WORDS:
        return kind, f"must be {_TYPE_WORDS[kind]}, got {type(value).__name__} {_show(value)}"
    if kind == "finite_number":
        return kind, f"must be a finite number, got {value}"
    if kind == "missing":
        return kind, "is required"
    if kind == "extra_forbidden":
        field = str(error["loc"][-1])
        known = fields_at.get(tuple(error["loc"][:-1]), ())
        return kind, f"unknown field '{field}'{suggest(field, known)}"
    if kind == "literal_error":
        return kind, f"must be one of {ctx.get('expected')}, got {_show(value)}"
    if kind == "string_pattern_mismatch":
        return kind, f"must match {ctx.get('pattern')}, got {_show(value)}"
    if kind in ("string_too_short", "string_too_long"):
        what, bound = ("at least", ctx.get("min_length")) if kind == "string_too_short" else ("at most", ctx.get("max_length"))
        return kind, f"must have {what} {bound} character{'s' if bound != 1 else ''}, got {len(value)}"
    if kind in ("too_short", "too_long"):
        what = "at least" if kind == "too_short" else "at most"
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return kind, f"must have {what} {bound} item{'s' if bound != 1 else ''}, got {ctx.get('actual_length')}"
    return kind, error["msg"]


def reraise(title: str, problems: list[tuple[Loc, str, str, Any]]) -> ValidationError:
    """A ``ValidationError`` with these ``(loc, type, message, input)`` problems, for validators to raise."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value)
            for loc, kind, message, value in problems
        ],
    )
