"""Generate the field-by-field part of ``docs/config-reference.md`` from the models.

The models are the truth about what meshsdk accepts; generating the reference from
them keeps the two from drifting (a test compares the committed file with this
output). Run ``python -m meshsdk.config.reference --write`` after changing a model.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from meshsdk.config.kinds import KINDS, UNSUPPORTED_ISTIO_KINDS
from meshsdk.config.mesh import MeshConfig

BEGIN = "<!-- BEGIN GENERATED: python -m meshsdk.config.reference --write -->"
END = "<!-- END GENERATED -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def render() -> str:
    """Markdown for every supported kind and MeshConfig: each message and its fields."""
    out: list[str] = []
    roots: list[tuple[str, type[BaseModel], str]] = [
        (k.kind, k.spec_model, ", ".join(k.api_versions())) for k in KINDS.values()]
    roots.append(("MeshConfig", MeshConfig, "mesh.yaml, or data.mesh of the istio ConfigMap"))
    out.append("| kind | apiVersions |")
    out.append("| --- | --- |")
    for name, _model, versions in roots:
        out.append(f"| [{name}](#{name.lower()}) | {versions} |")
    out.append("")
    out.append("Skipped with a warning (Envoy-specific): "
               + ", ".join(sorted(UNSUPPORTED_ISTIO_KINDS)) + ".")
    out.append("")
    for name, model, _versions in roots:
        out.append(f"## {name}")
        out.append("")
        seen: set[type[BaseModel]] = set()
        _render_model(model, f"{name}" if name == "MeshConfig" else f"{name}.spec", out, seen)
    return "\n".join(out).rstrip() + "\n"


def _render_model(model: type[BaseModel], title: str, out: list[str],
                  seen: set[type[BaseModel]]) -> None:
    seen.add(model)
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    out.append(f"### {title}" if "." in title else f"### {title} (top level)")
    out.append("")
    if doc:
        out.append(doc)
        out.append("")
    out.append("| field | type | default |")
    out.append("| --- | --- | --- |")
    nested: list[tuple[str, type[BaseModel]]] = []
    for fname, info in model.model_fields.items():
        wire = info.alias or fname
        out.append(f"| `{wire}` | {_type_text(info.annotation)} | {_default_text(info)} |")
        for sub in _models_in(info.annotation):
            if sub not in seen:
                nested.append((f"{title}.{wire}", sub))
                seen.add(sub)
    out.append("")
    if getattr(model, "model_config", {}).get("extra") == "allow":
        out.append("Other fields are accepted and ignored here (see the model's docstring).")
        out.append("")
    for sub_title, sub in nested:
        seen.discard(sub)
        _render_model(sub, sub_title, out, seen)


def _default_text(info: Any) -> str:
    if info.default is PydanticUndefined:
        if info.default_factory is not None:
            value = info.default_factory()
            if isinstance(value, BaseModel):
                return "(defaults below)"
            return "empty" if not value else f"`{value!r}`"
        return "**required**"
    if info.default is None:
        return "unset"
    if isinstance(info.default, bool):
        return f"`{str(info.default).lower()}`"
    if isinstance(info.default, BaseModel):
        return "(defaults below)"
    if info.default in ([], {}, ""):
        return "empty"
    return f"`{info.default!r}`"


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        metadata = [repr(m) for m in args[1:]]
        if any("parse_duration" in m for m in metadata):
            return "duration (`5s`, `100ms`)"
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        return " or ".join(_type_text(a) for a in parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_text(args[0])} to {_type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.__name__
    return {str: "string", int: "integer", float: "number", bool: "boolean",
            bytes: "bytes"}.get(tp, getattr(tp, "__name__", str(tp)))


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        for m in _models_in(arg):
            if m not in found:
                found.append(m)
    return found


def updated_document(text: str) -> str:
    """``text`` with the generated section replaced by the current rendering."""
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError(f"marker {BEGIN!r} not found")
    _old, sep2, tail = rest.partition(END)
    if not sep2:
        raise ValueError(f"marker {END!r} not found")
    return f"{head}{BEGIN}\n\n{render()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"update {DOC}")
    args = parser.parse_args()
    if args.write:
        DOC.write_text(updated_document(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
