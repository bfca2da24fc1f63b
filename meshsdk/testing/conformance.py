"""The data-path conformance table: scenario -> expected outcome, black-box.

Each :class:`Scenario` starts real upstreams, builds the mesh config from Istio
YAML, sends requests through *a driver* and checks what the caller saw and what
each upstream received. A driver is anything that can send a request through a
mesh built from a config: the sync transport, the async transport, and later
the framework middlewares and the sidecar run the very same table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshsdk.config.resource import Config
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import (
    Behaviour,
    Reply,
    Upstream,
    echo,
    free_port,
    respond,
    script,
    wait_until,
)


@dataclass(frozen=True, slots=True)
class Call:
    """One request to send."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Seen:
    """What the caller saw: status, headers (lower-case), body, mesh response flags."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    flags: str


Driver = Callable[[Config, Sequence[Call]], list[Seen]]
"""``driver(config, calls)`` sends the calls in order through a mesh built from
``config`` (workload ``productpage`` in ``default``) and reports what came back."""


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    service: str
    labels: Mapping[str, str]
    behaviour: Callable[[], Behaviour] = lambda: echo


@dataclass(frozen=True, slots=True)
class Scenario:
    """Upstreams, config (YAML built from the started upstreams), calls, expectations."""

    name: str
    upstreams: Mapping[str, UpstreamSpec]
    rules: Callable[[Mapping[str, Upstream]], Sequence[str]]
    calls: Callable[[Mapping[str, Upstream]], Sequence[Call]]
    status: int | Sequence[int]
    hits: Mapping[str, int] | None = None
    flags: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body_contains: bytes | None = None
    upstream_saw: Callable[[Mapping[str, Upstream]], bool] | None = None
    grpc: bool = True  # whether the scenario applies to gRPC clients


def _services(ups: Mapping[str, Upstream], specs: Mapping[str, UpstreamSpec],
              port: int = 9080, protocol: str = "HTTP") -> list[str]:
    by_service: dict[str, list[tuple[Upstream | int, Mapping[str, str]]]] = {}
    for name, spec in specs.items():
        by_service.setdefault(spec.service, []).append((ups[name], spec.labels))
    return [service_entry(svc, eps, port=port, protocol=protocol)
            for svc, eps in by_service.items()]


def _dr(host: str, subsets: Sequence[str], policy: str = "") -> str:
    subs = "\n".join(f"  - name: {s}\n    labels: {{version: {s}}}" for s in subsets)
    pol = f"  trafficPolicy:\n{policy}\n" if policy else ""
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: "
            f"{{name: {host}}}\nspec:\n  host: {host}\n{pol}  subsets:\n{subs}\n")


def _vs(host: str, http: str) -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: "
            f"{{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n{http}\n")


REVIEWS = {"v1": UpstreamSpec("reviews", {"version": "v1"}),
           "v2": UpstreamSpec("reviews", {"version": "v2"})}


def _get(path: str = "/", **headers: str) -> Callable[[Mapping[str, Upstream]], list[Call]]:
    return lambda ups: [Call(f"http://reviews:9080{path}", headers=headers)]


def _n(n: int, path: str = "/") -> Callable[[Mapping[str, Upstream]], list[Call]]:
    return lambda ups: [Call(f"http://reviews:9080{path}") for _ in range(n)]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "header match routes jason to v2", REVIEWS,
        lambda ups: [_dr("reviews", ["v1", "v2"]), _vs("reviews", """\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]""")],
        _get(**{"end-user": "jason"}), 200, hits={"v1": 0, "v2": 1}, flags="-"),
    Scenario(
        "no matching route is 404 NR", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews}}]""")],
        _get("/other"), 404, hits={"v1": 0, "v2": 0}, flags="NR"),
    Scenario(
        "direct response", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - directResponse: {status: 418, body: {string: teapot}}""")],
        _get(), 418, hits={"v1": 0, "v2": 0}, body_contains=b"teapot"),
    Scenario(
        "redirect", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - redirect: {uri: /v2/reviews, authority: ratings}""")],
        _get("/reviews"), 301, hits={"v1": 0, "v2": 0},
        headers={"location": "http://ratings/v2/reviews"}),
    Scenario(
        "prefix rewrite reaches the upstream", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: reviews}}]""")],
        _get("/old/item"), 200,
        upstream_saw=lambda ups: any(r.path == "/new/item" for u in ups.values()
                                     for r in u.requests)),
    Scenario(
        "request and response header operations", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - headers:
      request: {set: {x-set: "1"}, add: {x-added: yes-added}, remove: [x-drop]}
      response: {set: {x-resp: done}}
    route: [{destination: {host: reviews}}]""")],
        _get(**{"x-drop": "gone"}), 200, headers={"x-resp": "done"},
        upstream_saw=lambda ups: any(
            r.headers.get("x-set") == "1" and "x-drop" not in r.headers
            and r.headers.get("x-added") == "yes-added" for u in ups.values()
            for r in u.requests)),
    Scenario(
        "fault abort answers without reaching the upstream", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]""")],
        _get(), 503, hits={"v1": 0, "v2": 0}, flags="FI", body_contains=b"fault filter abort",
        grpc=False),
    Scenario(
        "fault delay is flagged and still answers", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - fault: {delay: {fixedDelay: 10ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]""")],
        _get(), 200, flags="DI"),
    Scenario(
        "retry on 5xx saves the call",
        {"v1": UpstreamSpec("reviews", {"version": "v1"},
                            lambda: script(Reply(503, b"down"), Reply(200, b"ok")))},
        lambda ups: [_vs("reviews", """\
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: reviews}}]""")],
        _get(), 200, hits={"v1": 2}, flags="-"),
    Scenario(
        "default retry policy does not retry 503",
        {"v1": UpstreamSpec("reviews", {"version": "v1"}, lambda: respond(503, "down"))},
        lambda ups: [], _get(), 503, hits={"v1": 1}, flags="-"),
    Scenario(
        "retries exhausted is URX",
        {"v1": UpstreamSpec("reviews", {"version": "v1"}, lambda: respond(503, "down"))},
        lambda ups: [_vs("reviews", """\
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: reviews}}]""")],
        _get(), 503, hits={"v1": 3}, flags="URX"),
    Scenario(
        "undefined subset is 503 NC", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - route: [{destination: {host: reviews, subset: v9}}]""")],
        _get(), 503, hits={"v1": 0, "v2": 0}, flags="NC"),
    Scenario(
        "mirror copies the request, answer comes from the primary",
        {"v1": UpstreamSpec("reviews", {"version": "v1"}),
         "shadow": UpstreamSpec("shadow", {"version": "v1"})},
        lambda ups: [_vs("reviews", """\
  - route: [{destination: {host: reviews}}]
    mirror: {host: shadow}""")],
        _get(), 200, headers={"x-upstream": "v1"},
        upstream_saw=lambda ups: (wait_until(lambda: ups["shadow"].hits == 1)
                                  and ups["shadow"].requests[0].headers["host"]
                                  == "reviews-shadow:9080")),
    Scenario(
        "outlier detection ejects a failing endpoint",
        {"bad": UpstreamSpec("reviews", {"version": "v1"}, lambda: respond(503, "bad")),
         "good": UpstreamSpec("reviews", {"version": "v1"}, lambda: respond(200, "good"))},
        lambda ups: [_dr("reviews", ["v1"], """\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s,
                       maxEjectionPercent: 100}""")],
        _n(6), [503, 200], hits={"bad": 1, "good": 5}),
    Scenario(
        "route timeout sets the deadline header for the upstream", REVIEWS,
        lambda ups: [_vs("reviews", """\
  - timeout: 5s
    route: [{destination: {host: reviews, subset: v1}}]"""), _dr("reviews", ["v1", "v2"])],
        _get(), 200,
        upstream_saw=lambda ups: any(
            0 < int(r.headers.get("x-envoy-expected-rq-timeout-ms", "0")) <= 5000
            for r in ups["v1"].requests)),
)


def connection_scenarios() -> tuple[Scenario, ...]:
    """Scenarios with endpoints that refuse connections (a port nothing listens on)."""
    dead = free_port()

    def rules_dead_and_live(ups: Mapping[str, Upstream]) -> list[str]:
        se = service_entry("reviews", [(dead, {"version": "v1"}), (ups["live"], {"version": "v1"})],
                           port=9080)
        return [se, _dr("reviews", ["v1"], "    loadBalancer: {simple: ROUND_ROBIN}")]

    def rules_dead(ups: Mapping[str, Upstream]) -> list[str]:
        return [service_entry("reviews", [(dead, {"version": "v1"})], port=9080)]

    return (
        Scenario("connect failure is retried on another endpoint (default policy)",
                 {"live": UpstreamSpec("unused", {})}, rules_dead_and_live, _n(4), 200,
                 hits={"live": 4}),
        Scenario("only dead endpoints is 503 UF with URX", {}, rules_dead, _get(), 503,
                 flags="URX,UF"),
    )


def run(scenario: Scenario, driver: Driver, *,
        upstream: Callable[[str, Behaviour], Upstream] = Upstream, protocol: str = "HTTP",
        status_of: Callable[[int, str | None], int] = lambda status, flags: status) -> None:
    """Run one scenario with ``driver``; AssertionError says what differed.

    Another protocol's drivers (the gRPC channel) give their own ``upstream`` server
    class, the ServiceEntry ``protocol``, and ``status_of``: the status they report for
    the scenario's HTTP status and flags (a gRPC code)."""
    started: dict[str, Upstream] = {}
    try:
        for name, spec in scenario.upstreams.items():
            started[name] = upstream(name, spec.behaviour()).start()
        docs = list(scenario.rules(started))
        if not any("kind: ServiceEntry" in d for d in docs):
            docs = _services(started, scenario.upstreams, protocol=protocol) + docs
        config = config_from_yaml(docs)
        seen = driver(config, scenario.calls(started))
        expected = scenario.status
        statuses = [s.status for s in seen]
        if isinstance(expected, int):
            want = status_of(expected, scenario.flags)
            assert all(s == want for s in statuses), f"{scenario.name}: statuses {statuses}"
        else:
            allowed = {status_of(s, scenario.flags) for s in expected}
            assert set(statuses) <= allowed, f"{scenario.name}: statuses {statuses}"
        if scenario.hits is not None:
            got = {name: started[name].hits for name in scenario.hits}
            assert got == dict(scenario.hits), f"{scenario.name}: hits {got}"
        if scenario.flags is not None:
            assert seen[-1].flags == scenario.flags, f"{scenario.name}: flags {seen[-1].flags}"
        for k, v in scenario.headers.items():
            assert seen[-1].headers.get(k) == v, \
                f"{scenario.name}: header {k}={seen[-1].headers.get(k)!r}"
        if scenario.body_contains is not None:
            assert scenario.body_contains in seen[-1].body, f"{scenario.name}: {seen[-1].body!r}"
        if scenario.upstream_saw is not None:
            saw = json.dumps([[r.path, r.headers] for u in started.values() for r in u.requests])
            assert scenario.upstream_saw(started), f"{scenario.name}: upstreams saw {saw}"
    finally:
        for up in started.values():
            up.stop()
