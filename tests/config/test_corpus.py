"""Conformance over Istio's own YAML (../shared/istio-corpus): what users already have.

Every document of a supported kind must load without error; every document of a
kind meshsdk deliberately skips must produce exactly one warning naming it; and
nothing may crash or silently vanish.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsdk.config import config_from_result, load_path
from meshsdk.config.kinds import KINDS, UNSUPPORTED_ISTIO_KINDS

FOLDERS = ("bookinfo", "validation-dataset", "validation-valid")


def find_corpus() -> Path:
    """Same rule as the ``corpus_dir`` fixture (needed at collection time, for the ids)."""
    env = os.environ.get("MESH_ISTIO_CORPUS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "istio-corpus"


def _corpus_files() -> list[str]:
    root = find_corpus()
    if not root.is_dir():
        return ["<corpus absent>"]  # the corpus_dir fixture skips with the reason
    return sorted(str(p.relative_to(root)) for folder in FOLDERS
                  for p in (root / folder).rglob("*")
                  if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def _documents(path: Path) -> list[dict[str, Any]]:
    """The file's documents as plain PyYAML reads them (independent of meshsdk's parser)."""
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    out: list[dict[str, Any]] = []
    for d in docs:
        assert isinstance(d, dict), f"{path}: unexpected non-mapping document {d!r}"
        if d.get("kind") == "List":
            out.extend(d.get("items") or [])
        else:
            out.append(d)
    return out


def _key(d: dict[str, Any]) -> tuple[str, str, str]:
    meta = d.get("metadata") or {}
    return (d["kind"], meta.get("namespace") or "default", meta.get("name"))


def _report(diagnostics: list[Any]) -> str:
    return "\n".join(d.format() for d in diagnostics)


def test_corpus_has_all_folders(corpus_dir: Path) -> None:
    for folder in FOLDERS:
        files = list((corpus_dir / folder).glob("*.yaml"))
        assert files, f"{corpus_dir / folder} has no YAML files"


@pytest.mark.parametrize("relpath", _corpus_files())
def test_corpus_file_loads(corpus_dir: Path, relpath: str) -> None:
    path = corpus_dir / relpath
    docs = _documents(path)
    result = load_path(path)
    print(_report(result.diagnostics))

    assert result.errors == [], f"errors loading {path}:\n{_report(result.errors)}"

    # Istio's test data repeats a name for variants of one rule; as with kubectl apply,
    # the last one stays and each replaced one is reported (MESH0003).
    supported = Counter(_key(d) for d in docs if d.get("kind") in KINDS)
    loaded = Counter((r.kind, r.namespace, r.name) for r in result.resources)
    assert loaded == Counter(set(supported)), f"{path}: loaded {loaded}, documents {supported}"
    replaced = [w for w in result.warnings if w.code == "MESH0003"]
    assert len(result.resources) + len(replaced) == sum(supported.values())
    assert all(r.file == str(path) for r in result.resources)

    skipped = Counter(d["kind"] for d in docs if d.get("kind") in UNSUPPORTED_ISTIO_KINDS)
    skip_warnings = [w for w in result.warnings if w.kind in UNSUPPORTED_ISTIO_KINDS]
    assert Counter(w.kind for w in skip_warnings) == skipped
    for w in skip_warnings:
        assert w.kind is not None and w.kind in w.message
        assert w.file == str(path)
        assert w.line is not None
    # no document disappears without a word: every other one is loaded or warned about
    others = [d for d in docs if d.get("kind") not in KINDS
              and d.get("kind") not in UNSUPPORTED_ISTIO_KINDS]
    other_warnings = [w for w in result.warnings if w.kind not in UNSUPPORTED_ISTIO_KINDS
                      and w.kind not in KINDS]
    assert len(other_warnings) == len(others)


@pytest.mark.parametrize("relpath", _corpus_files())
def test_corpus_file_analyzes_without_crash(corpus_dir: Path, relpath: str) -> None:
    result = load_path(corpus_dir / relpath)
    if result.errors:
        pytest.skip("load errors are reported by test_corpus_file_loads")
    config = config_from_result(result)
    assert len(config.resources) == len(result.resources)
    for w in config.warnings:
        assert not w.is_error
        assert w.file is not None


def test_whole_corpus_document_counts(corpus_dir: Path) -> None:
    """The totals, as a guard that the corpus was read at all."""
    total_supported = total_loaded = total_skipped = 0
    for relpath in _corpus_files():
        path = corpus_dir / relpath
        docs = _documents(path)
        result = load_path(path)
        total_supported += sum(1 for d in docs if d.get("kind") in KINDS)
        total_skipped += sum(1 for d in docs if d.get("kind") in UNSUPPORTED_ISTIO_KINDS)
        total_loaded += len(result.resources)
        total_loaded += sum(1 for w in result.warnings if w.code == "MESH0003")
    assert total_supported > 80
    assert total_skipped >= 4
    assert total_loaded == total_supported  # loaded, or loaded and then replaced


def test_bookinfo_samples_load_together_per_topic(corpus_dir: Path) -> None:
    """Istio's bookinfo destination rules plus one routing sample form one valid config."""
    from meshsdk.config import LoadResult

    combined = LoadResult()
    for name in ("destination-rule-all.yaml", "virtual-service-reviews-80-20.yaml"):
        combined.extend(load_path(corpus_dir / "bookinfo" / name))
    assert combined.errors == []
    config = config_from_result(combined)
    kinds = Counter(r.kind for r in config.resources)
    assert kinds["DestinationRule"] == 4
    assert kinds["VirtualService"] == 1
