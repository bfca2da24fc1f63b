"""ConfigStore and its Debouncer: pure timing rules with a fake clock, then real files
watched by real watchfiles (bounded polling, never fixed sleeps for results)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk.config.resource import Config
from meshsdk.controlplane.filestore import ConfigStore, Debouncer, content_hash
from meshsdk.errors import ConfigError
from meshsdk.testing.clock import FakeClock
from tests.controlplane.conftest import wait_for


def vs(name: str, timeout: str = "5s", *, host: str | None = None) -> str:
    """A minimal VirtualService; ``timeout`` lands on line 10."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: [{host or name}]
  http:
  - route:
    - destination: {{host: {host or name}}}
    timeout: {timeout}
"""


class Recorder:
    """A subscriber that keeps every (config, version) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Config, str]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, config: Config, version: str) -> None:
        with self._lock:
            self.calls.append((config, version))
            self.threads.add(threading.current_thread().name)

    @property
    def versions(self) -> list[str]:
        with self._lock:
            return [v for _, v in self.calls]


def timeouts(config: Config) -> dict[str, str]:
    return {r.name: str(r.spec.http[0].timeout) for r in config.of_kind("VirtualService")}


def names(config: Config) -> set[str]:
    return {r.name for r in config.resources}


# --- Debouncer: pure --------------------------------------------------------------------


def test_debouncer_waits_for_a_quiet_period() -> None:
    clock = FakeClock(0.0)
    d = Debouncer(quiet=0.1, max_delay=10.0, clock=clock)
    assert not d.pending and d.next_deadline() is None and not d.due()
    d.event()
    clock.advance(0.05)
    d.event()
    assert d.next_deadline() == pytest.approx(0.15)
    clock.advance(0.09)
    assert not d.due()
    clock.advance(0.02)
    assert d.due() and d.take()
    assert not d.pending and not d.take()


def test_debouncer_caps_a_constant_stream_at_max_delay() -> None:
    clock = FakeClock(0.0)
    d = Debouncer(quiet=0.1, max_delay=10.0, clock=clock)
    applied: list[float] = []
    for _ in range(500):              # an edit every 50 ms for 25 s
        d.event()
        if d.take():
            applied.append(clock.now())
        clock.advance(0.05)
    assert applied == pytest.approx([10.0, 20.05])
    # The stream stopped at 24.95: the rest goes out one quiet period later.
    assert d.next_deadline() == pytest.approx(24.95 + 0.1)


def test_debouncer_separate_bursts_and_explicit_times() -> None:
    d = Debouncer(quiet=0.1, max_delay=1.0, clock=lambda: pytest.fail("clock not used"))
    d.event(5.0)
    assert not d.take(5.09)
    assert d.take(5.1)
    d.event(7.0)
    assert d.events == 1 and d.next_deadline() == pytest.approx(7.1)
    d.event(7.05)
    assert d.take(7.15) and d.events == 0


def test_debouncer_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Debouncer(quiet=2.0, max_delay=1.0)
    with pytest.raises(ValueError):
        Debouncer(quiet=-1.0)


# --- ConfigStore: real files, real watcher ------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "team").mkdir(parents=True)
    (root / "reviews.yaml").write_text(vs("reviews"))
    (root / "team" / "ratings.yml").write_text(vs("ratings"))
    return root


@pytest.fixture
def store(config_dir: Path) -> Iterator[ConfigStore]:
    with ConfigStore(config_dir) as s:
        yield s
    assert not s.running


def test_initial_load(store: ConfigStore, config_dir: Path) -> None:
    config, version = store.current
    assert names(config) == {"reviews", "ratings"}
    assert version == f"v1-{content_hash(config_dir)[:8]}"
    assert store.last_error is None and store.running


def test_invalid_initial_directory_raises(config_dir: Path) -> None:
    (config_dir / "reviews.yaml").write_text(vs("reviews", "soon"))
    store = ConfigStore(config_dir)
    with pytest.raises(ConfigError, match=r"reviews\.yaml:10"):
        store.start()
    assert not store.running


def test_edit_delivers_a_new_version(store: ConfigStore, config_dir: Path) -> None:
    seen = Recorder()
    store.subscribe(seen)
    v1 = store.version
    (config_dir / "reviews.yaml").write_text(vs("reviews", "9s"))
    wait_for(lambda: bool(seen.calls), "a pushed version")
    config, version = seen.calls[-1]
    assert version.startswith("v2-") and version != v1
    assert timeouts(config) == {"reviews": timeouts_of(9), "ratings": timeouts_of(5)}
    assert store.current == (config, version)
    assert seen.threads == {f"configstore:{config_dir}"}


def test_invalid_edit_keeps_serving_then_fix_clears(store: ConfigStore,
                                                     config_dir: Path) -> None:
    seen = Recorder()
    store.subscribe(seen)
    v1 = store.version
    bad = config_dir / "team" / "ratings.yml"
    bad.write_text(vs("ratings", "soon"))
    wait_for(lambda: store.last_error is not None, "the error to be exposed")
    error = store.last_error
    assert error is not None
    assert error.files == (str(bad),)
    assert f"{bad}:10" in error.message and str(bad) in error.changed
    assert error.serving == v1 and error.attempted_at <= time.time()
    assert store.version == v1 and seen.calls == []

    bad.write_text(vs("ratings", "2s"))
    wait_for(lambda: store.version != v1, "the fixed version")
    assert store.last_error is None
    assert store.version.startswith("v2-") and seen.versions == [store.version]


def test_half_written_save_is_retried_not_reported(
        config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = config_dir / "reviews.yaml"
    text = vs("reviews", "7s")
    with ConfigStore(config_dir, quiet=0.3) as store, path.open("w") as f:
        f.write(text[:60])            # the editor has written half the file...
        f.flush()
        wait_for(lambda: store.attempts >= 1, "the first (failing) attempt")
        f.write(text[60:])            # ...and finishes within one quiet period
        f.flush()
        wait_for(lambda: store.version.startswith("v2-"), "the completed save")
        assert store.last_error is None
    assert not [r for r in caplog.records if "rejected" in r.getMessage()]


def test_burst_of_writes_is_applied_once_or_twice(store: ConfigStore,
                                                  config_dir: Path) -> None:
    seen = Recorder()
    store.subscribe(seen)
    path = config_dir / "reviews.yaml"
    for i in range(20):
        path.write_text(vs("reviews", f"{i + 1}s"))
    wait_for(lambda: timeouts(store.current.config)["reviews"] == timeouts_of(20),
             "the last write to be served")
    assert 1 <= len(seen.calls) <= 2 and store.attempts <= 3
    assert seen.versions[-1] == store.version


def timeouts_of(seconds: int) -> str:
    """The rendering of a ``<seconds>s`` timeout, computed the way the test reads it."""
    from meshsdk.config.loader import load_string

    return str(load_string(vs("x", f"{seconds}s")).resources[0].spec.http[0].timeout)


def test_removing_a_file_removes_its_resources(store: ConfigStore, config_dir: Path) -> None:
    (config_dir / "team" / "ratings.yml").unlink()
    wait_for(lambda: names(store.current.config) == {"reviews"}, "ratings to go")
    (config_dir / "reviews.yaml").unlink()
    wait_for(lambda: names(store.current.config) == set(), "an empty config")
    assert store.version.startswith("v3-") and store.last_error is None


def test_touch_without_change_publishes_nothing(store: ConfigStore, config_dir: Path) -> None:
    seen = Recorder()
    store.subscribe(seen)
    (config_dir / "reviews.yaml").write_text(vs("reviews"))    # same bytes
    (config_dir / "new.yaml").write_text(vs("details"))         # a real change after it
    wait_for(lambda: bool(seen.calls), "the real change")
    assert len(seen.calls) == 1 and "details" in names(seen.calls[0][0])


def test_subscribe_replay_and_unsubscribe(store: ConfigStore, config_dir: Path) -> None:
    replayed, kept, dropped = Recorder(), Recorder(), Recorder()
    store.subscribe(replayed, replay=True)
    assert replayed.versions == [store.version]
    store.subscribe(kept)
    unsubscribe = store.subscribe(dropped)
    unsubscribe()
    unsubscribe()                     # idempotent
    (config_dir / "reviews.yaml").write_text(vs("reviews", "1s"))
    wait_for(lambda: bool(kept.calls), "a push")
    assert dropped.calls == [] and len(replayed.calls) == 2


def test_failing_subscriber_does_not_stop_others(store: ConfigStore,
                                                 config_dir: Path) -> None:
    def broken(config: Config, version: str) -> None:
        raise RuntimeError("boom")

    seen = Recorder()
    store.subscribe(broken)
    store.subscribe(seen)
    (config_dir / "reviews.yaml").write_text(vs("reviews", "1s"))
    wait_for(lambda: len(seen.calls) == 1, "the first push")
    (config_dir / "reviews.yaml").write_text(vs("reviews", "2s"))
    wait_for(lambda: len(seen.calls) == 2, "the second push")
    assert store.running


def test_close_stops_the_thread_promptly(config_dir: Path) -> None:
    store = ConfigStore(config_dir).start()
    assert store.running
    started = time.monotonic()
    store.close()
    assert not store.running and time.monotonic() - started < 1.0
    store.close()                     # idempotent
