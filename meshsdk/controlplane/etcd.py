"""etcd as the shared store of config service replicas: config and workload registry.

Several replicas of the config service serve the same mesh when they share two things
through etcd (Debian's ``etcd-server``, v3 API, through the asyncio client ``aetcd``):

* **config**: every Istio document under ``<prefix>/config/<kind>/<namespace>/<name>``
  as JSON. :func:`apply_documents` replaces them all in one transaction (validated
  first; an invalid directory never reaches etcd), and :class:`EtcdConfigStore`, the
  etcd twin of :class:`~meshsdk.controlplane.filestore.ConfigStore`, watches the prefix,
  debounces like istiod (100 ms quiet, 10 s at most), re-validates and serves the last
  good snapshot. Its version is a hash of the content, so every replica names the same
  config alike and a subscriber failing over sees no change.
* **registry**: each auto-registered WorkloadEntry under
  ``<prefix>/registry/<namespace>/<name>`` as a :class:`RegistryRecord`, written by the
  replica holding the workload's stream and attached to that replica's **lease**
  (:class:`EtcdRegistry`). A replica that dies stops renewing its lease and etcd
  deletes its entries after ``ttl`` seconds (the grace period), unless the workload
  reconnected to another replica first, which re-writes the entry under its own lease:
  a killed replica loses no registration. A living replica removes an entry ``grace``
  seconds after its stream ended, and only if no other replica claimed it since
  (compare-and-delete on the value).

All etcd I/O runs on one :class:`~meshsdk.controlplane.loop.LoopThread` per
:class:`Etcd`; callers stay synchronous. Only one etcd endpoint is used per
connection (an etcd cluster behind one address, or a single member, as in the tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aetcd

from meshsdk.config.loader import LoadResult, config_from_result, load_path, load_string
from meshsdk.config.resource import Config
from meshsdk.controlplane.filestore import (
    LoadFailure,
    Subscriber,
    Subscribers,
    VersionedConfig,
)
from meshsdk.controlplane.loop import LoopThread
from meshsdk.controlplane.wire import resource_document
from meshsdk.errors import ConfigError, MeshError

__all__ = [
    "DEFAULT_PREFIX",
    "Etcd",
    "EtcdConfigStore",
    "EtcdError",
    "EtcdRegistry",
    "RegistryRecord",
    "apply_documents",
    "apply_path",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/meshsdk"
RETRY_DELAY = 1.0
"""Seconds between two attempts to re-establish a broken watch."""


class EtcdError(MeshError):
    """etcd is unreachable or refused an operation."""


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Etcd:
    """One etcd client connection on a loop thread of its own, with synchronous calls.

    ``endpoint`` is ``host:port`` of an etcd v3 member; keys are relative to ``prefix``.
    """

    def __init__(self, endpoint: str = "127.0.0.1:2379", *, prefix: str = DEFAULT_PREFIX,
                 timeout: float = 5.0) -> None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise EtcdError(f"etcd endpoint {endpoint!r} is not host:port")
        self.endpoint = endpoint
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self._loop = LoopThread(f"etcd:{endpoint}")
        self._client: Any = aetcd.Client(host=host.strip("[]"), port=int(port),
                                          timeout=int(max(1.0, timeout)))
        self._tasks: list[asyncio.Task[None]] = []
        try:
            self._call(self._client.connect())
        except BaseException:
            self._loop.stop()
            raise

    def key(self, relative: str) -> bytes:
        """The absolute key of ``relative`` (``config/VirtualService/ns/name``)."""
        return f"{self.prefix}/{relative}".encode()

    def _call(self, coro: Awaitable[Any]) -> Any:
        async def run() -> Any:
            return await coro
        try:
            return self._loop.run(run(), timeout=self.timeout + 1.0)
        except (aetcd.exceptions.ClientError, TimeoutError, OSError) as exc:
            raise EtcdError(f"etcd {self.endpoint}: {exc}") from exc

    def close(self) -> None:
        """Stop the watches, close the connection and the loop."""
        async def shutdown() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.close()
        try:
            self._loop.run(shutdown(), timeout=5.0)
        except Exception as exc:  # closing must not fail the caller
            log.debug("closing etcd %s: %r", self.endpoint, exc)
        self._loop.stop()

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- key-value ----------------------------------------------------------------------

    def get_prefix(self, relative: str) -> tuple[dict[str, bytes], int]:
        """Every key under ``relative`` (relative names) and the store's revision."""
        start = self.key(relative)

        async def get() -> tuple[dict[str, bytes], int]:
            result = await self._client.get_prefix(start)
            items = {kv.key.decode()[len(self.prefix) + 1:]: kv.value for kv in result}
            return items, int(result.header.revision)
        items, revision = self._call(get())
        return dict(items), int(revision)

    def replace_prefix(self, relative: str, items: Mapping[str, bytes]) -> int:
        """Make ``items`` (relative keys) the only keys under ``relative``, atomically.

        etcd refuses a transaction that deletes a range and puts a key inside it, so
        this reads the keys, then deletes the stale ones and puts the new ones in one
        transaction guarded by "nothing in the range changed since the read"
        (retried a few times if something did)."""
        start = self.key(relative)
        end = _range_end(start)
        tx = self._client.transactions

        async def attempt() -> int | None:
            current = await self._client.get_prefix(start, keys_only=True)
            seen = int(current.header.revision)
            stale = [kv.key for kv in current if kv.key.decode()[len(self.prefix) + 1:]
                     not in items]
            ops = [tx.delete(k) for k in stale]
            ops += [tx.put(self.key(k), v) for k, v in sorted(items.items())]
            ok, _ = await self._client.transaction(
                compare=[tx.mod(start, range_end=end) < seen + 1], success=ops, failure=[])
            if not ok:
                return None
            after = await self._client.get_prefix(start, keys_only=True)
            return int(after.header.revision)

        async def txn() -> int:
            for _ in range(5):
                revision = await attempt()
                if revision is not None:
                    return revision
            raise EtcdError(f"{relative} kept changing during the update; try again")
        return int(self._call(txn()))

    def put(self, relative: str, value: bytes, *, lease: Any = None,
            wait: bool = True) -> None:
        """Write one key (attached to ``lease`` if given). ``wait=False`` only queues
        the write (failures are logged): for callers holding a lock the etcd loop's
        callbacks may need."""
        self._run(self._client.put(self.key(relative), value, lease=lease), wait,
                  f"put {relative}")

    def swap(self, relative: str, expected: bytes, value: bytes | None, *,
             lease: Any = None, wait: bool = True) -> bool:
        """Replace (or delete, ``value=None``) a key only if it still holds ``expected``;
        whether it did (always True with ``wait=False``, see :meth:`put`)."""
        key = self.key(relative)
        tx = self._client.transactions
        op = tx.delete(key) if value is None else tx.put(key, value, lease=lease)

        async def txn() -> bool:
            ok, _ = await self._client.transaction(compare=[tx.value(key) == expected],
                                                   success=[op], failure=[])
            return bool(ok)
        return bool(self._run(txn(), wait, f"swap {relative}"))

    def _run(self, coro: Awaitable[Any], wait: bool, what: str) -> Any:
        if wait:
            return self._call(coro)

        async def logged() -> Any:
            try:
                return await coro
            except Exception as exc:
                log.error("etcd %s: %s failed: %r", self.endpoint, what, exc)
                return None
        self._loop.spawn(logged())
        return True

    def grant(self, ttl: int) -> Any:
        """A new lease of ``ttl`` seconds."""
        return self._call(self._client.lease(ttl))

    def keep_alive(self, lease: Any, every: float) -> None:
        """Renew ``lease`` every ``every`` seconds until :meth:`close` (errors retried)."""
        async def renew() -> None:
            while True:
                try:
                    await self._client.refresh_lease(lease.id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("renewing etcd lease %x failed: %r", lease.id, exc)
                await asyncio.sleep(every)
        self._start(renew())

    def _start(self, coro: Awaitable[None]) -> None:
        async def begin() -> None:
            self._tasks.append(asyncio.ensure_future(coro))
        self._loop.run(begin(), timeout=5.0)

    def follow(self, relative: str, callback: Callable[[dict[str, bytes], int], None], *,
               quiet: float = 0.0, max_delay: float = 10.0) -> None:
        """Call ``callback(items, revision)`` with every key under ``relative`` now and
        after each change (a burst of changes is delivered once, ``quiet`` s after its
        last event and at most ``max_delay`` s after its first). The callback runs on
        the loop thread and must be quick. A broken watch is re-established and the
        prefix read again, so nothing missed in between is lost."""
        start = self.key(relative)
        cut = len(self.prefix) + 1

        async def run() -> None:
            while True:
                try:
                    await self._follow_once(start, cut, callback, quiet, max_delay)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("etcd watch of %s broke, retrying: %r", start.decode(), exc)
                await asyncio.sleep(RETRY_DELAY)
        self._start(run())

    async def _follow_once(self, start: bytes, cut: int,
                           callback: Callable[[dict[str, bytes], int], None],
                           quiet: float, max_delay: float) -> None:
        result = await self._client.get_prefix(start)
        items = {kv.key.decode()[cut:]: kv.value for kv in result}
        revision = int(result.header.revision)
        callback(dict(items), revision)
        watch = await self._client.watch_prefix(start, start_revision=revision + 1)
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in watch:
                    await events.put(event)
            except Exception as exc:  # surfaced to the consumer below
                await events.put(exc)
            await events.put(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                event = await events.get()
                first = time.monotonic()
                while True:
                    if event is None:
                        raise EtcdError("watch ended")
                    if isinstance(event, Exception):
                        raise event
                    key = event.kv.key.decode()[cut:]
                    if event.kind == aetcd.rtypes.EventKind.DELETE:
                        items.pop(key, None)
                    else:
                        items[key] = event.kv.value
                    revision = max(revision, int(event.kv.mod_revision))
                    wait = min(quiet, max_delay - (time.monotonic() - first))
                    if wait <= 0 and events.empty():
                        break
                    try:
                        event = await asyncio.wait_for(events.get(), max(wait, 0.0))
                    except TimeoutError:
                        break
                callback(dict(items), revision)
        finally:
            pumping.cancel()
            try:
                await watch.cancel()
            except Exception as exc:  # the connection may be gone already
                log.debug("cancelling watch: %r", exc)


# --- config -------------------------------------------------------------------------------


def _config_key(document: Mapping[str, Any]) -> str:
    meta = document.get("metadata") or {}
    return f"config/{document.get('kind')}/{meta.get('namespace') or 'default'}/" \
           f"{meta.get('name')}"


def apply_documents(etcd: Etcd, documents: Iterable[Mapping[str, Any]]) -> int:
    """Replace the config in etcd by ``documents`` in one transaction; the revision.

    The documents are validated together first (ConfigError on any error), so etcd
    never holds a config the replicas would reject.
    """
    docs = [dict(d) for d in documents]
    text = "\n---\n".join(json.dumps(d, ensure_ascii=False) for d in docs)
    config_from_result(load_string(text, source="apply"))
    items = {_config_key(d): json.dumps(d, sort_keys=True, ensure_ascii=False).encode()
             for d in docs}
    return etcd.replace_prefix("config/", items)


def apply_path(etcd: Etcd, path: str | Path, *, namespace: str = "default") -> int:
    """Load and validate a file or directory of Istio YAML, then :func:`apply_documents`."""
    config = config_from_result(load_path(path, namespace=namespace))
    return apply_documents(etcd, (resource_document(r) for r in config.resources))


def _version_of(items: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for key in sorted(items):
        digest.update(key.encode() + b"\0" + items[key] + b"\0")
    return f"etcd-{digest.hexdigest()[:12]}"


class EtcdConfigStore:
    """The config under ``<prefix>/config/`` as a watched, validated, versioned snapshot.

    The same reading interface as :class:`~meshsdk.controlplane.filestore.ConfigStore`
    (``current``, ``version``, ``last_error``, ``subscribe``), so a ConfigServer serves
    either. An empty prefix is a valid, empty config. ``quiet``/``max_delay``: istiod's
    debounce.
    """

    def __init__(self, etcd: Etcd, *, quiet: float = 0.1, max_delay: float = 10.0) -> None:
        self.etcd = etcd
        self._quiet, self._max_delay = quiet, max_delay
        self._lock = threading.Lock()
        self._current: VersionedConfig | None = None
        self._last_error: LoadFailure | None = None
        self._subscribers = Subscribers()
        self._loaded = threading.Event()

    def start(self) -> EtcdConfigStore:
        """Read the config and follow its changes; waits for the first read."""
        self.etcd.follow("config/", self._on_items, quiet=self._quiet,
                         max_delay=self._max_delay)
        if not self._loaded.wait(self.etcd.timeout + 1.0):
            raise EtcdError(f"no config read from etcd {self.etcd.endpoint}")
        with self._lock:
            if self._current is None:
                error = self._last_error
                raise ConfigError(f"the config in etcd is invalid: "
                                  f"{error.message if error else 'unknown'}")
        return self

    def close(self) -> None:
        """Stop delivering (the Etcd connection is the caller's to close)."""
        self._subscribers.clear()

    def __enter__(self) -> EtcdConfigStore:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def current(self) -> VersionedConfig:
        """The config being served and its version."""
        with self._lock:
            if self._current is None:
                raise RuntimeError("EtcdConfigStore not started")
            return self._current

    @property
    def version(self) -> str:
        """The version being served (``etcd-<content hash>``)."""
        return self.current.version

    @property
    def last_error(self) -> LoadFailure | None:
        """Why the latest change in etcd was rejected, or None."""
        with self._lock:
            return self._last_error

    def subscribe(self, callback: Subscriber, *, replay: bool = False) -> Callable[[], None]:
        """As :meth:`ConfigStore.subscribe`."""
        def current() -> VersionedConfig | None:
            with self._lock:
                return self._current
        return self._subscribers.subscribe(callback, current, replay)

    def _on_items(self, items: dict[str, bytes], revision: int) -> None:
        version = _version_of(items)
        with self._lock:
            if self._current is not None and self._current.version == version:
                self._last_error = None  # back to what is served (a bad change undone)
                self._loaded.set()
                return
        try:
            config = self._load(items)
        except ConfigError as exc:
            with self._lock:
                serving = self._current.version if self._current else "nothing"
                files = sorted({d.file for d in exc.diagnostics
                                if d.is_error and d.file is not None})
                self._last_error = LoadFailure(str(exc), exc.diagnostics, tuple(files), (),
                                               version, time.time(), serving)
            log.warning("config in etcd at revision %d rejected, still serving %s:\n%s",
                        revision, serving, exc)
            self._loaded.set()
            return
        published = VersionedConfig(config, version)

        def make_current() -> None:
            with self._lock:
                self._current, self._last_error = published, None
            self._loaded.set()
        self._subscribers.deliver(published, before=make_current)

    def _load(self, items: Mapping[str, bytes]) -> Config:
        """Validate every key's document together; errors name the key (and line)."""
        result = LoadResult()
        for key in sorted(items):
            try:
                document = json.loads(items[key])
            except ValueError as exc:
                raise ConfigError(f"etcd key {self.etcd.prefix}/{key}: not JSON: {exc}") \
                    from None
            result.extend(load_string(json.dumps(document, indent=1, ensure_ascii=False),
                                      source=f"etcd:{self.etcd.prefix}/{key}"))
        return config_from_result(result)


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """One registered WorkloadEntry as stored in etcd (JSON)."""

    document: dict[str, Any]
    node_id: str
    owner: str
    """The replica holding the workload's stream."""
    connection_id: str
    registered_at: float
    disconnected_since: float | None = None
    ready: bool = True
    health: str = ""

    def encode(self) -> bytes:
        """The stored bytes (canonical JSON, so compare-and-swap compares content)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> RegistryRecord:
        """Parse stored bytes (EtcdError if they are not a record)."""
        try:
            raw = json.loads(data)
            return cls(dict(raw["document"]), str(raw["node_id"]), str(raw["owner"]),
                       str(raw["connection_id"]), float(raw["registered_at"]),
                       None if raw.get("disconnected_since") is None
                       else float(raw["disconnected_since"]),
                       bool(raw.get("ready", True)), str(raw.get("health") or ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"not a registry record: {exc!r}") from None


def registry_key(namespace: str, name: str) -> str:
    """The relative key of a registered entry."""
    return f"registry/{namespace}/{name}"


class EtcdRegistry:
    """The registry shared by replicas: writes under this replica's lease, reads all.

    ``ttl`` (whole seconds, at least 2) is the lease's: how long the entries of a dead
    replica survive it. ``on_change(records)`` receives every record (by relative key)
    after each change, on the etcd loop thread.
    """

    def __init__(self, etcd: Etcd, replica: str, *, ttl: int = 10) -> None:
        self.etcd = etcd
        self.replica = replica
        self.ttl = max(2, int(ttl))
        self._lease: Any = None

    def start(self, on_change: Callable[[dict[str, RegistryRecord]], None]) -> None:
        """Take the lease, keep it alive, and follow the registry."""
        self._lease = self.etcd.grant(self.ttl)
        self.etcd.keep_alive(self._lease, self.ttl / 3.0)

        def deliver(items: dict[str, bytes], revision: int) -> None:
            records: dict[str, RegistryRecord] = {}
            for key, data in items.items():
                try:
                    records[key] = RegistryRecord.decode(data)
                except EtcdError as exc:
                    log.warning("etcd key %s ignored: %s", key, exc)
            on_change(records)
        self.etcd.follow("registry/", deliver, quiet=0.01, max_delay=0.5)

    def claim(self, key: str, record: RegistryRecord) -> None:
        """Queue a write of ``record`` under this replica's lease (the last claimer wins).

        Queued, not awaited: the server calls this under its lock, and the change comes
        back to it through :meth:`start`'s ``on_change`` like any other."""
        self.etcd.put(key, record.encode(), lease=self._lease, wait=False)

    def replace(self, key: str, expected: RegistryRecord,
                record: RegistryRecord | None) -> None:
        """Queue a replacement (or deletion) of ``key`` if it still holds ``expected``."""
        self.etcd.swap(key, expected.encode(), None if record is None else record.encode(),
                       lease=self._lease, wait=False)
