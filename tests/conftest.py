"""Shared fixtures: where the Istio corpus and the bundled bookinfo example live."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_ENV = "MESH_ISTIO_CORPUS"


def find_corpus() -> Path:
    """The Istio corpus directory: ``$MESH_ISTIO_CORPUS`` or ``<repo>/../shared/istio-corpus``."""
    env = os.environ.get(CORPUS_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "istio-corpus"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = find_corpus()
    if not path.is_dir():
        pytest.skip(f"Istio corpus not found at {path}: set {CORPUS_ENV} to the directory "
                    "holding bookinfo/, validation-dataset/ and validation-valid/")
    return path


@pytest.fixture(scope="session")
def bookinfo_dir() -> Path:
    path = REPO_ROOT / "examples" / "bookinfo"
    assert path.is_dir(), f"the bundled example is missing: {path}"
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write("a/b.yaml", text)`` creates a file under tmp_path (parents too) and returns it."""

    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write
