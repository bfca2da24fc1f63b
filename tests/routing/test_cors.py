"""CORS as Envoy's CORS filter applies an Istio corsPolicy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshsdk.config import load_string
from meshsdk.config.kinds.virtual_service import CorsPolicy
from meshsdk.routing.cors import (
    cors_response_headers,
    is_preflight,
    origin_allowed,
    preflight_reply,
)
from meshsdk.routing.request import RequestView

SHOP = "https://shop.example"


def policy(**spec: Any) -> CorsPolicy:
    """A corsPolicy as a user writes it, through the loader and its validation."""
    doc = {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "c"},
        "spec": {"hosts": ["reviews"],
                 "http": [{"corsPolicy": spec, "route": [{"destination": {"host": "reviews"}}]}]},
    }
    result = load_string(yaml.safe_dump(doc))
    assert not result.errors, [str(d) for d in result.errors]
    found = result.resources[0].spec.http[0].cors_policy
    assert isinstance(found, CorsPolicy)
    return found


def req(method: str = "OPTIONS", **headers: str) -> RequestView:
    items = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return RequestView.build(method, "http", "reviews:9080", "/", "", items)


def preflight(origin: str = SHOP, method: str = "PUT", **more: str) -> RequestView:
    return req("OPTIONS", origin=origin, access_control_request_method=method, **more)


@pytest.mark.parametrize(("request_view", "expected"), [
    (preflight(), True),
    (req("OPTIONS", origin=SHOP), False),                                 # no ACRM
    (req("OPTIONS", access_control_request_method="PUT"), False),         # no Origin
    (req("OPTIONS", origin="", access_control_request_method="PUT"), False),
    (req("GET", origin=SHOP, access_control_request_method="PUT"), False),
    (req("options", origin=SHOP, access_control_request_method="PUT"), True),  # build upper-cases
])
def test_is_preflight(request_view: RequestView, expected: bool) -> None:
    assert is_preflight(request_view) is expected


@pytest.mark.parametrize(("spec", "origin", "allowed"), [
    ({"allowOrigins": [{"exact": SHOP}]}, SHOP, True),
    ({"allowOrigins": [{"exact": SHOP}]}, "https://shop.example.evil", False),
    ({"allowOrigins": [{"prefix": "https://shop."}]}, "https://shop.example", True),
    ({"allowOrigins": [{"regex": r"https://[a-z]+\.example"}]}, "https://api.example", True),
    ({"allowOrigins": [{"regex": r"https://[a-z]+\.example"}]}, "https://api.example:8443",
     False),
    ({"allowOrigins": [{"exact": "*"}]}, "https://anyone.example", True),  # matches "*"
    ({"allowOrigins": [{"regex": ".*"}]}, "https://anyone.example", True),
    ({"allowOrigin": [SHOP]}, SHOP, True),                                  # deprecated form
    ({"allowOrigin": [SHOP]}, "https://other.example", False),
    ({"allowOrigin": ["https://other.example"], "allowOrigins": [{"exact": SHOP}]}, SHOP, True),
    ({"allowOrigin": [SHOP], "allowOrigins": [{"exact": "https://other.example"}]}, SHOP,
     False),                                                     # allowOrigins wins when set
    ({}, SHOP, False),
])
def test_origin_allowed(spec: dict[str, Any], origin: str, allowed: bool) -> None:
    assert origin_allowed(policy(**spec), origin) is allowed


def test_preflight_reply_with_everything() -> None:
    p = policy(allowOrigins=[{"exact": SHOP}], allowMethods=["GET", "PUT"],
               allowHeaders=["content-type", "x-token"], exposeHeaders=["x-id"],
               maxAge="24h", allowCredentials=True)
    reply = preflight_reply(p, preflight())
    assert reply is not None
    assert (reply.status, reply.body, reply.flags) == (200, b"", ())
    assert reply.headers == (
        ("access-control-allow-origin", SHOP),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET,PUT"),
        ("access-control-allow-headers", "content-type,x-token"),
        ("access-control-max-age", "86400"),
    )


def test_preflight_reply_minimal() -> None:
    reply = preflight_reply(policy(allowOrigins=[{"exact": SHOP}]), preflight())
    assert reply is not None and reply.headers == (("access-control-allow-origin", SHOP),)


def test_wildcard_methods_and_headers_echo_the_request() -> None:
    p = policy(allowOrigins=[{"exact": SHOP}], allowMethods=["*"], allowHeaders=["*"])
    reply = preflight_reply(p, preflight(method="PATCH", access_control_request_headers="x-a"))
    assert reply is not None
    headers = dict(reply.headers)
    assert headers["access-control-allow-methods"] == "PATCH"
    assert headers["access-control-allow-headers"] == "x-a"


@pytest.mark.parametrize("unmatched", [None, "UNSPECIFIED", "FORWARD"])
def test_unmatched_preflight_is_forwarded(unmatched: str | None) -> None:
    spec: dict[str, Any] = {"allowOrigins": [{"exact": SHOP}], "allowMethods": ["GET"]}
    if unmatched is not None:
        spec["unmatchedPreflights"] = unmatched
    assert preflight_reply(policy(**spec), preflight(origin="https://evil.example")) is None


def test_unmatched_preflight_ignored_is_answered_without_allow_origin() -> None:
    p = policy(allowOrigins=[{"exact": SHOP}], allowMethods=["GET"],
               unmatchedPreflights="IGNORE")
    reply = preflight_reply(p, preflight(origin="https://evil.example"))
    assert reply is not None and reply.status == 200
    assert reply.headers == (("access-control-allow-methods", "GET"),)


def test_not_a_preflight_gets_no_reply() -> None:
    assert preflight_reply(policy(allowOrigins=[{"exact": "*"}]), req("GET", origin=SHOP)) is None


@pytest.mark.parametrize(("spec", "request_view", "expected"), [
    ({"allowOrigins": [{"exact": SHOP}]}, req("GET", origin=SHOP),
     [("access-control-allow-origin", SHOP)]),
    ({"allowOrigins": [{"exact": SHOP}], "allowCredentials": True, "exposeHeaders": ["a", "b"]},
     req("POST", origin=SHOP),
     [("access-control-allow-origin", SHOP), ("access-control-allow-credentials", "true"),
      ("access-control-expose-headers", "a,b")]),
    ({"allowOrigins": [{"exact": SHOP}], "allowCredentials": False}, req("GET", origin=SHOP),
     [("access-control-allow-origin", SHOP)]),
    ({"allowOrigins": [{"exact": SHOP}]}, req("GET", origin="https://evil.example"), []),
    ({"allowOrigins": [{"exact": SHOP}]}, req("GET"), []),
])
def test_cors_response_headers(spec: dict[str, Any], request_view: RequestView,
                               expected: list[tuple[str, str]]) -> None:
    assert cors_response_headers(policy(**spec), request_view) == expected
