"""The documented example runs and the docs' Python snippets run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_example_app_runs_and_checks_itself() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc" / "app.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "80/20 split" in proc.stdout
    assert "ratings -> PERMISSION_DENIED: RBAC: access denied" in proc.stdout
    assert proc.stdout.rstrip().endswith("ok")


def test_python_blocks_in_the_grpc_page_run() -> None:
    text = (ROOT / "docs" / "integrations" / "grpc.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, f"example failed:\n{code}\n{proc.stderr}"
