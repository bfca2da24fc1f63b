"""The config service's default store: a directory of Istio YAML, watched and versioned.

:class:`ConfigStore` loads a directory with the ordinary loader, serves the result as
``(config, version)`` and pushes every new *valid* version to its subscribers. Edits
are debounced the way istiod debounces pushes (:class:`Debouncer`): a burst of saves
becomes one reload. An invalid edit never replaces the config being served; it is
exposed as :attr:`ConfigStore.last_error` until a later edit fixes it.

Watching uses ``watchfiles.watch()`` in one background thread rather than ``awatch``:
the store serves sync and async callers alike, ``awatch`` would need an event loop of
its own (and runs the same Rust watcher in a worker thread anyway), and a thread with a
stop event shuts down promptly. The thread only feeds the pure :class:`Debouncer` and
reloads when it says so; all timing rules live in the debouncer and are tested with a
fake clock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import watchfiles

from meshsdk.config.diagnostics import Diagnostic
from meshsdk.config.loader import (
    DEFAULT_NAMESPACE,
    YAML_SUFFIXES,
    config_from_result,
    load_path,
)
from meshsdk.config.resource import Config
from meshsdk.errors import ConfigError

__all__ = [
    "ConfigStore", "Debouncer", "LoadFailure", "Subscriber", "Subscribers", "VersionedConfig",
    "content_hash",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Subscriber = Callable[[Config, str], None]

# watchfiles tuning: how often the Rust loop wakes (to check the stop event), the most
# it groups raw events before handing them over, and the idle tick that lets the
# thread consult the debouncer when no event arrives. All in milliseconds.
_STEP_MS = 20
_GROUP_MS = 50
_TICK_MS = 50
_JOIN_TIMEOUT = 5.0


class Debouncer:
    """When to apply a burst of changes: ``quiet`` s after the last event, at most
    ``max_delay`` s after the first one (istiod's PILOT_DEBOUNCE_AFTER/_MAX).

    Pure bookkeeping: callers report events and ask whether the burst is due; nothing
    here sleeps or starts threads. ``now`` defaults to ``clock()`` so tests can pass
    times explicitly or drive a fake clock. Not thread-safe; one owner feeds it.
    """

    def __init__(self, quiet: float = 0.1, max_delay: float = 10.0,
                 clock: Clock = time.monotonic) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"need 0 <= quiet <= max_delay, got {quiet=} {max_delay=}")
        self.quiet = quiet
        self.max_delay = max_delay
        self._clock = clock
        self._first: float | None = None
        self._last: float | None = None
        self.events = 0
        """Events in the current burst (0 when nothing is pending)."""

    @property
    def pending(self) -> bool:
        """Whether a burst has started and not yet been taken."""
        return self._first is not None

    def event(self, now: float | None = None) -> None:
        """Record one change; the first one after a :meth:`take` starts a new burst."""
        t = self._clock() if now is None else now
        if self._first is None:
            self._first = t
        self._last = t
        self.events += 1

    def next_deadline(self) -> float | None:
        """When the pending burst becomes due, or None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def due(self, now: float | None = None) -> bool:
        """Whether the pending burst should be applied now."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        return (self._clock() if now is None else now) >= deadline

    def take(self, now: float | None = None) -> bool:
        """If the burst is due, end it and return True (the caller applies it)."""
        if not self.due(now):
            return False
        self._first = self._last = None
        self.events = 0
        return True


class VersionedConfig(NamedTuple):
    """A validated config and the version string it is served under."""

    config: Config
    version: str


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why the latest change was not applied; the previous version is still served.

    ``message`` is the :class:`ConfigError` text with every error as ``file:line: ...``;
    ``files`` are the files those errors name, ``changed`` the files whose changes
    triggered the attempt. ``attempted_at`` is wall-clock time (``time.time()``).
    """

    message: str
    diagnostics: tuple[Diagnostic, ...]
    files: tuple[str, ...]
    changed: tuple[str, ...]
    content_hash: str
    attempted_at: float
    serving: str

    def __str__(self) -> str:
        return f"{self.message}\n(still serving {self.serving})"


def _is_config_file(path: Path) -> bool:
    return path.is_file() and path.suffix in YAML_SUFFIXES


def content_hash(root: Path) -> str:
    """SHA-256 over the names and bytes of every file the loader would read under ``root``.

    Used to name versions and to skip reloads that changed nothing (a touch, a save
    without edits). Unreadable files hash as their name only; the loader reports them.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if _is_config_file(p)) if root.is_dir() else []
    for f in files:
        digest.update(os.fsencode(f.relative_to(root)) + b"\0")
        try:
            digest.update(f.read_bytes())
        except OSError:
            digest.update(b"\xff unreadable")
        digest.update(b"\0")
    return digest.hexdigest()


def _watch_filter(change: watchfiles.Change, path: str) -> bool:
    """Config files, plus suffix-less entries: a moved or removed directory of them."""
    suffix = os.path.splitext(path)[1]
    return suffix in YAML_SUFFIXES or suffix == ""


class Subscribers:
    """The callbacks of a store, shared by the file and etcd stores.

    Deliveries and replays are serialised by one lock, so a callback never sees an
    older version after a newer one, and a failing callback is logged, never fatal.
    """

    def __init__(self) -> None:
        self._order = threading.RLock()
        self._callbacks: list[Subscriber] = []

    def subscribe(self, callback: Subscriber, current: Callable[[], VersionedConfig | None],
                  replay: bool) -> Callable[[], None]:
        """Add ``callback``; with ``replay`` call it at once with ``current()``."""
        with self._order:
            self._callbacks.append(callback)
            now = current()
            if replay and now is not None:
                callback(now.config, now.version)

        def unsubscribe() -> None:
            with self._order:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe

    def clear(self) -> None:
        """Forget every callback."""
        with self._order:
            self._callbacks.clear()

    def deliver(self, published: VersionedConfig,
                before: Callable[[], None] | None = None) -> None:
        """Call every callback with ``published`` (after ``before()``, in the same
        critical section: a store makes the version current there)."""
        with self._order:
            if before is not None:
                before()
            for callback in list(self._callbacks):
                try:
                    callback(published.config, published.version)
                except Exception:
                    log.exception("config subscriber %r failed on %s", callback,
                                  published.version)


class ConfigStore:
    """Serve the Istio config of one directory and push each new valid version.

    Usage::

        with ConfigStore("config/") as store:       # raises ConfigError if invalid
            config, version = store.current
            unsubscribe = store.subscribe(on_update)

    Versions are ``v<n>-<first 8 hex digits of the content hash>``, ``n`` counting up
    from 1 for each config published. Removing every file is valid: Istio treats a
    removed file as removed resources, so the store then serves an empty config.

    An invalid load is retried once after another quiet period before it counts as
    a failure, since an editor may still be writing the file. A failure leaves the
    served version alone and sets :attr:`last_error`; the next valid load clears it.

    Thread safety: :attr:`current`, :attr:`last_error`, :meth:`subscribe` and the
    unsubscribe function may be used from any thread. Subscribers run on the watcher
    thread, one at a time, in subscription order; a slow subscriber delays the next
    reload, and an exception in one is logged and does not stop the others.
    """

    def __init__(self, root: str | os.PathLike[str], *, namespace: str = DEFAULT_NAMESPACE,
                 quiet: float = 0.1, max_delay: float = 10.0,
                 clock: Clock = time.monotonic) -> None:
        self.root = Path(root)
        self.namespace = namespace
        self._clock = clock
        self._debouncer = Debouncer(quiet, max_delay, clock)
        self._lock = threading.Lock()          # guards the state below
        self._current: VersionedConfig | None = None
        self._hash: str | None = None          # None: unknown, never skip the next reload
        self._serial = 0
        self._last_error: LoadFailure | None = None
        self._subscribers = Subscribers()
        self._changed: set[str] = set()        # touched since the last applied reload
        self._retrying = False
        self._attempts = 0
        self._stop = threading.Event()
        self._watching = threading.Event()     # the watcher is installed
        self._loaded = threading.Event()       # the initial load is done (or failed)
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> ConfigStore:
        """Install the watcher, then load the directory; raise ConfigError if it is invalid.

        The watcher goes in first so that no edit made during the initial load is lost.
        """
        if self._thread is not None:
            raise RuntimeError("ConfigStore.start() called twice")
        if not self.root.is_dir():
            raise ConfigError(f"config directory not found: {self.root}")
        self._thread = threading.Thread(target=self._run, name=f"configstore:{self.root}",
                                        daemon=True)
        self._thread.start()
        try:
            while not self._watching.wait(0.05):
                if not self._thread.is_alive():
                    raise ConfigError(f"cannot watch {self.root}: {self._failure_text()}")
            before = content_hash(self.root)
            config = config_from_result(load_path(self.root, namespace=self.namespace))
            after = content_hash(self.root)
            with self._lock:
                self._hash = after if before == after else None
                self._serial = 1
                self._current = VersionedConfig(config, f"v1-{after[:8]}")
        except BaseException:
            self.close()
            raise
        finally:
            self._loaded.set()
        return self

    def close(self) -> None:
        """Stop watching and wait for the watcher thread (it notices within ~20 ms)."""
        self._stop.set()
        self._loaded.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("config store watcher for %s did not stop within %ss",
                            self.root, _JOIN_TIMEOUT)

    def __enter__(self) -> ConfigStore:
        return self.start() if self._thread is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # --- reading and subscribing ---------------------------------------------------------

    @property
    def current(self) -> VersionedConfig:
        """The config being served and its version (an atomic pair)."""
        with self._lock:
            if self._current is None:
                raise RuntimeError("ConfigStore not started")
            return self._current

    @property
    def version(self) -> str:
        """The version being served."""
        return self.current.version

    @property
    def attempts(self) -> int:
        """Reloads tried since the initial load, valid or not (a count for metrics)."""
        with self._lock:
            return self._attempts

    @property
    def last_error(self) -> LoadFailure | None:
        """Why the latest change was rejected, or None once a valid load succeeds."""
        with self._lock:
            return self._last_error

    def subscribe(self, callback: Subscriber, *, replay: bool = False) -> Callable[[], None]:
        """Call ``callback(config, version)`` for each new valid version; return unsubscribe.

        With ``replay=True`` the callback first gets the current version, in this
        thread, ordered with pushes so it never sees an older version after a newer one.
        """
        return self._subscribers.subscribe(callback, self._current_or_none, replay)

    def _current_or_none(self) -> VersionedConfig | None:
        with self._lock:
            return self._current

    # --- the watcher thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                    self.root, watch_filter=_watch_filter, debounce=_GROUP_MS, step=_STEP_MS,
                    rust_timeout=_TICK_MS, yield_on_timeout=True, stop_event=self._stop,
                    raise_interrupt=False):
                if not self._watching.is_set():
                    self._watching.set()
                    self._loaded.wait()
                    if self._stop.is_set():
                        return
                if changes:
                    self._changed.update(path for _, path in changes)
                    self._debouncer.event()
                if self._debouncer.take():
                    self._reload()
        except Exception as exc:  # the watcher itself broke: say so instead of dying quietly
            log.exception("config store watcher for %s stopped", self.root)
            self._record_failure(f"watcher stopped: {exc}", (), "")

    def _failure_text(self) -> str:
        error = self.last_error
        return error.message if error is not None else "watcher exited"

    def _reload(self) -> None:
        """Load the directory once; publish it, retry it, or record why it failed."""
        with self._lock:
            self._attempts += 1
        before = content_hash(self.root)
        try:
            config = config_from_result(load_path(self.root, namespace=self.namespace))
        except ConfigError as exc:
            after = content_hash(self.root)
            if not self._retrying or before != after:
                # Maybe a half-written save: look again after one more quiet period.
                self._retrying = True
                self._debouncer.event()
                return
            self._retrying = False
            self._record_failure(str(exc), exc.diagnostics, after)
            return
        except Exception as exc:  # a loader bug must not kill the watcher
            log.exception("loading %s failed", self.root)
            self._retrying = False
            self._record_failure(f"internal error while loading: {exc!r}", (), before)
            return
        after = content_hash(self.root)
        self._retrying = False
        with self._lock:
            self._last_error = None
            self._changed.clear()
            if after == self._hash and before == after:
                return  # same bytes as what is served: nothing to push
            self._hash = after if before == after else None
            self._serial += 1
            self._current = VersionedConfig(config, f"v{self._serial}-{after[:8]}")
            published = self._current
        self._deliver(published)

    def _record_failure(self, message: str, diagnostics: tuple[Diagnostic, ...],
                        digest: str) -> None:
        files = sorted({d.file for d in diagnostics if d.is_error and d.file is not None})
        with self._lock:
            serving = self._current.version if self._current is not None else "nothing"
            self._last_error = LoadFailure(
                message, diagnostics, tuple(files), tuple(sorted(self._changed)), digest,
                time.time(), serving)
        log.warning("config change in %s rejected, still serving %s:\n%s",
                    self.root, serving, message)

    def _deliver(self, published: VersionedConfig) -> None:
        self._subscribers.deliver(published)
