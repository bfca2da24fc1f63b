"""Objects built by slot stores instead of their dataclass ``__init__``
(``meshsdk.frozen``): every field set, and equal to the one ``__init__`` builds. A
field added to one of these classes and forgotten in its builder would be unset
(reading it raises AttributeError), which these tests catch."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshsdk.config.snapshot import Endpoint
from meshsdk.dataplane.flow import Attempt, CallResult, _attempt
from meshsdk.frozen import slot_setters
from meshsdk.outcome import Flag
from meshsdk.routing.request import RequestView
from meshsdk.security.authz import AuthzRequest
from meshsdk.transport.common import CallInfo, call_info, status_outcome
from meshsdk.workload import Workload


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_slot_setters_store_into_a_frozen_object() -> None:
    set_host, set_port = slot_setters(Endpoint, "address", "port")
    endpoint: Endpoint = object.__new__(Endpoint)
    set_host(endpoint, "10.0.0.1")
    set_port(endpoint, 80)
    assert (endpoint.address, endpoint.port) == ("10.0.0.1", 80)


def test_request_view_build_sets_every_field() -> None:
    source = Workload("a", "ns", {"app": "a"})
    view = RequestView.build("get", "HTTP", "Svc:8080", "/p", "q=1",
                             [("Host", "svc:8080"), ("X-A", "1"), ("x-a", "2")], source=source)
    assert _values(view) == _values(RequestView(
        method="GET", scheme="http", authority="Svc:8080", path="/p", query="q=1",
        headers={"host": "svc:8080", "x-a": "1,2"}, port=8080, source=source, grpc=False))
    # the lower-case fast path joins repeats as the general one does
    fast = RequestView.build("GET", "http", "[::1]", "/", "", [("x-a", "1"), ("x-a", "2")],
                             lowered=True)
    assert dict(fast.headers) == {"x-a": "1,2"} and fast.port == 80


def test_attempt_builder_sets_every_field() -> None:
    endpoint = Endpoint("127.0.0.1", 9080)
    args: dict[str, Any] = dict(scheme="http", address="127.0.0.1", port=9080, path="/r",
                                authority="r:9080", headers=(("a", "b"),), timeout=1.5,
                                connect_timeout=1.0, cluster="c", endpoint=endpoint, tls=None)
    assert _values(_attempt(**args)) == _values(Attempt(**args))


def test_call_info_sets_every_field() -> None:
    result = CallResult(flags=(Flag.UPSTREAM_OVERFLOW,), attempts=2, route_name="r",
                        cluster="c", endpoint=Endpoint("127.0.0.1", 9080))
    assert _values(call_info(result)) == _values(CallInfo(
        (Flag.UPSTREAM_OVERFLOW,), 2, "r", "c", "127.0.0.1:9080", False))


def test_authz_request_sets_every_field() -> None:
    request = AuthzRequest(principal="spiffe://cluster.local/ns/default/sa/a", host="H",
                           path="/x?y=1")
    values = _values(request)
    assert values["namespace"] == "default" and values["host_lower"] == "h"
    assert values["query"] == "y=1" and values["service_account"] == "default/a"


def test_status_outcomes_are_shared_and_plain() -> None:
    assert status_outcome(200) is status_outcome(200)
    assert (status_outcome(503).status, status_outcome(503).failure,
            status_outcome(503).grpc_status) == (503, None, None)

