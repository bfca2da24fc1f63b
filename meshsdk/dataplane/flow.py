"""The outbound call flow, written once as a sans-I/O generator.

:func:`call_flow` decides everything about one outbound request: route, fault,
mirrors, retries with budget and backoff, cluster, endpoint, admission, per-try
timeouts, and how each outcome is classified. It performs no I/O: it *yields*
effects (:class:`Sleep`, :class:`Send`, :class:`Mirror`, :class:`Discard`) and
the driver that runs it (sync transport, async transport, later the sidecar)
carries them out and sends back what happened. Sync and async behaviour cannot
drift apart, because there is only one flow; tests drive it with a fake clock.

Order, as in Envoy and Linkerd: route -> fault -> mirror -> [retry loop: cluster
-> healthy endpoints -> balancer -> admission -> per-try timeout -> send ->
classify -> outlier/budget bookkeeping]. Retries sit above the balancer so a
retry can pick another endpoint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from meshsdk.config.hosts import expand_host, join_host_port, split_host_port
from meshsdk.config.kinds.virtual_service import HeaderOperations
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.snapshot import ClientView, Endpoint, Service, Snapshot
from meshsdk.dataplane.clusters import Cluster, ClusterRegistry
from meshsdk.deadline import ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER, format_grpc_timeout
from meshsdk.memo import remember
from meshsdk.outcome import (
    CONNECT_FAILURE,
    FAULT_ABORT,
    NO_HEALTHY_UPSTREAM,
    REMOTE_RESET,
    UPSTREAM_OVERFLOW,
    UPSTREAM_TIMEOUT,
    Failure,
    Flag,
    LocalReply,
    Outcome,
)
from meshsdk.resilience.balancer import hash_key, locality_preference
from meshsdk.resilience.fault import decide_fault
from meshsdk.resilience.retry import (
    RetryPolicy,
    backoff_delay,
    cached_retry_policy,
    should_retry,
)
from meshsdk.routing.cors import cors_response_headers
from meshsdk.routing.request import RequestView
from meshsdk.routing.rewrite import (
    apply_header_operations,
    request_header_operations,
    response_header_operations,
    rewrite_authority,
    rewrite_path,
)
from meshsdk.routing.router import RouteDecision, Target, decide, pick_target
from meshsdk.security.origination import TlsOrigination

# Connection-level and mesh-internal headers never copied to the upstream request.
# Body framing (content-length / transfer-encoding) is kept: the body is passed on
# as the same stream.
_DROP = frozenset({"host", "connection", "keep-alive", "proxy-connection", "upgrade",
                   ENVOY_TIMEOUT_HEADER})


# --- effects the flow yields ------------------------------------------------------------
# Effects and results are built on every call, so they are plain slotted dataclasses,
# read-only by convention: a frozen one's __init__ costs several times as much.


@dataclass(slots=True)
class Attempt:
    """One request to send: where, with which head, within which time.

    Treat as read-only. Not ``frozen``: one is built on every call, and a frozen
    dataclass's ``__init__`` stores each field through ``object.__setattr__``, which
    cost more than the rest of building the attempt."""

    scheme: str
    address: str
    port: int
    path: str                      # path plus "?query"
    authority: str                 # the Host header
    headers: tuple[tuple[str, str], ...]
    timeout: float | None          # this try's limit in seconds (None: unlimited)
    connect_timeout: float
    cluster: str
    endpoint: Endpoint | None
    tls: TlsOrigination | None = None  # None: plaintext

    @property
    def url(self) -> str:
        return f"{self.scheme}://{join_host_port(self.address, self.port)}{self.path}"

    def with_address(self, address: str) -> Attempt:
        """The same attempt aimed at a resolved address (the driver's DNS step)."""
        return replace(self, address=address)


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Send:
    """Send the attempt; reply with an :class:`AttemptResult`."""

    attempt: Attempt


@dataclass(slots=True)
class Mirror:
    """Send a copy in the background; never wait for it, never look at its answer."""

    attempt: Attempt


@dataclass(slots=True)
class Discard:
    """Close a response the flow will not return (a retried attempt's answer)."""

    response: Any


Effect = Sleep | Send | Mirror | Discard


@dataclass(slots=True)
class AttemptResult:
    """What the driver saw: the classified outcome and, if one arrived, the response
    (the driver's own object, opaque here; headers read, body not yet)."""

    outcome: Outcome
    response: Any = None


@dataclass(slots=True)
class CallResult:
    """The flow's verdict: an upstream response or a local reply, plus what telemetry needs.

    ``release`` must be called once when the caller is done with the response (its
    body closed): it returns the request's admission slot and balancer load.
    """

    response: Any = None
    local_reply: LocalReply | None = None
    flags: tuple[Flag, ...] = ()
    attempts: int = 0
    route_name: str = ""
    cluster: str | None = None
    endpoint: Endpoint | None = None
    status: int | None = None
    response_headers: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None = None
    release: Callable[[], None] = field(default=lambda: None)
    decision: RouteDecision | None = None   # what routing decided (requested host, route)
    service: Service | None = None          # the service of the cluster that was used
    mtls: bool = False                      # the answer came over mesh mTLS (ISTIO_MUTUAL)


# --- the context of one call ---------------------------------------------------------------


@dataclass(slots=True)
class CallContext:
    """Everything one call reads, fixed when it starts (the snapshot cannot change under it)."""

    request: RequestView
    snapshot: Snapshot
    view: ClientView
    clusters: ClusterRegistry
    clock: Callable[[], float]
    rng: random.Random
    replayable: bool = True
    deadline: float | None = None    # absolute, from the inbound request (deadline.py)
    source_ip: str | None = None
    identity: bool = False           # the workload has a mesh certificate to present

    @property
    def mesh(self) -> MeshConfig:
        return self.snapshot.mesh


# --- the flow -----------------------------------------------------------------------------


class _Plan:
    """What a call needs that depends only on the configuration: computed once per
    (route decision, target, request port) and kept in the decision's ``plans`` (a
    decision belongs to one client view of one snapshot, so the view and the mesh
    config are implied). The plan holds its target, checked by identity, so a target
    id is never confused with a later object's."""

    __slots__ = (
        "authority",
        "mirrors",
        "policy",
        "port",
        "request_ops",
        "request_port",
        "response_work",
        "target",
    )

    target: Target | None
    port: int | None               # the target's service port (_target_port)
    request_port: int | None       # the request's port it was made for
    policy: RetryPolicy
    request_ops: tuple[HeaderOperations, ...]
    response_work: bool            # response header operations or CORS apply
    mirrors: bool                  # the route mirrors (mirror or mirrors[])
    authority: str | None          # the route's or target's new authority (rewrite_authority)


def _plan(ctx: CallContext, decision: RouteDecision, target: Target | None) -> _Plan:
    req_port = ctx.request.port
    plan: _Plan | None = decision.plans.get(id(target))
    if plan is not None and plan.target is target and plan.request_port == req_port:
        return plan
    view = ctx.view
    mesh = ctx.mesh
    route = decision.route
    plan = _Plan()
    plan.target = target
    plan.request_port = req_port
    plan.port = _target_port(ctx, target) if target is not None else None
    first_policy = (view.policy(target.fqdn, target.subset, plan.port)
                    if target is not None else None)
    lb = getattr(first_policy, "load_balancer", None)
    plan.policy = cached_retry_policy(
        route.retries if route is not None else None, mesh,
        consistent_hash=lb is not None and lb.consistent_hash is not None)
    if target is not None:
        plan.request_ops = tuple(request_header_operations(decision, target))
        response_ops = response_header_operations(decision, target)
    else:
        plan.request_ops = ()
        response_ops = []
    plan.response_work = bool(response_ops) or decision.cors is not None
    plan.mirrors = route is not None and (route.mirror is not None or bool(route.mirrors))
    plan.authority = rewrite_authority(decision, target)
    decision.plans[id(target)] = plan  # one per target: a new request port replaces it
    return plan


class _CallState:
    """The bookkeeping of one call that outlives an attempt: the retry slot held,
    the budget counting the request, and the answered attempt's admission slot and
    balancer load (given back once, by :meth:`release`)."""

    __slots__ = ("budgeted", "cluster", "endpoint", "holding_retry", "released")

    def __init__(self) -> None:
        self.holding_retry: Cluster | None = None  # retry slot (budget, maxRetries) in flight
        self.budgeted: Cluster | None = None       # the cluster whose budget counts the request
        self.cluster: Cluster | None = None        # the answered attempt's, for release
        self.endpoint: Endpoint | None = None
        self.released = False

    def end_retry(self) -> None:
        holding = self.holding_retry
        if holding is not None:
            holding.budget.on_retry_done()
            if holding.policy is None or holding.policy.retry_budget is None:
                holding.limits.release_retry()
            self.holding_retry = None

    def settle(self) -> None:
        self.end_retry()
        if self.budgeted is not None:
            self.budgeted.budget.on_request_done()

    def release(self) -> None:
        if not self.released:
            self.released = True
            assert self.cluster is not None and self.endpoint is not None
            _release(self.cluster, self.endpoint)
            self.settle()


def call_flow(ctx: CallContext) -> Generator[Effect, AttemptResult | None, CallResult]:
    """Decide and drive one outbound call; see the module docstring."""
    req = ctx.request
    mesh = ctx.snapshot.mesh
    decision = decide(ctx.view, req, mesh)
    if decision.local_reply is not None:
        return _local(decision.local_reply, decision, ())
    route = decision.route
    flags: list[Flag] = []

    if route is not None and route.fault is not None:
        fault = decide_fault(route.fault, ctx.rng, grpc=req.grpc)
        if fault.delay:
            flags.append(Flag.DELAY_INJECTED)
            yield Sleep(fault.delay)
        if fault.abort_status is not None or fault.abort_grpc_status is not None:
            flags.append(Flag.FAULT_INJECTED)
            return _local(_abort_reply(fault.abort_status, fault.abort_grpc_status, req.grpc),
                          decision, tuple(flags))

    target = pick_target(decision, ctx.rng) if not decision.passthrough else None
    if target is None and not decision.passthrough:
        return _local(LocalReply.text(503, NO_HEALTHY_UPSTREAM, Flag.NO_HEALTHY_UPSTREAM),
                      decision, tuple(flags))
    plan = _plan(ctx, decision, target)
    path = rewrite_path(decision, req)
    authority = plan.authority or req.authority
    base_headers = _forward_headers(req)

    if plan.mirrors:
        yield from _mirrors(ctx, decision, path, authority, base_headers)

    policy = plan.policy
    route_timeout = route.timeout if route is not None else None
    deadline = ctx.clock() + route_timeout if route_timeout else None
    if ctx.deadline is not None:  # the inbound request's: the smaller one holds
        deadline = ctx.deadline if deadline is None else min(deadline, ctx.deadline)
    tried: list[Endpoint] = []
    retries = 0
    state = _CallState()

    in_flight: tuple[Cluster, Endpoint] | None = None  # the attempt the driver is sending
    try:
        while True:
            remaining = None if deadline is None else deadline - ctx.clock()
            if remaining is not None and remaining <= 0:
                state.settle()
                flags.append(Flag.UPSTREAM_REQUEST_TIMEOUT)
                return _local(LocalReply.text(504, UPSTREAM_TIMEOUT), decision, tuple(flags),
                              attempts=retries)
            cluster, endpoint, problem = _choose(ctx, decision, target, tried, policy,
                                                 plan.port)
            if problem is not None or cluster is None or endpoint is None:
                state.settle()
                reply = problem or LocalReply.text(503, NO_HEALTHY_UPSTREAM,
                                                   Flag.NO_HEALTHY_UPSTREAM)
                return _local(reply, decision, tuple(flags), cluster=cluster, attempts=retries)
            if not cluster.limits.try_acquire():
                state.settle()
                flags.append(Flag.UPSTREAM_OVERFLOW)
                return _local(LocalReply.text(503, UPSTREAM_OVERFLOW), decision, tuple(flags),
                              cluster=cluster, attempts=retries)
            if state.budgeted is None:
                state.budgeted = cluster
                cluster.budget.on_request()
            per_try = policy.per_try_timeout
            if remaining is not None and (per_try is None or remaining < per_try):
                per_try = remaining
            connect_timeout = cluster.limits.connect_timeout
            if per_try is not None and (connect_timeout is None or per_try < connect_timeout):
                connect_timeout = per_try
            headers = _attempt_headers(plan.request_ops, base_headers, per_try, req.grpc)
            tls = cluster.tls_for(endpoint, mesh, ctx.identity)
            attempt = Attempt(
                "https" if tls is not None else cluster.scheme or req.scheme, endpoint.address,
                endpoint.port, path, authority, headers, per_try, connect_timeout or 10.0,
                cluster.name, endpoint, tls)
            cluster.balancer.started(endpoint)
            in_flight = (cluster, endpoint)
            result = yield Send(attempt)
            in_flight = None
            assert result is not None
            state.end_retry()
            outcome = result.outcome
            if cluster.outlier is not None:
                cluster.outlier.record(endpoint, outcome)
            wants_retry = policy.attempts > 0 and should_retry(
                policy, outcome, grpc=req.grpc, request_replayable=ctx.replayable)
            if wants_retry and retries < policy.attempts:
                if not _take_retry_slot(cluster):
                    # Envoy's router: a retry refused by the budget or maxRetries is overflow
                    flags.append(Flag.UPSTREAM_OVERFLOW)
                else:
                    state.holding_retry = cluster
                    _release(cluster, endpoint)
                    if result.response is not None:
                        yield Discard(result.response)
                    tried.append(endpoint)
                    retries += 1
                    pause = backoff_delay(policy, retries, ctx.rng)
                    if deadline is not None:
                        pause = min(pause, max(deadline - ctx.clock(), 0.0))
                    if pause > 0:
                        yield Sleep(pause)
                    continue
            elif wants_retry:
                flags.append(Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
            return _finish(decision, req, plan, cluster, endpoint, result,
                           tuple(flags) if flags else (), retries + 1, state,
                           tls is not None and tls.mode == "ISTIO_MUTUAL")
    except GeneratorExit:
        # The driver abandoned the call (cancelled task, caller's exception): give back
        # what this call holds, or the cluster would leak admission slots and load.
        if in_flight is not None:
            _release(*in_flight)
        state.settle()
        raise


# --- pieces of the flow ------------------------------------------------------------------


def _forward_headers(req: RequestView) -> list[tuple[str, str]]:
    """The caller's headers minus the hop-by-hop and mesh-internal ones."""
    return [item for item in req.headers.items() if item[0] not in _DROP]


_TIMEOUT_MEMO_LIMIT = 256
_TIMEOUT_HEADERS: dict[float, tuple[str, str]] = {}
"""``x-envoy-expected-rq-timeout-ms`` by per-try limit in seconds."""


def _attempt_headers(request_ops: tuple[HeaderOperations, ...],
                     base: list[tuple[str, str]], per_try: float | None,
                     grpc: bool) -> tuple[tuple[str, str], ...]:
    headers = base
    for ops in request_ops:
        headers = apply_header_operations(headers, ops)
    # the header's text once per distinct per-try limit: a configured perTryTimeout
    # repeats on every call, and formatting it touched four C routines per call
    if per_try is not None:
        timeout = _TIMEOUT_HEADERS.get(per_try)
        if timeout is None:
            if math.isinf(per_try):  # no limit to tell
                return tuple(headers)
            timeout = (ENVOY_TIMEOUT_HEADER, str(max(int(per_try * 1000), 1)))
            remember(_TIMEOUT_HEADERS, per_try, timeout, _TIMEOUT_MEMO_LIMIT)
        if not grpc:
            return (*headers, timeout)
        headers = [(k, v) for k, v in (*headers, timeout) if k != GRPC_TIMEOUT_HEADER]
        headers.append((GRPC_TIMEOUT_HEADER, format_grpc_timeout(per_try)))
    return tuple(headers)


def _choose(ctx: CallContext, decision: RouteDecision, target: Target | None,
            tried: list[Endpoint], policy: Any, port: int | None
            ) -> tuple[Cluster | None, Endpoint | None, LocalReply | None]:
    """Cluster and endpoint for the next attempt, or the local reply explaining why not."""
    if target is None:  # ALLOW_ANY passthrough to the original destination
        raw_host, raw_port = split_host_port(ctx.request.authority)
        through = ctx.clusters.passthrough(ctx.snapshot, raw_host,
                                           raw_port or ctx.request.port or 80)
        return through, through.endpoints[0], None
    # port: _target_port(ctx, target), computed once per plan
    cluster = ctx.clusters.get(ctx.snapshot, ctx.view, target.fqdn, target.subset, port)
    if cluster is None:
        return None, None, LocalReply.text(503, NO_HEALTHY_UPSTREAM, Flag.NO_CLUSTER)
    healthy = cluster.healthy()
    if not healthy:
        return cluster, None, LocalReply.text(503, NO_HEALTHY_UPSTREAM, Flag.NO_HEALTHY_UPSTREAM)
    locality = ctx.request.source.locality
    if locality:
        lb = getattr(cluster.policy, "load_balancer", None)
        setting = getattr(lb, "locality_lb_setting", None) or ctx.mesh.locality_lb_setting
        healthy = locality_preference(healthy, locality, setting,
                                      failover_enabled=cluster.outlier is not None) or healthy
    avoid = tried if policy.ignore_previous_hosts else ()
    key = (hash_key(cluster.hashing, ctx.request, ctx.source_ip)
           if cluster.hashing is not None else None)
    endpoint = cluster.balancer.pick(healthy, hash_key=key, avoid=avoid)
    if endpoint is None:  # PASSTHROUGH load balancing: the original destination
        raw_host, raw_port = split_host_port(ctx.request.authority)
        endpoint = Endpoint(raw_host, raw_port or port or 80)
    return cluster, endpoint, None


def _take_retry_slot(cluster: Cluster) -> bool:
    """May one more retry go out? The retry budget, and ``maxRetries`` unless a
    ``retryBudget`` is configured (Envoy ignores maxRetries then)."""
    if not cluster.budget.try_withdraw():
        return False
    if cluster.policy is not None and cluster.policy.retry_budget is not None:
        return True
    if cluster.limits.try_acquire_retry():
        return True
    cluster.budget.on_retry_done()  # give back what was withdrawn
    return False


def _target_port(ctx: CallContext, target: Target) -> int | None:
    """The service port a target is reached on: its own, the service's only one, the request's."""
    return target.port or _only_port(target) or ctx.request.port


def _only_port(target: Target) -> int | None:
    service = target.service
    if service is not None and len(service.ports) == 1:
        return service.ports[0].number
    return None


def _release(cluster: Cluster, endpoint: Endpoint) -> None:
    cluster.limits.release()
    cluster.balancer.finished(endpoint)


def _mirrors(ctx: CallContext, decision: RouteDecision, path: str, authority: str,
             headers: list[tuple[str, str]]) -> list[Mirror]:
    """Mirror effects for this request: ``mirror`` + ``mirrorPercentage`` or ``mirrors[]``."""
    route = decision.route
    if route is None or not ctx.replayable:
        return []
    wanted: list[tuple[Any, float]] = []
    if route.mirror is not None:
        pct = route.mirror_percentage.value if route.mirror_percentage is not None else (
            float(route.mirror_percent) if route.mirror_percent is not None else 100.0)
        wanted.append((route.mirror, pct))
    for m in route.mirrors or ():
        wanted.append((m.destination, m.percentage.value if m.percentage is not None else 100.0))
    out: list[Mirror] = []
    vs = decision.virtual_service
    for dest, pct in wanted:
        if dest is None or pct <= 0 or ctx.rng.random() * 100.0 >= pct:
            continue
        fqdn = expand_host(dest.host, vs.namespace if vs else ctx.view.namespace,
                           ctx.snapshot.domain)
        port = dest.port.number if dest.port is not None and dest.port.number else None
        service = ctx.view.service(fqdn)
        if port is None and service is not None and len(service.ports) == 1:
            port = service.ports[0].number
        cluster = ctx.clusters.get(ctx.snapshot, ctx.view, fqdn, dest.subset, port)
        if cluster is None:
            continue
        healthy = cluster.healthy()
        endpoint = cluster.balancer.pick(healthy) if healthy else None
        if endpoint is None:
            continue
        out.append(Mirror(Attempt(
            scheme=cluster.scheme or ctx.request.scheme, address=endpoint.address,
            port=endpoint.port,
            path=path, authority=authority, headers=tuple(headers), timeout=None,
            connect_timeout=cluster.limits.connect_timeout, cluster=cluster.name,
            endpoint=endpoint)))
    return out


def _abort_reply(status: int | None, grpc_status: int | None, grpc: bool) -> LocalReply:
    if grpc and grpc_status is not None:
        return LocalReply(200, b"", (("content-type", "application/grpc"),
                                     ("grpc-status", str(grpc_status)),
                                     ("grpc-message", FAULT_ABORT)),
                          (Flag.FAULT_INJECTED,), grpc_status)
    return LocalReply.text(status or 503, FAULT_ABORT, Flag.FAULT_INJECTED)


def _local(reply: LocalReply, decision: RouteDecision, flags: tuple[Flag, ...], *,
           cluster: Cluster | None = None, attempts: int = 0) -> CallResult:
    merged = tuple(dict.fromkeys((*flags, *reply.flags)))
    return CallResult(local_reply=reply, flags=merged, attempts=attempts,
                      route_name=decision.route_name,
                      cluster=cluster.name if cluster is not None else None,
                      status=reply.status, decision=decision,
                      service=cluster.service if cluster is not None else None)


def _finish(decision: RouteDecision, req: RequestView, plan: _Plan,
            cluster: Cluster, endpoint: Endpoint, result: AttemptResult,
            flags: tuple[Flag, ...], attempts: int, state: _CallState,
            mtls: bool) -> CallResult:
    outcome = result.outcome
    state.cluster = cluster
    state.endpoint = endpoint

    if result.response is None:  # no answer at all: Envoy's local reply for the failure
        state.release()
        reply = _failure_reply(outcome)
        return _local(reply, decision, (*flags, *reply.flags), cluster=cluster,
                      attempts=attempts)

    response_headers = None
    if plan.response_work:  # else the driver passes the upstream head on unchanged
        target = plan.target

        def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
            if target is not None:
                for ops in response_header_operations(decision, target):
                    headers = apply_header_operations(headers, ops)
            if decision.cors is not None:  # Envoy's CORS filter overwrites these headers
                cors = cors_response_headers(decision.cors, req)
                names = {k.lower() for k, _ in cors}
                headers = [(k, v) for k, v in headers if k.lower() not in names] + cors
            return headers

    # Every call that gets an answer ends here: the thirteen fields are stored one by
    # one, not bound as keyword arguments of the dataclass __init__ (half the cost).
    answered: CallResult = object.__new__(CallResult)
    answered.response = result.response
    answered.local_reply = None
    answered.flags = flags
    answered.attempts = attempts
    answered.route_name = decision.route_name
    answered.cluster = cluster.name
    answered.endpoint = endpoint
    answered.status = outcome.status
    answered.response_headers = response_headers
    answered.release = state.release
    answered.decision = decision
    answered.service = cluster.service
    answered.mtls = mtls
    return answered


def _failure_reply(outcome: Outcome) -> LocalReply:
    failure = outcome.failure
    if failure == Failure.TIMEOUT:
        return LocalReply.text(504, UPSTREAM_TIMEOUT, Flag.UPSTREAM_REQUEST_TIMEOUT)
    if failure == Failure.CONNECT_FAILURE:
        return LocalReply.text(503, CONNECT_FAILURE, Flag.UPSTREAM_CONNECTION_FAILURE)
    if failure == Failure.OVERFLOW:
        return LocalReply.text(503, UPSTREAM_OVERFLOW, Flag.UPSTREAM_OVERFLOW)
    return LocalReply.text(503, REMOTE_RESET, Flag.UPSTREAM_REMOTE_RESET)
