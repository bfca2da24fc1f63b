"""Bounded memo tables: :func:`remember`, the one rule for the caches on request paths.

Requests repeat a few values (authorities, URLs, header names, status lines, ports,
compiled config objects), so the request paths keep what they derive from them in plain
dicts, read with one ``dict.get`` per request. A client or app inventing values (ids in
paths, made-up header names) must not grow such a table without bound: when one is full
it is emptied and refills with what is in use. That costs one recomputation per key
still in use and nothing on a hit, where an LRU would do bookkeeping on every hit.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store ``value`` under ``key`` and return it; a ``table`` already holding
    ``limit`` entries is emptied first. For the miss path only: hits read the dict."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value


__all__ = ["remember"]
