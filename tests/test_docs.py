"""The documentation says what the code does: generated tables are current and the
runnable examples in docstrings and docs run."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import meshsdk
import meshsdk.config
import meshsdk.mesh
import meshsdk.telemetry
from meshsdk.config import reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current() -> None:
    text = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert reference.updated_document(text) == text, (
        "docs/config-reference.md is stale: run python -m meshsdk.config.reference --write")


def test_reference_lists_every_supported_kind() -> None:
    rendered = reference.render()
    for kind in meshsdk.config.kinds.KINDS:
        assert f"## {kind}\n" in rendered
    assert "## MeshConfig\n" in rendered


@pytest.mark.parametrize("module", [meshsdk, meshsdk.config, meshsdk.telemetry, meshsdk.mesh],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    failures, tried = doctest.testmod(module, verbose=False)  # type: ignore[arg-type]
    assert tried > 0
    assert failures == 0


def _python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/getting-started.md", "docs/data-path.md",
                                 "docs/observability.md", "docs/security.md",
                                 "docs/controlplane.md", "docs/inbound.md"])
def test_python_examples_in_docs_run(doc: str) -> None:
    blocks = _python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, f"{doc} example failed:\n{code}\n{proc.stderr}"
        # examples print what their comments promise
        for expected in re.findall(r"#\s*(\[.*?\]|\S+\.svc\.cluster\.local.*)$", code, re.M):
            assert expected.split("  ")[0].strip() in proc.stdout


def test_readme_validate_outputs_are_real() -> None:
    """The two meshctl outputs the README shows are what the commands print."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    cli = [sys.executable, "-m", "meshsdk.cli", "validate"]
    ok = subprocess.run([*cli, "examples/bookinfo"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0
    assert ok.stdout.strip() in readme
    bad = subprocess.run([*cli, "examples/invalid/broken.yaml"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    for line in bad.stderr.strip().splitlines():
        assert line in readme
