"""The value objects built on every call by helpers rather than by callers
(``RequestView.build``, ``call_info``, ``AuthzRequest``'s derived fields,
``status_outcome``): each helper gives what the plain constructor would."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshsdk.config.snapshot import Endpoint
from meshsdk.dataplane.flow import CallResult
from meshsdk.outcome import Flag
from meshsdk.routing.request import RequestView
from meshsdk.security.authz import AuthzRequest
from meshsdk.transport.common import CallInfo, call_info, status_outcome
from meshsdk.workload import Workload


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_request_view_build_normalises_as_the_constructor_expects() -> None:
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
    grpc = RequestView.of("POST", "https", "svc", "/pkg.S/M", "",
                          {"content-type": "application/grpc+proto"}, source)
    assert _values(grpc) == _values(RequestView(
        method="POST", scheme="https", authority="svc", path="/pkg.S/M", query="",
        headers={"content-type": "application/grpc+proto"}, port=443, source=source,
        grpc=True))


def test_call_info_summarises_the_verdict() -> None:
    result = CallResult(flags=(Flag.UPSTREAM_OVERFLOW,), attempts=2, route_name="r",
                        cluster="c", endpoint=Endpoint("127.0.0.1", 9080))
    assert _values(call_info(result)) == _values(CallInfo(
        (Flag.UPSTREAM_OVERFLOW,), 2, "r", "c", "127.0.0.1:9080", False))


def test_authz_request_derives_its_fields() -> None:
    request = AuthzRequest(principal="spiffe://cluster.local/ns/default/sa/a", host="H",
                           path="/x?y=1")
    values = _values(request)
    assert values["namespace"] == "default" and values["host_lower"] == "h"
    assert values["query"] == "y=1" and values["service_account"] == "default/a"


def test_status_outcomes_are_shared_and_plain() -> None:
    assert status_outcome(200) is status_outcome(200)
    assert (status_outcome(503).status, status_outcome(503).failure,
            status_outcome(503).grpc_status) == (503, None, None)

