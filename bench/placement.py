"""Where the latency benchmarks run: the measuring client on one CPU, the server it
measures (nginx, gunicorn, uvicorn) on the others.

Why: on this two-CPU machine, left to the scheduler, client and server sometimes
share a CPU and sometimes not, from one server process to the next. The same code
then measured, per run, Django behind gunicorn at 1.05 - 1.17x of bare and the sync
SDK client at 1.08 - 1.11x; with the two kept apart, 1.086 - 1.092x and
1.089 - 1.092x (docs/performance.md, fourteenth session). Kept apart is also how a
service meets its callers: they run elsewhere. Bare and meshed variants share the
placement, so it favours neither. ``--no-pin`` in each benchmark leaves both to the
scheduler, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs) from those this process may use: the first for the
    client, the rest for the server; None with fewer than two (nothing to split) or
    where the OS has no affinity call."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def pin_client(split: tuple[set[int], set[int]] | None) -> str:
    """Keep this process (the client) on its CPU; the placement as text for the report."""
    if split is None:
        return "client and server placed by the scheduler"
    client, server = split
    os.sched_setaffinity(0, client)
    return (f"client on CPU {','.join(map(str, sorted(client)))}, server on CPU "
            f"{','.join(map(str, sorted(server)))}")


def server_preexec(split: tuple[set[int], set[int]] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` for the server's ``Popen`` that moves it to the server CPUs (its
    forked workers inherit them), or None to leave it where it starts."""
    if split is None:
        return None
    server = split[1]

    def move() -> None:
        os.sched_setaffinity(0, server)
    return move
