"""What the config service tests share."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT = 3.0
"""How long a test waits for something the watcher or a stream delivers."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until true; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
