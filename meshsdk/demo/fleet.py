"""The demo's bookinfo processes: one per WorkloadEntry, started, watched and stopped.

Every app runs as ``python -m meshsdk.demo.apps`` in its own session (a Ctrl-C in the
terminal reaches only the demo, which then stops them in order). :meth:`Fleet.stop`
terminates each by PID, waits, and kills what did not exit; it is safe to call
twice and is also registered with ``atexit`` by the demo. As a last resort each app
exits by itself when its parent process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from meshsdk import Config

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One process to run: a bookinfo workload on a local port."""

    app: str
    version: str
    name: str
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def specs_from(config: Config) -> list[AppSpec]:
    """The apps of a config: every WorkloadEntry on 127.0.0.1 with an ``http`` port."""
    specs = []
    for resource in config.resources:
        if resource.kind != "WorkloadEntry":
            continue
        spec = resource.spec
        labels = spec.labels
        port = spec.ports.get("http")
        if spec.address != HOST or port is None or "app" not in labels:
            continue
        specs.append(AppSpec(labels["app"], labels.get("version", "v1"), resource.name, port))
    return specs


class FleetError(Exception):
    """An app could not be started (busy port, crash, not listening in time)."""


def port_busy(port: int) -> bool:
    """Whether something holds ``127.0.0.1:port`` (we could not listen on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def listening(port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connect to ``127.0.0.1:port`` succeeds."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


class Fleet:
    """The processes of the demo. ``config_dir`` is what each app's own mesh loads."""

    def __init__(self, specs: list[AppSpec], config_dir: Path) -> None:
        self.specs = specs
        self.config_dir = config_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._admin = httpx.Client(timeout=3.0)
        self.stopped = 0

    def spec(self, name: str) -> AppSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    # -- lifecycle ---------------------------------------------------------------------

    def check_ports(self) -> None:
        """Raise FleetError naming the first port something already holds."""
        for spec in self.specs:
            if port_busy(spec.port) or listening(spec.port, 0.1):
                raise FleetError(
                    f"port {spec.port} on {HOST} (for {spec.name}) is already in use; "
                    "is another demo running? Free the port and try again.")

    def start(self) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="meshsdk-demo-")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                          env.get("PYTHONPATH")]))
        env.pop("NO_COLOR", None)
        for spec in self.specs:
            log = open(Path(self._log_dir.name) / f"{spec.name}.log", "w+b")  # noqa: SIM115
            self._logs[spec.name] = log
            self.procs[spec.name] = subprocess.Popen(
                [sys.executable, "-m", "meshsdk.demo.apps", spec.app, spec.version,
                 "--port", str(spec.port), "--config", str(self.config_dir),
                 "--name", spec.name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until every app listens; seconds taken. FleetError if one died or is late.

        A listening port is not enough: the app answering on it must be *our* process
        (another demo may have taken the port since :meth:`check_ports`).
        """
        start = time.monotonic()
        waiting = list(self.specs)
        while waiting:
            for spec in list(waiting):
                proc = self.procs[spec.name]
                if proc.poll() is not None:
                    raise FleetError(f"{spec.name} exited with code {proc.returncode} "
                                     f"before listening on {spec.address}:\n"
                                     f"{self.log_tail(spec.name)}")
                if listening(spec.port) and self._answers_as(spec, proc.pid):
                    waiting.remove(spec)
            if waiting and time.monotonic() - start > timeout:
                names = ", ".join(f"{s.name} ({s.address})" for s in waiting)
                raise FleetError(f"not listening after {timeout:.0f}s: {names}")
            if waiting:
                time.sleep(0.05)
        return time.monotonic() - start

    def _answers_as(self, spec: AppSpec, pid: int) -> bool:
        try:
            return bool(self.admin(spec.name, "/admin/stats").get("pid") == pid)
        except (httpx.HTTPError, ValueError):
            return False

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self._logs.get(name)
        if log is None:
            return ""
        log.flush()
        log.seek(0)
        text = log.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def stop(self, timeout: float = 3.0) -> int:
        """Terminate every app by PID, wait, kill the stubborn ones; how many were running."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            with contextlib.suppress(OSError):
                proc.terminate()
        end = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(end - time.monotonic(), 0.05))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.stopped += len(running)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
        self._admin.close()
        return len(running)

    # -- the admin API of the apps -------------------------------------------------------

    def admin(self, name: str, path: str, **params: str) -> dict[str, Any]:
        """``GET`` (no params) or ``POST`` an app's admin endpoint, directly (not via a mesh)."""
        url = f"http://{self.spec(name).address}{path}"
        response = self._admin.post(url, params=params) if params else self._admin.get(url)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data
