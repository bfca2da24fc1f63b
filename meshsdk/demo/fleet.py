"""The demo's processes: the config service, and one bookinfo app per WorkloadEntry.

:class:`ConfigService` runs ``python -m meshsdk.controlplane.server`` on a temporary
copy of the bookinfo config, on free ports next to the apps', and reads its debug
HTTP port (``/readyz``, ``/debug/syncz``, ``/debug/config_dump``). Every app runs as
``python -m meshsdk.demo.apps --connect ADDRESS``: its embedded mesh is fed by that
service (``Mesh.connect``), not by files.

Each process runs in its own session (a Ctrl-C in the terminal reaches only the demo,
which then stops them in order: apps first, the service last). ``stop()`` terminates
by PID, waits, and kills what did not exit; it is safe to call twice and the demo also
registers it with ``atexit``. As a last resort each app exits by itself when its
parent process is gone.
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


def check_ports(specs: list[AppSpec]) -> None:
    """Raise FleetError naming the first app port something already holds."""
    for spec in specs:
        if port_busy(spec.port) or listening(spec.port, 0.1):
            raise FleetError(
                f"port {spec.port} on {HOST} (for {spec.name}) is already in use; "
                "is another demo running? Free the port and try again.")


def free_port(start: int, taken: tuple[int, ...] = (), tries: int = 50) -> int:
    """The first port from ``start`` on that nothing holds (and not in ``taken``)."""
    for port in range(start, start + tries):
        if port not in taken and not port_busy(port) and not listening(port, 0.1):
            return port
    raise FleetError(f"no free port on {HOST} in {start}-{start + tries - 1}")


def _child_env() -> dict[str, str]:
    """The environment of a child: this checkout importable, no NO_COLOR."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.pop("NO_COLOR", None)
    return env


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Terminate one process by PID, kill it if it is late; whether it was running."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return True


def _tail(log: IO[bytes] | None, lines: int) -> str:
    if log is None or log.closed:
        return ""
    log.flush()
    log.seek(0)
    text = log.read().decode("utf-8", "replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


class ConfigService:
    """The config service of the demo, as a child process serving ``config_dir``.

    ``port`` is the ADS (gRPC) port, ``debug_port`` its debug HTTP port; both on
    127.0.0.1. :meth:`stop` ends it by PID (safe to call twice).
    """

    def __init__(self, config_dir: Path, port: int, debug_port: int, log_dir: Path) -> None:
        self.config_dir = config_dir
        self.port = port
        self.debug_port = debug_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = log_dir / "config-service.log"
        self._log: IO[bytes] | None = None
        self._http = httpx.Client(timeout=5.0)

    @property
    def address(self) -> str:
        """What ``Mesh.connect`` takes: ``127.0.0.1:<ADS port>``."""
        return f"{HOST}:{self.port}"

    @property
    def debug_url(self) -> str:
        return f"http://{HOST}:{self.debug_port}"

    def start(self) -> None:
        self._log = open(self._log_path, "w+b")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshsdk.controlplane.server", "--config",
             str(self.config_dir), "--host", HOST, "--port", str(self.port),
             "--debug-port", str(self.debug_port), "--exit-with-parent"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=_child_env(), start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until ``/readyz`` answers 200; seconds taken. FleetError if it died or is late."""
        assert self.proc is not None
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise FleetError(f"the config service exited with code {self.proc.returncode}"
                                 f":\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(self.debug_url + "/readyz").status_code == 200:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise FleetError(f"the config service is not ready after {timeout:.0f}s:\n"
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def debug(self, path: str) -> Any:
        """``GET`` a debug endpoint (``/debug/syncz`` ...): its JSON."""
        response = self._http.get(self.debug_url + path)
        response.raise_for_status()
        return response.json()

    def version(self) -> str:
        """The version the service serves (``/debug/config_dump``)."""
        return str(self.debug("/debug/config_dump").get("version"))

    def subscribers(self) -> list[dict[str, Any]]:
        """``/debug/syncz``: one entry per connected mesh."""
        data = self.debug("/debug/syncz")
        return data if isinstance(data, list) else []

    def log_tail(self, lines: int = 15) -> str:
        return _tail(self._log, lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> bool:
        """Terminate it by PID (kill if late); whether it was running."""
        was_running = self.proc is not None and _stop_process(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._http.close()
        return was_running


class Fleet:
    """The bookinfo apps of the demo, each with a mesh fed by the config service at
    ``address``; each app caches its config under ``cache_root/<name>``."""

    def __init__(self, specs: list[AppSpec], address: str, cache_root: Path) -> None:
        self.specs = specs
        self.address = address
        self.cache_root = cache_root
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
        check_ports(self.specs)

    def start(self) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="meshsdk-demo-")
        env = _child_env()
        for spec in self.specs:
            log = open(Path(self._log_dir.name) / f"{spec.name}.log", "w+b")  # noqa: SIM115
            self._logs[spec.name] = log
            self.procs[spec.name] = subprocess.Popen(
                [sys.executable, "-m", "meshsdk.demo.apps", spec.app, spec.version,
                 "--port", str(spec.port), "--connect", self.address,
                 "--cache-dir", str(self.cache_root / spec.name), "--name", spec.name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

    def wait_ready(self, timeout: float = 40.0) -> float:
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
        return _tail(self._logs.get(name), lines)

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
            _stop_process(proc, max(end - time.monotonic(), 0.05))
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
