"""Running a call flow's effects: the one loop every outbound driver shares.

:func:`~meshsdk.dataplane.flow.call_flow` decides and yields effects (send an attempt,
sleep, discard a response, mirror); a driver only knows how to perform them for its
protocol. :func:`drive` (threads) and :func:`drive_async` (event loops) run the loop,
note each attempt for telemetry, and, when the caller is cancelled or a step fails,
close the flow (which gives back what it holds) and record the call as never answered.
The httpx transports and the gRPC channels pass their own four actions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from meshsdk.dataplane.flow import (
    Attempt,
    AttemptResult,
    CallResult,
    Discard,
    Effect,
    Mirror,
    Send,
    Sleep,
)

if TYPE_CHECKING:
    from meshsdk.telemetry.recorder import OutboundCall

Flow = Generator[Effect, AttemptResult | None, CallResult]


def drive(flow: Flow, call: OutboundCall | None, send: Callable[[Attempt], AttemptResult],
          sleep: Callable[[float], object], discard: Callable[[Any], object],
          mirror: Callable[[Attempt], object] | None) -> CallResult:
    """Perform ``flow``'s effects with the driver's actions; its verdict. ``mirror``
    None: this call cannot be mirrored (a streamed request), mirror effects are dropped."""
    value: AttemptResult | None = None
    try:
        effect = next(flow)
        while True:
            if isinstance(effect, Send):
                value = send(effect.attempt)
                if call is not None:
                    call.attempt(effect.attempt, value)
            else:
                value = None
                if isinstance(effect, Sleep):
                    sleep(effect.seconds)
                elif isinstance(effect, Discard):
                    discard(effect.response)
                elif isinstance(effect, Mirror) and mirror is not None:
                    mirror(effect.attempt)
            effect = flow.send(value)
    except StopIteration as stop:
        result: CallResult = stop.value
        return result
    except BaseException:
        _abandon(flow, call)
        raise


async def drive_async(flow: Flow, call: OutboundCall | None,
                      send: Callable[[Attempt], Awaitable[AttemptResult]],
                      sleep: Callable[[float], Awaitable[object]],
                      discard: Callable[[Any], Awaitable[object] | None],
                      mirror: Callable[[Attempt], object] | None) -> CallResult:
    """:func:`drive` on an event loop: sends and sleeps are awaited, and so is
    ``discard`` when it returns an awaitable."""
    value: AttemptResult | None = None
    try:
        effect = next(flow)
        while True:
            if isinstance(effect, Send):
                value = await send(effect.attempt)
                if call is not None:
                    call.attempt(effect.attempt, value)
            else:
                value = None
                if isinstance(effect, Sleep):
                    await sleep(effect.seconds)
                elif isinstance(effect, Discard):
                    pending = discard(effect.response)
                    if pending is not None:
                        await pending
                elif isinstance(effect, Mirror) and mirror is not None:
                    mirror(effect.attempt)
            effect = flow.send(value)
    except StopIteration as stop:
        result: CallResult = stop.value
        return result
    except BaseException:
        _abandon(flow, call)
        raise


def _abandon(flow: Flow, call: OutboundCall | None) -> None:
    """Cancelled or failed mid-call: the flow gives back what it holds (admission slot,
    balancer load, retry budget), and the call is recorded as never answered (DC)."""
    flow.close()
    if call is not None:
        call.finish(0)


__all__ = ["Flow", "drive", "drive_async"]
