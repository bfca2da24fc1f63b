"""Random sources that stay apart across ``fork()``.

A ``random.Random()`` made before a fork is copied, state and all, into every child:
gunicorn with ``--preload`` (or any server that builds the app and then forks
workers) would have each worker draw the same trace ids, span ids and request ids in
the same order, pick the same endpoints, and jitter its backoff in step with the
others. Python reseeds only the ``random`` module's own instance after a fork; the
mesh keeps instances of its own (injectable for tests), so it reseeds those.

A source given by the caller (a seeded one, in tests) is never touched.
"""

from __future__ import annotations

import os
import random
import weakref

_sources: weakref.WeakSet[random.Random] = weakref.WeakSet()


def fresh_random() -> random.Random:
    """A new random source, seeded from the OS, reseeded in every forked child."""
    source = random.Random()
    _sources.add(source)
    return source


def _reseed_after_fork() -> None:
    for source in list(_sources):
        source.seed()  # from os.urandom: each child its own sequence


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


__all__ = ["fresh_random"]
