"""Run each framework integration's tests against the oldest and the latest framework
version it supports, as listed in ``integrations/matrix.toml``.

    python scripts/test_matrix.py                    # every framework, oldest and latest
    python scripts/test_matrix.py --only flask --which oldest

For every (framework, entry) it keeps a throwaway venv in ``.matrix/<framework>-<entry>``
(rebuilt when the pins change), installs the core with its dev extra, the integration
with its test extra and the pins in one pip run (so the resolver honours the pins), and
runs that integration's tests there. It prints one line per run and a summary, and
exits 1 when any run failed. ``make test-matrix`` calls it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "integrations" / "matrix.toml"
WORKDIR = ROOT / ".matrix"
ENTRIES = ("oldest", "latest")


@dataclass(frozen=True)
class Run:
    """One framework at one entry of the matrix."""

    framework: str
    entry: str
    path: str
    tests: str
    pins: tuple[str, ...]

    @property
    def venv(self) -> Path:
        return WORKDIR / f"{self.framework}-{self.entry}"


def load_runs(only: list[str], which: list[str]) -> list[Run]:
    """The runs the matrix file asks for, filtered by framework and entry."""
    data = tomllib.loads(MATRIX.read_text(encoding="utf-8"))
    unknown = sorted(set(only) - set(data))
    if unknown:
        raise SystemExit(f"not in {MATRIX.relative_to(ROOT)}: {', '.join(unknown)}")
    runs = []
    for framework, spec in data.items():
        if only and framework not in only:
            continue
        for entry in which:
            runs.append(Run(framework, entry, spec["path"], spec["tests"],
                            tuple(spec[entry])))
    return runs


def _bin(run: Run, name: str) -> Path:
    return run.venv / "bin" / name


def prepare(run: Run, log: Path) -> None:
    """Create (or reuse) the run's venv and install the core, the integration and pins."""
    stamp = run.venv / ".pins"
    wanted = "\n".join(run.pins)
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return
    if run.venv.exists():
        shutil.rmtree(run.venv)
    venv.create(run.venv, with_pip=True)
    pip = [str(_bin(run, "python")), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    with log.open("a", encoding="utf-8") as out:
        subprocess.run([*pip, "-e", ".[dev]", "-e", f"{run.path}[test]", *run.pins],
                       cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    stamp.write_text(wanted, encoding="utf-8")


def installed_versions(run: Run) -> str:
    """``name==version`` of the pinned distributions as installed (what really ran)."""
    names = [pin.split("==")[0] for pin in run.pins]
    code = ("import importlib.metadata as m, sys\n"
            "print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))")
    proc = subprocess.run([str(_bin(run, "python")), "-c", code, *names], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip().splitlines()[-1]


def execute(run: Run, log: Path, pytest_args: list[str]) -> tuple[bool, str]:
    """Prepare the venv and run the integration's tests; (passed, pytest's last line)."""
    try:
        prepare(run, log)
    except subprocess.CalledProcessError:
        return False, f"install failed (see {log.relative_to(ROOT)})"
    with log.open("a", encoding="utf-8") as out:
        proc = subprocess.run([str(_bin(run, "python")), "-m", "pytest", "-q",
                               "-p", "no:cacheprovider", run.tests, *pytest_args],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)
        out.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode == 0, lines[-1] if lines else f"exit {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="FRAMEWORK",
                        help="run only this framework (repeatable)")
    parser.add_argument("--which", action="append", choices=ENTRIES, default=[],
                        help="oldest or latest (repeatable; default both)")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args(argv)
    runs = load_runs(args.only, args.which or list(ENTRIES))
    WORKDIR.mkdir(exist_ok=True)
    results = []
    for run in runs:
        log = WORKDIR / f"{run.framework}-{run.entry}.log"
        log.write_text("", encoding="utf-8")
        started = time.monotonic()
        print(f"== {run.framework} {run.entry}: {' '.join(run.pins)}", flush=True)
        ok, summary = execute(run, log, args.pytest_args)
        versions = installed_versions(run) if _bin(run, "python").exists() else "-"
        took = time.monotonic() - started
        print(f"   {'PASS' if ok else 'FAIL'} in {took:.0f}s: {summary} [{versions}]",
              flush=True)
        results.append((run, ok, summary, versions))
    print("\nframework  entry   result  installed")
    for run, ok, _, versions in results:
        print(f"{run.framework:<10} {run.entry:<7} {'PASS' if ok else 'FAIL':<7} {versions}")
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
