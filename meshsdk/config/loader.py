"""Load Istio YAML from files, directories or strings into validated resources.

Every problem becomes a located :class:`Diagnostic`; nothing here raises for bad
input except :func:`load_config`, which raises one :class:`ConfigError` holding
all of them. Documents that fail validation are dropped from the result, so a
caller can never act on half-valid config.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from meshsdk.config.diagnostics import Diagnostic, Finding, Path
from meshsdk.config.kinds import KINDS, UNSUPPORTED_ISTIO_KINDS
from meshsdk.config.mesh import MeshConfig, validate_mesh_config
from meshsdk.config.pydantic_errors import findings_from_validation_error
from meshsdk.config.resource import Config, Resource
from meshsdk.config.yamlsource import SourceDoc, parse_documents
from meshsdk.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml", ".json")
MESH_FILE_NAMES = ("mesh.yaml", "mesh.yml")
DEFAULT_NAMESPACE = "default"
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class LoadResult:
    """What loading produced: the valid resources, an optional mesh config, all diagnostics."""

    resources: list[Resource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    mesh: MeshConfig | None = None
    mesh_source: str | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def extend(self, other: LoadResult) -> None:
        """Merge another result into this one (order kept; a second mesh config is an error)."""
        base = len(self.resources)
        self.resources.extend(_renumber(r, base + i) for i, r in enumerate(other.resources))
        self.diagnostics.extend(other.diagnostics)
        if other.mesh is not None:
            if self.mesh is not None:
                self.diagnostics.append(Diagnostic(
                    f"a second mesh config; the first came from {self.mesh_source}",
                    file=other.mesh_source, line=1))
            else:
                self.mesh, self.mesh_source = other.mesh, other.mesh_source


def _renumber(r: Resource, order: int) -> Resource:
    from dataclasses import replace

    return r if r.order == order else replace(r, order=order)


# --- public entry points ------------------------------------------------------------


def load_string(text: str, *, source: str = "<string>",
                namespace: str = DEFAULT_NAMESPACE) -> LoadResult:
    """Load every document of a YAML/JSON text. ``source`` names it in diagnostics."""
    result = LoadResult()
    docs, syntax = parse_documents(text, source)
    result.diagnostics.extend(syntax)
    for doc in docs:
        _load_document(doc, source, namespace, result)
    _check_duplicates(result)
    return result


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Loading allocates hundreds of thousands of dicts, lists and models and frees
    none of them, so every collection pass is wasted work (a third of load time
    for a large config). Reference counting still frees garbage immediately.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_path(path: str | os.PathLike[str], *, namespace: str = DEFAULT_NAMESPACE) -> LoadResult:
    """Load a file, or a directory recursively (``*.yaml``, ``*.yml``, ``*.json``, sorted).

    ``mesh.yaml`` at the top of a directory (or a file of that name given directly)
    holds the mesh-wide options, as the ``mesh`` key of Istio's ``istio`` ConfigMap.
    """
    with _gc_paused():
        return _load_path(FsPath(path), namespace)


def _load_path(root: FsPath, namespace: str) -> LoadResult:
    result = LoadResult()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
        for f in files:
            is_mesh = f.parent == root and f.name in MESH_FILE_NAMES
            result.extend(_load_file(f, namespace, mesh_file=is_mesh))
    elif root.is_file():
        result.extend(_load_file(root, namespace, mesh_file=root.name in MESH_FILE_NAMES))
    else:
        result.diagnostics.append(Diagnostic("no such file or directory", file=str(root)))
    _check_duplicates(result)
    return result


def load_mesh_config_string(text: str, *, source: str = "mesh.yaml",
                            line_offset: int = 0) -> tuple[MeshConfig | None, list[Diagnostic]]:
    """Parse and validate a MeshConfig document (Istio's ``mesh`` ConfigMap key)."""
    docs, diagnostics = parse_documents(text, source)
    if line_offset:
        diagnostics = [_shift(d, line_offset) for d in diagnostics]
    if not docs:
        return (MeshConfig() if not diagnostics else None), diagnostics
    doc = docs[0]
    if len(docs) > 1:
        diagnostics.append(Diagnostic("a mesh config is one document; found several",
                                      file=source, line=docs[1].line + line_offset))
    data = doc.data if doc.data is not None else {}

    def locate(f: Finding) -> Diagnostic:
        return Diagnostic(f.message, f.severity, source, doc.line_of(f.path) + line_offset,
                          "MeshConfig", None, None, f.path, f.code)

    if not isinstance(data, dict):
        diagnostics.append(Diagnostic("mesh config must be a mapping", file=source,
                                      line=doc.line + line_offset))
        return None, diagnostics
    try:
        mesh = MeshConfig.model_validate(data)
    except ValidationError as exc:
        diagnostics.extend(locate(f) for f in findings_from_validation_error(exc, MeshConfig, ()))
        return None, diagnostics
    found = [locate(f) for f in validate_mesh_config(mesh)]
    diagnostics.extend(found)
    return (None if any(d.is_error for d in found) else mesh), diagnostics


def load_config(*sources: str | os.PathLike[str], namespace: str = DEFAULT_NAMESPACE,
                mesh: MeshConfig | None = None) -> Config:
    """Load and validate paths into a :class:`Config`; raise :class:`ConfigError` on any error.

    Warnings (unsupported kinds, analyzer findings) are kept on ``Config.warnings``.
    """
    result = LoadResult()
    for src in sources:
        result.extend(load_path(src, namespace=namespace))
    _check_duplicates(result)
    return config_from_result(result, mesh=mesh)


def config_from_result(result: LoadResult, *, mesh: MeshConfig | None = None) -> Config:
    """Build a :class:`Config` from a load result, with the cross-resource analysis."""
    from meshsdk.config.analysis import analyze

    if result.errors:
        n = len(result.errors)
        raise ConfigError(f"invalid configuration: {n} error{'s' * (n != 1)}",
                          result.diagnostics)
    chosen = mesh or result.mesh or MeshConfig()
    config = Config(tuple(result.resources), chosen, tuple(result.warnings))
    extra = analyze(config)
    return Config(config.resources, chosen, (*config.warnings, *extra))


# --- one file, one document --------------------------------------------------------


def _load_file(path: FsPath, namespace: str, *, mesh_file: bool) -> LoadResult:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return LoadResult(diagnostics=[Diagnostic(f"not UTF-8 text: {exc.reason}", file=name)])
    except OSError as exc:
        return LoadResult(diagnostics=[Diagnostic(f"cannot read: {exc.strerror}", file=name)])
    if mesh_file:
        mesh, diagnostics = load_mesh_config_string(text, source=name)
        return LoadResult(diagnostics=diagnostics, mesh=mesh, mesh_source=name)
    return load_string(text, source=name, namespace=namespace)


def _load_document(doc: SourceDoc, source: str, namespace: str, result: LoadResult) -> None:
    data = doc.data
    if not isinstance(data, dict):
        result.diagnostics.append(Diagnostic(
            "a document must be a mapping with apiVersion, kind, metadata and spec; "
            f"got {type(data).__name__}", file=source, line=doc.line))
        return
    kind, api_version = data.get("kind"), data.get("apiVersion")
    if kind in ("List", "ConfigMapList") and isinstance(data.get("items"), list):
        for i, item in enumerate(data["items"]):
            sub = SourceDoc(item, doc.line_of(("items", i)), doc.index,
                            _rebase(doc.lines, ("items", i)))
            _load_document(sub, source, namespace, result)
        return
    bad = _check_header(data, doc, source)
    if bad is not None:
        result.diagnostics.append(bad)
        return
    assert isinstance(kind, str) and isinstance(api_version, str)
    if kind == "ConfigMap" and _is_mesh_configmap(data):
        _load_mesh_configmap(data, doc, source, result)
        return
    info = KINDS.get(kind)
    group = api_version.split("/", 1)[0]
    if info is None:
        result.diagnostics.append(_skip_warning(kind, api_version, group, doc, source))
        return
    if api_version not in info.api_versions():
        result.diagnostics.append(Diagnostic(
            f"{kind} is not served as {api_version!r}; use one of "
            f"{', '.join(info.api_versions())}", file=source, line=doc.line_of(("apiVersion",)),
            kind=kind, path=("apiVersion",)))
        return
    _load_resource(data, doc, source, namespace, info.spec_model, info.rules, result)


def _check_header(data: dict[Any, Any], doc: SourceDoc, source: str) -> Diagnostic | None:
    for key in ("apiVersion", "kind"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            what = "is missing" if value is None else f"must be a non-empty string, got {value!r}"
            return Diagnostic(f"{key} {what}", file=source, line=doc.line_of((key,)),
                              path=(key,))
    return None


def _skip_warning(kind: str, api_version: str, group: str, doc: SourceDoc,
                  source: str) -> Diagnostic:
    why = UNSUPPORTED_ISTIO_KINDS.get(kind)
    if why is not None or group.endswith("istio.io"):
        reason = why or "meshsdk does not support this Istio kind"
        msg = f"{kind} ({api_version}) is not supported and was skipped: {reason}"
        code = "MESH0001"
    else:
        msg = f"{kind} ({api_version}) is not an Istio configuration kind and was skipped"
        code = "MESH0002"
    name = _meta_str(doc.data, "name")
    ns = _meta_str(doc.data, "namespace")
    return Diagnostic(msg, "warning", source, doc.line, kind, ns, name, (), code)


def _meta_str(data: Any, key: str) -> str | None:
    meta = data.get("metadata") if isinstance(data, dict) else None
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def _load_resource(data: dict[Any, Any], doc: SourceDoc, source: str, default_ns: str,
                   model: type[BaseModel], rules: Any, result: LoadResult) -> None:
    kind: str = data["kind"]
    meta = data.get("metadata")
    name = _meta_str(data, "name")
    namespace = _meta_str(data, "namespace") or default_ns

    def located(f: Finding) -> Diagnostic:
        return Diagnostic(f.message, f.severity, source, doc.line_of(f.path), kind, namespace,
                          name, f.path, f.code)

    found: list[Finding] = []
    for key in data:
        if key not in _TOP_LEVEL:
            found.append(Finding((key,), f"unknown top-level field {key!r}"))
    found.extend(_metadata_findings(meta))
    spec_data = data.get("spec")
    spec: Any = None
    if spec_data is None:
        spec_data = {}
    if not isinstance(spec_data, dict):
        found.append(Finding(("spec",), f"spec must be a mapping, got {type(spec_data).__name__}"))
    else:
        try:
            spec = model.model_validate(spec_data)
        except ValidationError as exc:
            found.extend(findings_from_validation_error(exc, model, ("spec",)))
        except (ValueError, TypeError, RecursionError) as exc:  # defensive: never a traceback
            found.append(Finding(("spec",), f"invalid spec: {exc}"))
    if spec is not None:
        found.extend(Finding(("spec", *f.path), f.message, f.severity, f.code)
                     for f in rules(spec))
    result.diagnostics.extend(located(f) for f in found)
    if any(f.severity == "error" for f in found) or name is None:
        return
    result.resources.append(Resource(
        kind=kind, api_version=data["apiVersion"], name=name, namespace=namespace, spec=spec,
        file=source, line=doc.line, labels=_str_map(meta, "labels"),
        annotations=_str_map(meta, "annotations"),
        creation_timestamp=_timestamp(meta), order=len(result.resources), lines=doc.lines,
    ))


def _metadata_findings(meta: Any) -> Iterable[Finding]:
    if not isinstance(meta, dict):
        what = "is missing" if meta is None else "must be a mapping"
        yield Finding(("metadata",), f"metadata {what}; it needs at least a name")
        return
    name = meta.get("name")
    if name is None:
        yield Finding(("metadata", "name"), "required field is missing")
    elif not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        yield Finding(("metadata", "name"),
                      f"must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.'), got {name!r}")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not _DNS_LABEL.match(ns) or len(ns) > 63):
        yield Finding(("metadata", "namespace"),
                      f"must be a lowercase DNS-1123 label (a-z, 0-9, '-'), got {ns!r}")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            yield Finding(("metadata", key), "must be a mapping of strings")
            continue
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                yield Finding(("metadata", key, k),
                              f"keys and values must be strings, got {k!r}: {v!r}")


def _str_map(meta: Any, key: str) -> Mapping[str, str]:
    from types import MappingProxyType

    value = meta.get(key) if isinstance(meta, dict) else None
    return MappingProxyType(dict(value)) if isinstance(value, dict) else MappingProxyType({})


def _timestamp(meta: Any) -> str | None:
    """creationTimestamp as UTC ISO text, so that comparing strings compares instants.

    YAML turns an unquoted timestamp into a datetime and leaves a quoted one a string;
    both, with any UTC offset, end up in one form. Unparsable text is kept as written.
    """
    from datetime import UTC, datetime

    raw = meta.get("creationTimestamp") if isinstance(meta, dict) else None
    if raw is None:
        return None
    stamp: datetime
    if isinstance(raw, datetime):
        stamp = raw
    elif isinstance(raw, str):
        try:
            stamp = datetime.fromisoformat(raw.strip())
        except ValueError:
            return raw
    else:
        return str(raw)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat()


def _rebase(lines: Mapping[Path, int], prefix: Path) -> dict[Path, int]:
    n = len(prefix)
    return {p[n:]: line for p, line in lines.items() if p[:n] == prefix and len(p) > n}


def _shift(d: Diagnostic, offset: int) -> Diagnostic:
    from dataclasses import replace

    return replace(d, line=(d.line or 1) + offset)


def _is_mesh_configmap(data: dict[Any, Any]) -> bool:
    name = _meta_str(data, "name") or ""
    payload = data.get("data")
    return (name == "istio" or name.startswith("istio-")) and isinstance(payload, dict) \
        and "mesh" in payload


def _load_mesh_configmap(data: dict[Any, Any], doc: SourceDoc, source: str,
                         result: LoadResult) -> None:
    text = data["data"]["mesh"]
    if not isinstance(text, str):
        result.diagnostics.append(Diagnostic("data.mesh must be a YAML string", file=source,
                                             line=doc.line_of(("data", "mesh"))))
        return
    # A block scalar's text starts on the line after its key.
    offset = doc.line_of(("data", "mesh"))
    mesh, diagnostics = load_mesh_config_string(text, source=source, line_offset=offset)
    result.diagnostics.extend(diagnostics)
    if mesh is not None:
        if result.mesh is not None:
            result.diagnostics.append(Diagnostic(
                f"a second mesh config; the first came from {result.mesh_source}",
                file=source, line=doc.line))
        else:
            result.mesh, result.mesh_source = mesh, source


def _check_duplicates(result: LoadResult) -> None:
    """Two documents with one kind/namespace/name: the later one replaces the earlier.

    That is what ``kubectl apply`` of the same files in the same order would leave,
    and what ``istioctl validate`` accepts; the replacement is reported as a
    warning (MESH0003) so it is never silent.
    """
    latest: dict[tuple[str, str, str], Resource] = {}
    for r in result.resources:
        prior = latest.get(r.key)
        if prior is not None and prior is not r:
            result.diagnostics.append(r.diagnostic(Finding(
                ("metadata", "name"), f"{r.ref} is defined again here and replaces the one "
                                      f"at {prior.file}:{prior.line}", "warning", "MESH0003")))
        latest[r.key] = r
    keep = {id(r) for r in latest.values()}
    result.resources[:] = [r for r in result.resources if id(r) in keep]
