"""YAML documents with the line of every field, so errors can say ``file:line``.

PyYAML (its C composer when built with libyaml) builds the node tree, which keeps
marks; we turn nodes into plain Python objects ourselves, recording the line of
each mapping key and sequence item under its path. Hand-written because neither
PyYAML nor ruamel exposes "the line of the value at this path" directly, and the
walk also lets us reject duplicate keys, which PyYAML silently overwrites.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshsdk.config.diagnostics import Diagnostic, Path

_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """The C loader with a memo of plain-scalar tags.

    libyaml calls back into PyYAML's Python resolver for every node, which is most
    of the parsing time for a large config; a plain scalar's tag depends only on its
    text, and configs repeat the same words (keys, hosts, enums) endlessly.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_PLAIN_TAGS) < _PLAIN_TAGS_LIMIT:
                    _PLAIN_TAGS[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_LIMIT = 50_000
MAX_DEPTH = 64  # deeper than any Istio resource; stops runaway recursion
MAX_ALIAS_VALUES = 100_000  # values in one document, aliases expanded: stops alias bombs
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_BOOLS = {"true": True, "yes": True, "on": True, "y": True,
          "false": False, "no": False, "off": False, "n": False}


@dataclass(slots=True)
class SourceDoc:
    """One YAML document: its data, its start line and the line of every path in it."""

    data: Any
    line: int
    index: int
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """Line of ``path``, or of its nearest existing parent (a missing field's parent)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return self.line


class _DocError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Walker:
    """Turns one composed document into Python data plus a path -> line map."""

    def __init__(self) -> None:
        self.ctor = SafeConstructor()
        self.lines: dict[Path, int] = {}
        # Values produced so far. Aliases can make a short text expand to billions of
        # values ("billion laughs"); no real resource comes near the limit.
        self.values = 0

    def scalar(self, node: ScalarNode) -> Any:
        # Fast paths for the scalars that make up nearly all of a config; anything
        # unusual (floats, octal or sexagesimal ints, timestamps, binary) goes through
        # PyYAML's own constructor so semantics stay YAML 1.1's, as in Kubernetes.
        tag, value = node.tag, node.value
        if tag == _STR:
            return value
        if tag == _INT and value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)
        if tag == _BOOL:
            flag = _BOOLS.get(value.lower())
            if flag is not None:
                return flag
        if tag == _NULL:
            return None
        return self.ctor.construct_object(node, deep=True)

    def walk(self, node: Node, path: Path, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _DocError(node.start_mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
        self.values += 1
        if self.values > MAX_ALIAS_VALUES:
            raise _DocError(node.start_mark.line + 1,
                            f"aliases expand to more than {MAX_ALIAS_VALUES} values")
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        lines = self.lines
        if isinstance(node, SequenceNode):
            items = []
            for i, child in enumerate(node.value):
                sub = (*path, i)
                lines[sub] = child.start_mark.line + 1
                items.append(self.walk(child, sub, depth + 1))
            return items
        if isinstance(node, MappingNode):
            pairs = node.value
            explicit: set[int] | None = None
            if any(k.tag == _MERGE_TAG for k, _ in pairs):
                # YAML merge keys (<<): merged pairs go first and keys written in this
                # mapping override them; only two written keys are a duplicate.
                explicit = {id(k) for k, _ in pairs if k.tag != _MERGE_TAG}
                self.ctor.flatten_mapping(node)
                pairs = node.value
            out: dict[Any, Any] = {}
            owner: dict[Any, Node] = {}
            for key_node, value_node in pairs:
                if not isinstance(key_node, ScalarNode):
                    raise _DocError(key_node.start_mark.line + 1, "mapping keys must be scalars")
                key = key_node.value if key_node.tag == _STR else self.scalar(key_node)
                if key in out and (explicit is None or (
                        id(key_node) in explicit and id(owner[key]) in explicit)):
                    raise _DocError(key_node.start_mark.line + 1,
                                    f"duplicate key {key!r} in {_where(path)}")
                if explicit is not None:
                    owner[key] = key_node  # a merged value is overridden by a later one
                sub = (*path, key)
                lines[sub] = key_node.start_mark.line + 1
                out[key] = self.walk(value_node, sub, depth + 1)
            return out
        raise _DocError(node.start_mark.line + 1, f"unsupported YAML node {type(node).__name__}")


def _where(path: Path) -> str:
    from meshsdk.config.diagnostics import format_path

    return format_path(path) if path else "the document"


def parse_documents(text: str, source: str) -> tuple[list[SourceDoc], list[Diagnostic]]:
    """Parse a multi-document YAML (or JSON) text.

    Returns the documents that parsed and a diagnostic for the first syntax error;
    documents before a syntax error are kept, as a YAML stream cannot be resumed
    after one.
    """
    docs, errors, broken = _parse(text, source, _Loader)
    if broken and _BaseLoader is not yaml.SafeLoader:
        # libyaml rejects a few plain scalars that PyYAML's own parser and Go's YAML
        # (so Istio) accept, e.g. the IPv6 address in `addresses: [1.2.3.4, 001:db8::]`.
        retry = _parse(text, source, yaml.SafeLoader)
        if not retry[2]:
            return retry[0], retry[1]
    return docs, errors


def _parse(text: str, source: str,
           loader: type[Any]) -> tuple[list[SourceDoc], list[Diagnostic], bool]:
    """Parse with one loader class; the flag says whether the stream itself broke."""
    docs: list[SourceDoc] = []
    errors: list[Diagnostic] = []
    broken = False
    try:
        for index, node in enumerate(_compose_all(text, loader)):
            if node is None:
                continue
            walker = _Walker()
            try:
                data = walker.walk(node, (), 0)
            except _DocError as exc:
                errors.append(Diagnostic(exc.message, file=source, line=exc.line))
                continue
            except yaml.YAMLError as exc:
                errors.append(_yaml_error(exc, source))
                continue
            except (ValueError, TypeError, OverflowError) as exc:  # e.g. bad timestamps
                errors.append(Diagnostic(f"invalid YAML value: {exc}", file=source,
                                         line=node.start_mark.line + 1))
                continue
            if data is None:  # an empty document ('---' then nothing, or only comments)
                continue
            docs.append(SourceDoc(data, node.start_mark.line + 1, index, walker.lines))
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(exc, source))
        broken = True
    except (ValueError, TypeError, RecursionError) as exc:
        errors.append(Diagnostic(f"invalid YAML: {exc}", file=source, line=1))
        broken = True
    return docs, errors, broken


def _compose_all(text: str, loader_class: type[Any]) -> Iterator[Node | None]:
    loader = loader_class(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError, source: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return Diagnostic(message, file=source, line=line)
