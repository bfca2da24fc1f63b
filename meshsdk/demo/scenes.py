"""The demo driver: the config service, bookinfo in seven local processes, and seven
scenes of live traffic.

The demo copies ``examples/bookinfo`` to a temporary directory and serves it with the
config service (``python -m meshsdk.controlplane.server``, a child process on free
ports next to the apps'). Every app and the driver build their mesh with
``Mesh.connect``: nothing is loaded from files by the meshes themselves.

The driver is itself a workload (``demo-driver``) with its own embedded mesh. It
calls ``http://reviews:9080/reviews/0`` through ``mesh.client()`` and reads what
the mesh did from each response's ``CallInfo`` (``response.extensions["meshsdk"]``):
which route matched, which endpoint answered, how many attempts it took, which
response flags were set. Between scenes it edits the YAML in the served directory, as
an operator would (:mod:`meshsdk.demo.edits`); the service pushes the new version to
every mesh. Scene 3 times that path, from the file write to the first call routed by
the new rule, under load. The service's version and ``/debug/syncz`` (which meshes
are connected and which version each ACKed) are read over its debug HTTP port.

Every scene is bounded in calls and in time, checks its expectations, and ends in
the summary table; the exit code is 0 only when every scene passed.
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from meshsdk import CallInfo, Config, ConfigError, Mesh, Workload, load_config
from meshsdk.controlplane.filestore import content_hash
from meshsdk.demo.display import Display
from meshsdk.demo.edits import add_file, copy_config, replace_resource
from meshsdk.demo.fleet import (
    HOST,
    AppSpec,
    ConfigService,
    Fleet,
    FleetError,
    check_ports,
    free_port,
    listening,
    specs_from,
)
from meshsdk.telemetry.prometheus import MetricsServer

EXTENSION = "meshsdk"
"""``response.extensions["meshsdk"]``: the :class:`CallInfo` of a mesh call."""
REVIEWS_URL = "http://reviews:9080/reviews/0"
PRODUCTPAGE_URL = "http://productpage:9080/productpage"
REPLICA = "reviews-v1-b"
HEALTHY = "reviews-v1"
CANARY_ROUTE = "canary"
"""The name of the 80/20 rule in ``routes.yaml``: calls it routed ran on the old split."""
SERVICE_PORT = 19090
"""Where the search for the config service's free ports starts (the apps use 19080-)."""
LIVE_WITHIN = 1.0
"""Scene 3: seconds from a file write to the first call on the new split, at most."""
CONVERGE_TIMEOUT = 15.0
"""Seconds to wait for every mesh to take a new version (bounded, generous under load)."""

SCENES: tuple[tuple[str, str], ...] = (
    ("canary 80/20", "the 80/20 canary"),
    ("A/B by header", "A/B by header: end-user jason sees v2"),
    ("live config change", "a config edit on disk under load: live in < 1s, zero failed"),
    ("fault injection", "fault injection: delay and abort"),
    ("retries", "retries save calls to a flaky endpoint"),
    ("outlier detection", "outlier detection ejects an endpoint, then takes it back"),
    ("Istio metrics", "Istio's metrics, scraped from the driver's /metrics"),
)
"""(short name, title) of each scene; the demo prints ``Scene N/7: <title>`` as each
one starts and the short name in the summary."""

SUMMARY_HEADING = "Summary"


def scene_heading(number: int) -> str:
    return f"Scene {number}/{len(SCENES)}: {SCENES[number - 1][1]}"


def _repo_root() -> Path:
    here = Path(__file__).resolve().parents[2]
    return here if (here / "examples" / "bookinfo").is_dir() else Path.cwd()


# --- calls and what the mesh said about them ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call through the driver's mesh, as the demo records it."""

    status: int                 # 0: the client got no response at all
    version: str | None         # reviews' "version" from a 200 answer
    upstream: str | None        # CallInfo.upstream: the endpoint that answered
    flags: str                  # Envoy-style response flags, "-" for none
    attempts: int
    local: bool                 # the mesh answered itself (fault abort, no route ...)
    seconds: float
    started: float
    body: Any = None
    error: str | None = None
    route: str | None = None    # CallInfo.route: the name of the rule that matched

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def has(self, flag: str) -> bool:
        return flag in self.flags.split(",")


def call(client: httpx.Client, url: str = REVIEWS_URL, user: str | None = None) -> Call:
    headers = {"end-user": user} if user else {}
    started = time.monotonic()
    try:
        response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return Call(0, None, None, "-", 0, False, time.monotonic() - started, started,
                    error=f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - started
    info: CallInfo | None = response.extensions.get(EXTENSION)
    body: Any = None
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
    version = body.get("version") if isinstance(body, dict) else None
    if info is None:
        return Call(response.status_code, version, None, "-", 1, False, seconds, started, body,
                    error="no CallInfo on the response (not a mesh call?)")
    return Call(response.status_code, version, info.upstream, info.response_flags,
                info.attempts, info.local_reply, seconds, started, body, route=info.route)


def shares(calls: Sequence[Call]) -> dict[str, float]:
    """Percent of the successful calls answered by each reviews version."""
    counts = Counter(c.version or "?" for c in calls if c.ok)
    total = sum(counts.values())
    return {v: 100.0 * n / total for v, n in sorted(counts.items())} if total else {}


def tolerance(percent: float, n: int) -> float:
    """Four standard deviations of a measured share, in points (at least 1)."""
    if n <= 0:
        return 100.0
    p = percent / 100.0
    return max(1.0, round(400.0 * math.sqrt(p * (1 - p) / n), 1))


def within(measured: dict[str, float], expected: dict[str, float], n: int) -> bool:
    if set(measured) - set(expected):
        return False
    return all(abs(measured.get(v, 0.0) - pct) <= tolerance(pct, n)
               for v, pct in expected.items())


def split_text(split: dict[str, float]) -> str:
    return " / ".join(f"{v} {pct:.1f}%" for v, pct in split.items()) or "no answers"


def expected_text(expected: dict[str, float], n: int) -> str:
    return " / ".join(f"{v} {pct:.0f}%" for v, pct in expected.items()) + (
        f" (±{max(tolerance(p, n) for p in expected.values()):.1f})"
        if any(0 < p < 100 for p in expected.values()) else "")


def _secs(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.2f}s"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class SceneResult:
    number: int
    expected: str
    measured: str
    passed: bool


@dataclass(slots=True)
class Tally:
    """What the driver's mesh reported to its observer over the whole demo."""

    calls: int = 0
    attempts: int = 0
    flags: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, request: httpx.Request, result: object, info: CallInfo) -> None:
        with self.lock:
            self.calls += 1
            self.attempts += max(info.attempts, 1)
            for flag in info.flags:
                self.flags[flag.value] += 1


# --- the demo --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many calls each scene makes (``--quick`` or not)."""

    canary: int
    jason: int
    via_page: int
    update_side: int
    fault_each: int
    flaky: int
    settle: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(canary=400, jason=40, via_page=10, update_side=300, fault_each=60,
                       flaky=60, settle=30)
        return cls(canary=1000, jason=100, via_page=20, update_side=1000, fault_each=200,
                   flaky=150, settle=40)


@dataclass(frozen=True, slots=True)
class Edit:
    """One config edit on disk and how the mesh took it (times in seconds after the write)."""

    written: float              # time.monotonic() when the last file was written
    version: str | None         # the version the driver's mesh runs afterwards
    applied: float | None       # the driver's mesh applied it (mesh.status().last_change)
    acked: float | None         # every subscriber had ACKed it (/debug/syncz)


class Demo:
    """One run of the demo: its configs, processes, driver mesh and scene results."""

    def __init__(self, display: Display, bookinfo: Path, demo_dir: Path, quick: bool) -> None:
        self.out = display
        self.bookinfo = bookinfo
        self.demo_dir = demo_dir
        self.quick = quick
        self.n = Sizes.of(quick)
        self.results: list[SceneResult] = []
        self.tally = Tally()
        self.mesh: Mesh | None = None
        self.client: httpx.Client | None = None
        self.fleet: Fleet | None = None
        self.service: ConfigService | None = None
        self.metrics: MetricsServer | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.config_dir = Path()
        """The served copy of ``bookinfo`` (set by :meth:`run`); the scenes edit it."""
        self._stop_traffic = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- configs ------------------------------------------------------------------------

    def _rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def load_configs(self) -> None:
        """Validate the configs up front (ConfigError) and read the apps to start."""
        self.cfg_canary: Config = load_config(self.bookinfo)
        for name in ("reviews-50-v3.yaml", "reviews-fault.yaml", "reviews-retries.yaml",
                     "destination-rule-reviews.yaml"):
            load_config(self.bookinfo, self.demo_dir / name)  # as the scenes will combine them
        replica = load_config(self.demo_dir / "replica.yaml")
        self.specs: list[AppSpec] = specs_from(self.cfg_canary) + [
            s for s in specs_from(replica) if s.name == REPLICA]

    # -- the whole run --------------------------------------------------------------------

    def run(self) -> int:
        out = self.out
        started = time.monotonic()
        out.line(out.style("meshsdk demo", "bold") + ": Istio's bookinfo as "
                 "local processes, each with its own embedded mesh, fed by the config "
                 f"service serving a copy of {self._rel(self.bookinfo)}")
        try:
            self.load_configs()
        except ConfigError as exc:
            out.line(out.style(f"error: {exc}", "red"))
            return 2
        atexit.register(self.shutdown)
        try:
            try:
                self._start()
            except FleetError as exc:
                out.line(out.style(f"error: {exc}", "bold", "red"))
                return 3
            fleet = self.fleet
            assert fleet is not None
            if not self._first_page():
                return 3
            scenes: list[Callable[[], SceneResult]] = [
                self.scene_canary, self.scene_header, self.scene_update,
                self.scene_faults, self.scene_retries, self.scene_outlier,
                self.scene_metrics]
            for number, scene in enumerate(scenes, 1):
                out.heading(scene_heading(number))
                try:
                    result = scene()
                except Exception as exc:  # a broken scene fails, the others still run
                    out.done()
                    result = SceneResult(number, "-", f"error: {type(exc).__name__}: {exc}",
                                         False)
                out.done()
                out.line(f"  {out.verdict(result.passed)}  {result.measured}")
                self.results.append(result)
                dead = [n for n in fleet.specs if n.name not in fleet.alive()]
                if dead:
                    out.line(out.style("  an app died: " + ", ".join(d.name for d in dead),
                                       "red"))
                    for d in dead:
                        out.line(fleet.log_tail(d.name))
                    break
                if self.service is not None and not self.service.alive():
                    out.line(out.style("  the config service died:", "red"))
                    out.line(self.service.log_tail())
                    break
            return self._summary(time.monotonic() - started)
        except KeyboardInterrupt:
            out.done()
            out.line(out.style("interrupted: stopping the apps and the config service",
                               "yellow"))
            return 130
        finally:
            self.shutdown()

    def _start(self) -> None:
        """Config service, apps, driver mesh: started in that order, each waited for.

        Raises FleetError when a port is busy or a process fails to come up."""
        out = self.out
        check_ports(self.specs)  # before anything starts: a busy app port stops the demo
        app_ports = tuple(s.port for s in self.specs)
        ads = free_port(SERVICE_PORT, app_ports)
        debug = free_port(ads + 1, (*app_ports, ads))
        self._tmp = tempfile.TemporaryDirectory(prefix="meshsdk-demo-")
        root = Path(self._tmp.name)
        self.config_dir = root / "config"
        copy_config(self.bookinfo, self.config_dir)
        (root / "logs").mkdir()
        service = self.service = ConfigService(self.config_dir, ads, debug, root / "logs")
        service.start()
        took = service.wait_ready()
        assert service.proc is not None
        out.line(f"started the config service (pid {service.proc.pid}) after {took:.1f}s: "
                 f"ADS {service.address}, debug {HOST}:{service.debug_port}")
        out.line(f"  serving {self.config_dir} (a copy of {self._rel(self.bookinfo)}), "
                 f"version {service.version()}")
        fleet = self.fleet = Fleet(self.specs, service.address, root / "cache")
        fleet.start()
        self._show_fleet(fleet.wait_ready())
        self.mesh = Mesh.connect(service.address, workload=Workload(
            "demo-driver", "default", {"app": "demo-driver", "version": "v1"},
            service_account="demo-driver"), cache_dir=root / "cache" / "demo-driver",
            wait=CONVERGE_TIMEOUT)
        status = self.mesh.status()
        if status.source != "server":
            raise FleetError(f"the driver's mesh got no config from {service.address}: "
                             f"{status.last_error}")
        self.mesh.add_observer(self.tally.observe)
        self.metrics = self.mesh.serve_metrics(port=0)  # a free port: no clash
        self.client = self.mesh.client()
        version = status.version or "?"
        synced, subscribers = self._wait_acked(version, time.monotonic() + CONVERGE_TIMEOUT)
        out.line(f"the driver's mesh: Mesh.connect(\"{service.address}\") {self._arrow} "
                 f"version {version} from the {status.source}")
        out.line(f"  /debug/syncz: {subscribers} meshes connected ({len(self.specs)} apps and "
                 f"the driver), {synced} ACKed {version}")

    @property
    def _arrow(self) -> str:
        return self.out.glyph("→", "->")

    def shutdown(self) -> None:
        """Stop traffic, close the driver's mesh, stop every app, then the config service;
        safe to call twice."""
        self._stop_traffic.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.mesh is not None:
            self.mesh.close()
            self.mesh = None
        ports: list[int] = []
        count = 0
        if self.fleet is not None:
            fleet = self.fleet
            count = fleet.stop()
            self.fleet = None  # only now: if stop() was interrupted, atexit tries again
            ports += [s.port for s in fleet.specs]
        stopped_service = False
        if self.service is not None:
            service = self.service
            stopped_service = service.stop()
            self.service = None
            ports += [service.port, service.debug_port]
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if count or stopped_service:
            left = [p for p in ports if listening(p)]
            what = f"stopped {count} apps" + (" and the config service" if stopped_service
                                               else "")
            self.out.line(f"{what}; " + (
                f"still listening: {left}" if left else
                f"nothing is left listening on ports {', '.join(map(str, ports))}"))

    # -- start-up -------------------------------------------------------------------------

    def _show_fleet(self, took: float) -> None:
        out = self.out
        assert self.fleet is not None
        out.line(f"started {len(self.specs)} apps, each with Mesh.connect(\"{self.fleet.address}"
                 f"\"), all listening after {took:.1f}s:")
        for spec in self.specs:
            proc = self.fleet.procs[spec.name]
            extra = "  (extra replica: joins the config in scene 5, examples/demo/replica.yaml)" \
                if spec.name == REPLICA else ""
            out.line(f"  {spec.name:<15} {spec.address:<16} pid {proc.pid}{extra}")

    def _first_page(self) -> bool:
        """One page through the whole chain, to show bookinfo is up."""
        out = self.out
        assert self.client is not None
        page = call(self.client, PRODUCTPAGE_URL, user="jason")
        body = page.body if isinstance(page.body, dict) else {}
        reviews = body.get("reviews", {})
        if not page.ok or not isinstance(reviews, dict) or "version" not in reviews:
            out.line(out.style(f"error: productpage answered {page.status} "
                               f"{page.error or body}", "red"))
            return False
        arrow = out.glyph("→", "->")
        stars = reviews.get("stars") or []
        out.line(f"GET {PRODUCTPAGE_URL} (end-user: jason) {arrow} productpage "
                 f"{arrow} details {body.get('details', {}).get('version')} + reviews "
                 f"{reviews['version']}" + (f" {arrow} ratings {self._stars(stars)}"
                                            if stars else ""))
        return True

    # -- helpers --------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        assert self.client is not None
        return self.client

    # -- config edits through the config service ------------------------------------------

    def _wait_acked(self, version: str, until: float) -> tuple[int, int]:
        """Poll ``/debug/syncz`` until every mesh (the apps and the driver) ACKed
        ``version`` or ``until``; (how many did, how many are connected)."""
        assert self.service is not None
        expected = len(self.specs) + 1
        synced = connected = 0
        while True:
            try:
                subs = self.service.subscribers()
            except httpx.HTTPError:
                subs = []
            connected = len(subs)
            synced = sum(s.get("acked_version") == version for s in subs)
            if (synced >= expected and synced == connected) or time.monotonic() >= until:
                return synced, connected
            time.sleep(0.02)

    def _edit(self, *changes: tuple[str, str]) -> Edit:
        """Edit the served directory as a user would, then follow the new version.

        Each change is ``(file in the served directory, file of examples/demo)``: the
        resource of the demo file replaces the one of the same kind and name in that
        file, or the demo file is added when the served one does not exist. Waits
        (bounded) until the driver's mesh runs the new version and every mesh ACKed it.
        """
        assert self.mesh is not None and self.service is not None
        out = self.out
        for target_name, source_name in changes:
            target, source = self.config_dir / target_name, self.demo_dir / source_name
            text = source.read_text(encoding="utf-8")
            if target.exists():
                kind, name = replace_resource(
                    target, text, f"edited by the demo: from examples/demo/{source_name}")
                out.line(f"  edit {target_name}: {kind} {name} {self._arrow} the one in "
                         f"{self._rel(source)}")
            else:
                add_file(target, text)
                out.line(f"  add  {target_name}: a copy of {self._rel(source)}")
        written = time.monotonic()
        digest = content_hash(self.config_dir)[:8]
        end = written + CONVERGE_TIMEOUT
        status = self.mesh.status()
        while not (status.version or "").endswith(f"-{digest}") and time.monotonic() < end:
            time.sleep(0.005)
            status = self.mesh.status()
        version = status.version
        if version is None or not version.endswith(f"-{digest}"):
            out.line(out.style(f"    the driver's mesh did not get the edit within "
                               f"{CONVERGE_TIMEOUT:.0f}s (still on {version}; "
                               f"{status.last_error})", "red"))
            return Edit(written, version, None, None)
        applied = None if status.last_change is None else status.last_change - written
        synced, connected = self._wait_acked(version, end)
        acked = time.monotonic() - written if synced == connected == len(self.specs) + 1 \
            else None
        out.line(f"    config service: version {version}; the driver's mesh applied it "
                 f"{_secs(applied)} after the write; /debug/syncz: {synced} of {connected} "
                 f"meshes ACKed it" + (f" within {acked:.2f}s" if acked is not None else ""))
        return Edit(written, version, applied, acked)

    def _bars(self, split: dict[str, float], counts: Counter[str], indent: str = "    ") -> None:
        out = self.out
        for version, pct in split.items():
            color = {"v1": "blue", "v2": "magenta", "v3": "red"}.get(version, "yellow")
            out.line(f"{indent}{version:<3} {out.style(out.bar(pct / 100.0), color)} "
                     f"{pct:5.1f}%  ({counts[version]})")

    def _live_split(self, label: str, calls: Sequence[Call], total: int) -> None:
        split = shares(calls)
        text = "  ".join(f"{v} {self.out.bar(p / 100, 12)} {p:4.1f}%" for v, p in split.items())
        self.out.progress(f"  {label} {len(calls)}/{total}  {text}")

    def _sequential(self, n: int, label: str, user: str | None = None,
                    url: str = REVIEWS_URL, limit: float = 15.0) -> list[Call]:
        calls: list[Call] = []
        end = time.monotonic() + limit
        client = self._client()
        while len(calls) < n and time.monotonic() < end:
            calls.append(call(client, url, user))
            if url == REVIEWS_URL:
                self._live_split(label, calls, n)
            else:
                self.out.progress(f"  {label} {len(calls)}/{n}")
        self.out.done()
        return calls

    def _parallel(self, n: int, workers: int, user: str | None, limit: float) -> list[Call]:
        """``n`` calls from ``workers`` threads (bounded by ``limit`` seconds)."""
        calls: list[Call] = []
        lock = threading.Lock()
        end = time.monotonic() + limit
        client = self._client()

        def work() -> None:
            while time.monotonic() < end and not self._stop_traffic.is_set():
                with lock:
                    if len(calls) + taken[0] >= n:
                        return
                    taken[0] += 1
                c = call(client, REVIEWS_URL, user)
                with lock:
                    taken[0] -= 1
                    calls.append(c)

        taken = [0]
        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            self.out.progress(f"  {len(calls)}/{n} calls ...")
            time.sleep(0.05)
        self.out.done()
        return calls

    def _stars(self, stars: Sequence[Any]) -> str:
        star, hollow = self.out.glyph("★", "*"), self.out.glyph("☆", "-")
        return " ".join(star * s + hollow * (5 - s) for s in stars if isinstance(s, int))

    def _ticker_lines(self, calls: Sequence[Call], indent: str = "    ",
                      width: int = 72) -> None:
        for i in range(0, len(calls), width):
            self.out.line(indent + self._ticker(calls[i:i + width]))

    def _ticker(self, calls: Sequence[Call]) -> str:
        """One character per call: ``.`` healthy v1, ``R`` replica, ``r`` retried after the
        replica failed, ``x`` failed call."""
        replica = self._replica_address()
        out = []
        for c in calls:
            if not c.ok:
                out.append(self.out.style("x", "bold", "red"))
            elif c.attempts > 1:
                out.append(self.out.style("r", "yellow"))
            elif c.upstream == replica:
                out.append(self.out.style("R", "green"))
            else:
                out.append(self.out.style(".", "dim"))
        return "".join(out)

    def _replica_address(self) -> str:
        assert self.fleet is not None
        return self.fleet.spec(REPLICA).address

    def _healthy_address(self) -> str:
        assert self.fleet is not None
        return self.fleet.spec(HEALTHY).address

    # -- scene 1 --------------------------------------------------------------------------

    def scene_canary(self) -> SceneResult:
        out = self.out
        out.line(f"  routes.yaml, as the config service pushed it: reviews {self._arrow}"
                 " 80% v1, 20% v3 (the 'canary' route); "
                 f"{self.n.canary} calls to {REVIEWS_URL}")
        t0 = time.monotonic()
        calls = self._sequential(self.n.canary, "calls")
        took = time.monotonic() - t0
        split = shares(calls)
        self._bars(split, Counter(c.version or "?" for c in calls if c.ok))
        failed = sum(not c.ok for c in calls)
        expected = {"v1": 80.0, "v3": 20.0}
        out.line(f"    {len(calls)} calls in {took:.1f}s, {failed} failed")
        return SceneResult(1, expected_text(expected, len(calls)),
                           f"{split_text(split)}, {failed} failed",
                           len(calls) == self.n.canary and failed == 0
                           and within(split, expected, len(calls)))

    # -- scene 2 --------------------------------------------------------------------------

    def scene_header(self) -> SceneResult:
        out = self.out
        out.line("  routes.yaml's first rule matches the header end-user: jason "
                 f"{out.glyph('→', '->')} v2 (which calls ratings through its own mesh)")
        calls = self._sequential(self.n.jason, "calls as jason", user="jason")
        split = shares(calls)
        self._bars(split, Counter(c.version or "?" for c in calls if c.ok))
        with_stars = sum(1 for c in calls if c.ok and isinstance(c.body, dict)
                         and c.body.get("stars"))
        sample: list[Any] = next((c.body["stars"] for c in calls if c.ok
                                  and isinstance(c.body, dict) and c.body.get("stars")), [])
        out.line(f"    {with_stars}/{len(calls)} answers carry ratings from the ratings "
                 f"service: {self._stars(sample)}")
        out.line(f"  and via productpage, whose own mesh routes on the forwarded header: "
                 f"{self.n.via_page} pages as jason, {self.n.via_page} anonymous")
        pages_j = self._sequential(self.n.via_page, "pages as jason", user="jason",
                                   url=PRODUCTPAGE_URL)
        pages_a = self._sequential(self.n.via_page, "pages anonymous", url=PRODUCTPAGE_URL)

        def page_versions(pages: list[Call]) -> Counter[str]:
            return Counter(str(p.body.get("reviews", {}).get("version", "error"))
                           if p.ok and isinstance(p.body, dict) else "failed" for p in pages)

        pv_j, pv_a = page_versions(pages_j), page_versions(pages_a)
        def fmt(versions: Counter[str]) -> str:
            return ", ".join(f"{v}{out.times}{n}" for v, n in sorted(versions.items()))

        out.line(f"    jason sees reviews {fmt(pv_j)}; anonymous sees {fmt(pv_a)}")
        failed = sum(not c.ok for c in calls)
        passed = (len(calls) == self.n.jason and failed == 0 and split == {"v2": 100.0}
                  and with_stars == len(calls) and set(pv_j) == {"v2"}
                  and sum(pv_j.values()) == self.n.via_page
                  and set(pv_a) <= {"v1", "v3"} and sum(pv_a.values()) == self.n.via_page)
        return SceneResult(2, "jason: v2 only, rated; pages too",
                           f"{split_text(split)}, {with_stars}/{len(calls)} rated; pages: "
                           f"{'+'.join(sorted(pv_j))} | {'+'.join(sorted(pv_a))}", passed)

    # -- scene 3 --------------------------------------------------------------------------

    def scene_update(self) -> SceneResult:
        """Edit routes.yaml on disk while four threads call without pause: the service
        pushes the 50/50 split to every mesh; no call fails, and the first call routed
        by the new rule comes back well within a second of the write."""
        out = self.out
        workers, side = 4, self.n.update_side
        out.line(f"  {workers} threads send calls without pause; after {side} calls the demo "
                 "edits routes.yaml in the served directory to a 50/50 split, as Istio's "
                 "virtual-service-reviews-50-v3.yaml")
        records: list[Call] = []
        lock = threading.Lock()
        in_flight = [0]
        end = time.monotonic() + 20.0 + CONVERGE_TIMEOUT
        client = self._client()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set() and not self._stop_traffic.is_set() \
                    and time.monotonic() < end:
                with lock:
                    in_flight[0] += 1
                c = call(client)
                with lock:
                    in_flight[0] -= 1
                    records.append(c)

        def on_new_split() -> list[Call]:
            with lock:
                return [c for c in records if c.ok and c.route != CANARY_ROUTE]

        threads = [threading.Thread(target=work, name=f"traffic-{i}", daemon=True)
                   for i in range(workers)]
        self._threads.extend(threads)
        for t in threads:
            t.start()
        try:
            while len(records) < side and time.monotonic() < end:
                with lock:
                    self._live_split("before:", list(records), side)
                time.sleep(0.02)
            out.done()
            with lock:
                flying = in_flight[0]
            out.line(f"  {flying} calls in flight as the file is written; traffic keeps flowing")
            edit = self._edit(("routes.yaml", "reviews-50-v3.yaml"))
            while time.monotonic() < end:  # poll: the threads' calls, until enough are new
                after = on_new_split()
                self._live_split("after: ", after, side)
                if len(after) >= side:
                    break
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
                self._threads.remove(t)
        out.done()
        before = [c for c in records if c.route == CANARY_ROUTE]
        after = [c for c in records if c.ok and c.route != CANARY_ROUTE]
        failed = [c for c in records if not c.ok]
        first = min(after, key=lambda c: c.ended, default=None)
        live = None if first is None else first.ended - edit.written
        # once a call came back on the new split, no call started later may use the old one
        stale = [c for c in before if first is not None and c.started > first.ended]
        for label, group in (("on the 80/20 rule", before), ("on the new 50/50 rule", after)):
            out.line(f"    {label} ({len(group)} calls):")
            self._bars(shares(group), Counter(c.version or "?" for c in group if c.ok), "      ")
        live_ok = live is not None and live < LIVE_WITHIN
        out.line("    first call routed by the new rule came back "
                 + out.style(f"{_secs(live)} after the file write", "bold",
                             "green" if live_ok else "red")
                 + f" (watcher, push, mesh.update, call; must be < {LIVE_WITHIN:g}s)")
        out.line(f"    {len(records)} calls in all, "
                 + out.style(f"{len(failed)} failed", "bold", "green" if not failed else "red")
                 + (f", {len(stale)} on the old rule after the switch" if stale else ""))
        for c in failed[:3]:
            out.line(f"      failed: {c.status} {c.flags} {c.error or ''}")
        exp_b, exp_a = {"v1": 80.0, "v3": 20.0}, {"v1": 50.0, "v3": 50.0}
        passed = (not failed and not stale and live_ok and edit.applied is not None
                  and len(before) >= side // 2 and len(after) >= side
                  and within(shares(before), exp_b, len(before))
                  and within(shares(after), exp_a, len(after)))
        sb, sa = shares(before), shares(after)
        return SceneResult(
            3, f"0 failed; 80/20 ±{tolerance(20, len(before)):.0f}, "
               f"then 50/50 ±{tolerance(50, len(after)):.0f}; live < {LIVE_WITHIN:g}s",
            f"{len(failed)} failed of {len(records)}; {sb.get('v1', 0):.0f}/"
            f"{sb.get('v3', 0):.0f} then {sa.get('v1', 0):.0f}/{sa.get('v3', 0):.0f}; "
            f"live in {_secs(live)}", passed)

    # -- scene 4 --------------------------------------------------------------------------

    def scene_faults(self) -> SceneResult:
        out = self.out
        edit = self._edit(("routes.yaml", "reviews-fault.yaml"))
        out.line("  for end-user jason: fault.delay 200ms on 100%, fault.abort 503 on 50%; "
                 "everyone else: untouched")
        n = self.n.fault_each
        workers = max(10, n // 5)  # about one second of 200ms calls
        jason = self._parallel(n, workers, "jason", limit=15.0)
        others = self._sequential(n, "everyone else", limit=15.0)
        aborted = [c for c in jason if c.status == 503 and c.local and c.has("FI")]
        delayed = [c for c in jason if c.has("DI") and c.seconds >= 0.195]
        served = [c for c in jason if c.ok and c.version == "v2"]
        abort_pct = 100.0 * len(aborted) / len(jason) if jason else 0.0
        lat_j = [c.seconds * 1000 for c in jason]
        lat_o = [c.seconds * 1000 for c in others]
        flags_j = Counter(f for c in jason for f in c.flags.split(",") if f != "-")
        flags_o = Counter(f for c in others for f in c.flags.split(",") if f != "-")

        def flag_text(flags: Counter[str], total: int) -> str:
            return ", ".join(f"{f} on {k}/{total}" for f, k in sorted(flags.items())) or "none"

        def row(who: str, calls: list[Call], lat: list[float], abort: int,
                flags: Counter[str]) -> None:
            pct = 100.0 * abort / len(calls) if calls else 0.0
            out.line(f"    {who:<16} {len(calls)} calls  p50 {percentile(lat, .5):4.0f} ms  "
                     f"min {min(lat, default=0):4.0f} ms  aborted {abort:>3} ({pct:3.0f}%)  "
                     f"flags: {flag_text(flags, len(calls))}")

        row("end-user: jason", jason, lat_j, len(aborted), flags_j)
        row("everyone else", others, lat_o, sum(c.status == 503 for c in others), flags_o)
        abort_ok = abs(abort_pct - 50.0) <= tolerance(50.0, len(jason))
        clean_others = all(c.ok and c.version == "v1" and c.flags == "-" for c in others)
        passed = (edit.applied is not None and len(jason) == n and len(others) == n
                  and len(delayed) == n and abort_ok and len(aborted) + len(served) == n
                  and clean_others)
        return SceneResult(
            4, f"DI all >=200ms, FI 50% ±{tolerance(50.0, n):.0f}; others clean",
            f"DI {len(delayed)}/{len(jason)}, FI {abort_pct:.0f}%; others "
            f"{sum(c.ok and c.flags == '-' for c in others)}/{len(others)} clean", passed)

    # -- scene 5 --------------------------------------------------------------------------

    def scene_retries(self) -> SceneResult:
        out = self.out
        assert self.fleet is not None
        replica, healthy = self._replica_address(), self._healthy_address()
        out.line(f"  {REPLICA} ({replica}) joins reviews v1 next to {HEALTHY} ({healthy}); "
                 "route: v1 with retries {attempts: 2, retryOn: 5xx}")
        edit = self._edit(("replica.yaml", "replica.yaml"),
                          ("destination-rules.yaml", "destination-rule-reviews.yaml"),
                          ("routes.yaml", "reviews-retries.yaml"))
        self.fleet.admin(REPLICA, "/admin/mode", m="flaky", every="3")
        out.line(f"  {REPLICA} now answers 503 to every 3rd request it receives")
        calls = self._sequential(self.n.flaky, "calls")
        stats = self.fleet.admin(REPLICA, "/admin/stats")
        failures = int(stats["failures"])
        failed = sum(not c.ok for c in calls)
        retried = sum(c.attempts > 1 for c in calls)
        by_upstream = Counter(c.upstream for c in calls if c.ok)
        self._ticker_lines(calls)
        out.line("    (. answered by reviews-v1, R by the replica, r retried after the replica "
                 "failed, x failed)")
        out.line(f"    answered by {healthy}: {by_upstream[healthy]}, by {replica}: "
                 f"{by_upstream[replica]}; {retried} calls took 2 attempts")
        out.line("    " + out.style(f"{failures} upstream failures, {failed} failed calls",
                                    "bold", "green" if not failed and failures else "red"))
        passed = (edit.applied is not None and len(calls) == self.n.flaky and failed == 0
                  and failures > 0 and retried == failures)
        return SceneResult(5, "upstream failures, 0 failed calls",
                           f"{failures} upstream failures, {failed} failed calls", passed)

    # -- scene 6 --------------------------------------------------------------------------

    def scene_outlier(self) -> SceneResult:
        out = self.out
        assert self.fleet is not None
        fleet = self.fleet
        replica, healthy = self._replica_address(), self._healthy_address()
        client = self._client()
        out.line("  demo/destination-rule-reviews.yaml: outlierDetection consecutive5xxErrors 3, "
                 "interval 1s, baseEjectionTime 2s, maxEjectionPercent 50")
        # Start from a clean slate: the replica answers normally until one of its answers
        # resets the consecutive-5xx count scene 5 may have left on it.
        fleet.admin(REPLICA, "/admin/mode", m="ok")
        for _ in range(50):
            if call(client).upstream == replica:
                break
        fleet.admin(REPLICA, "/admin/mode", m="fail")
        out.line(f"  {REPLICA} now answers 503 to every request")
        # Phase 1: calls until the replica has been left alone for `quiet` calls in a row.
        quiet = 20
        calls: list[Call] = []
        last_failure_at: float | None = None
        streak = 0
        end = time.monotonic() + 8.0
        while time.monotonic() < end and len(calls) < 400:
            c = call(client)
            calls.append(c)
            touched = c.attempts > 1 or c.upstream == replica or not c.ok
            if touched:
                streak = 0
                if c.attempts > 1 or not c.ok:
                    last_failure_at = c.started + c.seconds
            else:
                streak += 1
            self.out.progress(f"  {self._ticker(calls[-60:])}")
            if last_failure_at is not None and streak >= quiet:
                break
        out.done()
        failures = int(fleet.admin(REPLICA, "/admin/stats")["failures"])
        ejected = last_failure_at is not None and streak >= quiet
        self._ticker_lines(calls)
        out.line(f"    {failures} failures on {REPLICA}, each retried on {HEALTHY}; then "
                 f"{streak} calls in a row never touched it: ejected" if ejected
                 else f"    not ejected after {len(calls)} calls")
        # Phase 2: while ejected, the replica receives nothing.
        before = int(fleet.admin(REPLICA, "/admin/stats")["requests"])
        window: list[Call] = []
        while len(window) < self.n.settle and (
                last_failure_at is None or time.monotonic() - last_failure_at < 1.2):
            window.append(call(client))  # well inside the 2s ejection
        received = int(fleet.admin(REPLICA, "/admin/stats")["requests"]) - before
        upstreams = Counter(c.upstream for c in window)
        out.line(f"    next {len(window)} calls: CallInfo.upstream = "
                 + ", ".join(f"{u} {out.times}{k}" for u, k in upstreams.items())
                 + f"; {REPLICA} received {received}")
        # Phase 3: heal it; it is back after baseEjectionTime, at the next interval tick.
        fleet.admin(REPLICA, "/admin/mode", m="ok")
        healed_at = time.monotonic()
        anchor = last_failure_at or healed_at
        out.line(f"  {REPLICA} healed at +{healed_at - anchor:.1f}s after its ejection; "
                 "waiting for it to get traffic again")
        back_at: float | None = None
        waited: list[Call] = []
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            c = call(client)
            waited.append(c)
            if c.upstream == replica and c.ok:
                back_at = c.started
                break
            self.out.progress(f"    +{time.monotonic() - anchor:.1f}s  {len(waited)} calls, "
                              f"all to {healthy}")
            time.sleep(0.02)
        out.done()
        back_after = None if back_at is None else back_at - anchor
        if back_after is not None:
            out.line(f"    back in service at +{back_after:.1f}s (baseEjectionTime 2s, "
                     f"checked every 1s); {len(waited) - 1} calls went to {healthy} meanwhile")
        else:
            out.line(out.style(f"    {REPLICA} got no traffic within 8s", "red"))
        after = [call(client) for _ in range(self.n.settle)]
        spread = Counter(c.upstream for c in after if c.ok)
        out.line(f"    next {len(after)} calls: " + ", ".join(
            f"{u} {out.times}{k}" for u, k in sorted(spread.items(), key=lambda kv: str(kv[0]))))
        failed = sum(not c.ok for c in (*calls, *window, *waited, *after))
        passed = (ejected and failures == 3 and received == 0
                  and set(upstreams) == {healthy} and back_after is not None
                  and 1.9 <= back_after <= 4.0 and spread[replica] > 0
                  and spread[healthy] > 0 and failed == 0)
        back = "never" if back_after is None else f"{back_after:.1f}s"
        return SceneResult(
            6, "ejected after 3 5xx, 0 calls to it, back in 2-3s",
            f"{'ejected' if ejected else 'NOT ejected'} after {failures} 5xx, "
            f"{received} calls to it, back in {back}"
            + (f", {failed} failed" if failed else ""), passed)

    # -- scene 7: the summary --------------------------------------------------------------

    def scene_metrics(self) -> SceneResult:
        """What Prometheus would scrape from the driver: Istio's own metric names and
        labels, counting every call of the run exactly once."""
        out = self.out
        assert self.metrics is not None
        text = httpx.get(self.metrics.url, timeout=10.0).text
        rows: Counter[tuple[str, str, str, str]] = Counter()
        names: set[str] = set()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            if family.name != "istio_requests":
                continue
            for sample in family.samples:
                labels = sample.labels
                rows[(labels["destination_service_name"], labels["destination_version"],
                      labels["response_code"], labels["response_flags"])] += int(sample.value)
        counted = sum(rows.values())
        out.line(f"  GET {self.metrics.url}  (Istio's names; a Prometheus text parser reads it)")
        out.line("    istio_requests_total{reporter=\"source\", source_workload=\"demo-driver\"}"
                 " by destination and outcome:")
        for (service, version, code, flags), n in rows.most_common(8):
            out.line(f"    {service:<10} {version:<8} {code:>3} {flags:<8} {n:>6}")
        if len(rows) > 8:
            out.line(f"    ... {len(rows) - 8} more series")
        with self.tally.lock:
            made = self.tally.calls
        wanted = {"istio_requests", "istio_request_duration_milliseconds",
                  "istio_request_bytes", "istio_response_bytes"}
        passed = counted == made and wanted <= names
        return SceneResult(7, "4 Istio metrics; every call counted once",
                           f"{len(wanted & names)} metrics, {counted} counted of {made} calls",
                           passed)

    def _summary(self, took: float) -> int:
        out = self.out
        out.heading(SUMMARY_HEADING)
        header = ("#", "scene", "expected", "measured", "result")
        plain = [(str(r.number), SCENES[r.number - 1][0], r.expected, r.measured,
                  "PASS" if r.passed else "FAIL") for r in self.results]
        rows = [(*p[:4], out.verdict(r.passed)) for p, r in zip(plain, self.results,
                                                               strict=True)]
        out.table(header, rows, plain)
        with self.tally.lock:
            flags = ", ".join(f"{f}{out.times}{k}" for f, k in sorted(self.tally.flags.items()))
            out.line()
            out.line(f"  the driver's mesh observed {self.tally.calls} calls "
                     f"({self.tally.attempts} attempts); response flags: {flags or 'none'}")
        if self.service is not None:
            try:
                version = self.service.version()
                subs = self.service.subscribers()
                synced = sum(s.get("acked_version") == version for s in subs)
                out.line(f"  the config service serves version {version}; /debug/syncz: "
                         f"{len(subs)} meshes connected, {synced} on that version")
            except httpx.HTTPError as exc:
                out.line(f"  the config service did not answer: {exc}")
        passed = sum(r.passed for r in self.results)
        all_ok = passed == len(SCENES)
        out.line(f"  {passed}/{len(SCENES)} scenes passed in {took:.1f}s: "
                 + (out.style("all PASS", "bold", "green") if all_ok
                    else out.style("some scenes FAILED", "bold", "red")))
        return 0 if all_ok else 1


# --- entry point -------------------------------------------------------------------------


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP become SystemExit, so ``finally`` blocks stop the apps."""
    def raise_exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watchdog(seconds: float, demo: Demo) -> threading.Timer:
    """Last resort against a hung call: stop the apps and exit after ``seconds``."""
    def fire() -> None:
        demo.out.line(f"error: the demo did not finish within {seconds:.0f}s; stopping")
        fleet, service = demo.fleet, demo.service
        if fleet is not None:
            fleet.stop()
        if service is not None:
            service.stop()
        os._exit(4)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: Sequence[str] | None = None) -> int:
    root = _repo_root()
    parser = argparse.ArgumentParser(
        prog="python -m meshsdk.demo",
        description="Bookinfo as local processes with embedded meshes fed by the config "
                    "service, and seven scenes of live traffic: canary, header routing, a "
                    "config edit on disk under load, faults, retries and outlier detection.")
    parser.add_argument("--quick", action="store_true", help="fewer calls (for tests)")
    parser.add_argument("--no-color", action="store_true", help="plain text output")
    parser.add_argument("--config", type=Path, default=root / "examples" / "bookinfo",
                        help="the bookinfo config directory; a temporary copy of it is "
                             "served (default: %(default)s)")
    parser.add_argument("--demo-config", type=Path, default=root / "examples" / "demo",
                        help="the scenes' extra YAML (default: %(default)s)")
    args = parser.parse_args(argv)
    display = Display(sys.stdout, color=False if args.no_color else None)
    demo = Demo(display, args.config, args.demo_config, args.quick)
    timer = _watchdog(240.0, demo)
    try:
        with _exit_on_sigterm():
            return demo.run()
    finally:
        timer.cancel()
