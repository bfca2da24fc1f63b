"""DNS for endpoints given by name (ServiceEntry resolution DNS/DNS_ROUND_ROBIN,
external hosts): resolved once, cached for the mesh's ``dnsRefreshRate``, and
rotated across the addresses returned, as Envoy's DNS clusters do.

The OS resolver reports no TTLs through ``getaddrinfo``, so the refresh rate is
the cache lifetime (Istio's default: 60 s). A failed lookup is not cached and
surfaces as a connect failure (flag UF), which the default retry policy retries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=4096)
def is_address(host: str) -> bool:
    """True for an IP literal (no lookup needed); cached, as it runs on every attempt."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class _Entry:
    addresses: tuple[str, ...]
    expires: float
    turn: int = 0


class DnsCache:
    """Name -> addresses with a fixed lifetime; thread-safe and asyncio-friendly."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._lock = threading.Lock()
        self.lookups = 0

    def _cached(self, host: str, port: int) -> str | None:
        entry = self._entries.get((host, port))
        if entry is None or entry.expires <= self._clock():
            return None
        with self._lock:
            entry.turn = (entry.turn + 1) % len(entry.addresses)
            return entry.addresses[entry.turn]

    def _store(self, host: str, port: int, infos: list[tuple[object, ...]]) -> str:
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))  # type: ignore[index]
        if not addresses:
            raise OSError(f"no addresses for {host}")
        with self._lock:
            self._entries[(host, port)] = _Entry(addresses, self._clock() + self.ttl)
            self.lookups += 1
        return addresses[0]

    def resolve(self, host: str, port: int) -> str:
        """An address for ``host`` (IPs and ``localhost`` pass through); raises OSError."""
        if is_address(host):
            return host
        hit = self._cached(host, port)
        if hit is not None:
            return hit
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return self._store(host, port, list(infos))

    async def aresolve(self, host: str, port: int) -> str:
        """Async twin of :meth:`resolve`, using the running loop's resolver."""
        if is_address(host):
            return host
        hit = self._cached(host, port)
        if hit is not None:
            return hit
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
        return self._store(host, port, list(infos))
