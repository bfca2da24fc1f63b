"""Turn pydantic's validation errors into our findings, in words an Istio user reads.

Pydantic reports locations with wire names already (aliases); here we shorten
its messages ("Extra inputs are not permitted" -> "unknown field 'wieght'; did you
mean 'weight'?") and drop the duplicates that union types produce.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from meshsdk.config.diagnostics import Finding, Path

_TYPE_WORDS = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "a boolean", "bool_parsing": "a boolean", "dict_type": "a mapping",
    "list_type": "a list", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "mapping_type": "a mapping", "bytes_type": "a string",
}


def findings_from_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: Path
) -> list[Finding]:
    """One finding per distinct location, paths prefixed with ``prefix`` (e.g. ``("spec",)``)."""
    seen: set[Path] = set()
    out: list[Finding] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        if loc in seen:
            continue
        seen.add(loc)
        out.append(Finding((*prefix, *loc), _message(err, model, loc)))
    return out


def _clean_loc(loc: tuple[int | str, ...]) -> Path:
    # Pydantic inserts validator tags for unions ("function-before[...]", "str", ...);
    # they are not part of the user's document.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS)))


_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "[key]"}


def _message(err: Any, model: type[BaseModel], loc: Path) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        msg = f"unknown field {name!r}"
        known = _field_names_at(model, loc[:-1])
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        return msg + (f"; did you mean {close[0]!r}?" if close else "")
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_describe(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {op} {bound}, got {value!r}"
    return f"{err['msg']}, got {_describe(value)}"


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _field_names_at(model: type[BaseModel], loc: Path) -> list[str]:
    """Wire names of the fields allowed at ``loc`` inside ``model`` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        current = _descend(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _descend(tp: Any, part: str | int) -> Any:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, f in tp.model_fields.items():
            if part in (name, f.alias):
                return _unwrap(f.annotation)
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple) and args:
        return _unwrap(args[0])
    if origin is dict and len(args) == 2:
        return _unwrap(args[1])
    return None


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated/list-of-one-model wrappers down to a model class if any."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(models) == 1:
                tp = models[0]
                continue
        return tp
