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
    return totals(valgrind, script, env, out, what, options)["Ir"]


def totals(valgrind: str, script: Sequence[str], env: Mapping[str, str], out: Path,
           what: str, options: Sequence[str] = ()) -> dict[str, int]:
    """:func:`total` for every event callgrind recorded, by its name: ``Ir``
    (instructions) and, with ``--cache-sim=yes`` among ``options``, the simulated
    cache's ``I1mr`` (first-level instruction cache misses), ``D1mr``/``D1mw`` (data
    reads and writes that missed the first level) and the rest."""
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *options,
         sys.executable, *script],
        capture_output=True, text=True, env=dict(env), timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{what}: valgrind run failed:\n{proc.stderr[-2000:]}")
    text = out.read_text()
    events = re.search(r"^events:\s+(.+)$", text, re.MULTILINE)
    summary = re.search(r"^(?:summary|totals):\s+([\d ]+)$", text, re.MULTILINE)
    if events is None or summary is None:
        raise SystemExit(f"{what}: no event totals in {out}")
    return dict(zip(events.group(1).split(), map(int, summary.group(1).split()),
                    strict=False))
