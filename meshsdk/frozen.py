"""Building frozen slotted dataclasses on hot paths without their ``__init__``.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__`` (a generic, slow path, since its own ``__setattr__`` refuses);
for objects built on every call (requests, attempts, call summaries) that costs more
than the work they describe. The slot descriptors' ``__set__`` store the same values
directly: the object is the same frozen object afterwards. Callers build with
``object.__new__(cls)`` and then every setter; a test per class checks that no field
is left unset (``tests/test_frozen.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' ``__set__`` of ``names`` on ``cls``, in that order."""
    return tuple(getattr(cls, name).__set__ for name in names)


__all__ = ["slot_setters"]
