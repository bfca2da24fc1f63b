"""Instruction counts from valgrind's callgrind, shared by the benchmarks that count
(``instructions.py`` for outbound calls, ``inbound_micro.py --instructions``)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def total(valgrind: str, script: Sequence[str], env: Mapping[str, str], out: Path,
          what: str, options: Sequence[str] = ()) -> int:
    """Run ``python *script`` under callgrind and return the instructions it executed
    (all threads; only where ``options`` such as ``--toggle-collect`` let callgrind
    collect); exits with ``what`` and valgrind's complaint when the run fails."""
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *options,
         sys.executable, *script],
        capture_output=True, text=True, env=dict(env), timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{what}: valgrind run failed:\n{proc.stderr[-2000:]}")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{what}: no instruction total in {out}")
    return int(match.group(1))
