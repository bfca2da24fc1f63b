"""Match blocks, condition by condition, as Envoy evaluates the routes Istio generates."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from meshsdk.config import load_string
from meshsdk.config.kinds.virtual_service import HTTPMatchRequest
from meshsdk.config.types import StringMatch
from meshsdk.routing.match import (
    compile_match,
    match_request,
    parse_query,
    regex_fullmatcher,
    request_path,
    request_query,
    string_match,
)
from meshsdk.routing.request import RequestView
from meshsdk.workload import Workload

SOURCE = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"})


def match_of(block: dict[str, Any]) -> HTTPMatchRequest:
    """A match block as a user writes it, through the loader and its validation."""
    doc = {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "m"},
        "spec": {"hosts": ["reviews"],
                 "http": [{"match": [block], "route": [{"destination": {"host": "reviews"}}]}]},
    }
    result = load_string(yaml.safe_dump(doc))
    assert not result.errors, [str(d) for d in result.errors]
    m = result.resources[0].spec.http[0].match[0]
    assert isinstance(m, HTTPMatchRequest)
    return m


def req(path: str = "/", *, method: str = "GET", scheme: str = "http",
        authority: str = "reviews:9080", query: str = "",
        headers: list[tuple[str, str]] | None = None,
        source: Workload = SOURCE) -> RequestView:
    return RequestView.build(method, scheme, authority, path, query, headers or [],
                             source=source)


# --- string_match ----------------------------------------------------------------------

SM = StringMatch


@pytest.mark.parametrize(("m", "value", "ignore_case", "expected"), [
    (SM(exact="jason"), "jason", False, True),
    (SM(exact="jason"), "Jason", False, False),
    (SM(exact="jason"), "Jason", True, True),
    (SM(exact="jason"), "jason2", False, False),
    (SM(exact=""), "", False, True),
    (SM(prefix="/api"), "/api/v1", False, True),
    (SM(prefix="/api"), "/API/v1", False, False),
    (SM(prefix="/api"), "/API/v1", True, True),
    (SM(prefix="/api"), "/ap", False, False),
    (SM(prefix=""), "anything", False, True),
    (SM(regex="v[0-9]+"), "v12", False, True),
    (SM(regex="v[0-9]+"), "xv12", False, False),        # a full match, not a search
    (SM(regex="v[0-9]+"), "v12x", False, False),
    (SM(regex="V[0-9]+"), "v12", True, False),          # ignore_case: exact/prefix only
    (SM(regex=r"\d+"), "\u0663", False, False),         # RE2's \d is ASCII (Python's is not)
    (SM(regex="^.$"), "\u00e9", False, True),           # UTF-8: one character, two bytes
    (SM(regex="a|b"), "b", False, True),                # alternation anchored as a whole
    (SM(), "any value", False, True),                   # {}: present
    (SM(exact="jason"), None, False, False),            # None never matches
    (SM(), None, False, False),
])
def test_string_match(m: StringMatch, value: str | None, ignore_case: bool,
                      expected: bool) -> None:
    assert string_match(m, value, ignore_case=ignore_case) is expected


def test_regex_fullmatcher_agrees_with_python_on_simple_patterns() -> None:
    samples = ["", "a", "abc", "/api/v1/users", "v1", "x/y/z", "aaa"]
    for pattern in ["a*", "abc", "/api/v[0-9]+/.*", "(a|b)+", ".*", "[a-z]+/[a-z]+/[a-z]+"]:
        ours = regex_fullmatcher(pattern)
        python = re.compile(pattern)
        for s in samples:
            assert ours(s) is (python.fullmatch(s) is not None), (pattern, s)


def test_regex_compiled_once() -> None:
    assert regex_fullmatcher("cached[0-9]") is regex_fullmatcher("cached[0-9]")


# --- request parts ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "query", "want_path", "want_query"), [
    ("/a/b", "", "/a/b", ""),
    ("/a/b", "x=1", "/a/b", "x=1"),
    ("/a/b?x=1", "", "/a/b", "x=1"),
    ("/a#frag", "", "/a", ""),
])
def test_request_path_and_query(path: str, query: str, want_path: str, want_query: str) -> None:
    r = req(path, query=query)
    assert request_path(r) == want_path
    assert request_query(r) == want_query


def test_parse_query_first_raw_value() -> None:
    assert parse_query("a=1&a=2&flag&b=x%20y&=v") == {"a": "1", "flag": "", "b": "x%20y",
                                                       "": "v"}
    assert parse_query("") == {}


# --- every HTTPMatchRequest field ------------------------------------------------------

J = ("end-user", "jason")

CASES: list[tuple[str, dict[str, Any], RequestView, bool]] = [
    # uri
    ("uri exact", {"uri": {"exact": "/reviews/1"}}, req("/reviews/1"), True),
    ("uri exact other", {"uri": {"exact": "/reviews/1"}}, req("/reviews/12"), False),
    ("uri exact ignores query", {"uri": {"exact": "/reviews"}}, req("/reviews", query="a=1"),
     True),
    ("uri exact case", {"uri": {"exact": "/Reviews"}}, req("/reviews"), False),
    ("uri exact ignoreUriCase", {"uri": {"exact": "/Reviews"}, "ignoreUriCase": True},
     req("/reVIEWS"), True),
    ("uri prefix", {"uri": {"prefix": "/api/"}}, req("/api/v1"), True),
    ("uri prefix miss", {"uri": {"prefix": "/api/"}}, req("/apiv1"), False),
    ("uri prefix ignoreUriCase", {"uri": {"prefix": "/API"}, "ignoreUriCase": True},
     req("/api/x"), True),
    ("uri prefix /", {"uri": {"prefix": "/"}}, req("/anything"), True),
    ("uri regex", {"uri": {"regex": "/reviews/[0-9]+"}}, req("/reviews/42"), True),
    ("uri regex is a full match", {"uri": {"regex": "/reviews/[0-9]+"}},
     req("/reviews/42/x"), False),
    ("uri regex ignores query", {"uri": {"regex": "/r/[0-9]+"}}, req("/r/1", query="x=y"),
     True),
    ("uri regex ignores ignoreUriCase", {"uri": {"regex": "/R"}, "ignoreUriCase": True},
     req("/r"), False),
    # scheme, method, authority
    ("scheme", {"scheme": {"exact": "http"}}, req(), True),
    ("scheme other", {"scheme": {"exact": "https"}}, req(), False),
    ("method", {"method": {"exact": "GET"}}, req(), True),
    ("method other", {"method": {"exact": "POST"}}, req(), False),
    ("method regex", {"method": {"regex": "GET|HEAD"}}, req(method="head"), True),
    ("authority exact with port", {"authority": {"exact": "reviews:9080"}}, req(), True),
    ("authority without port differs", {"authority": {"exact": "reviews"}}, req(), False),
    ("authority prefix", {"authority": {"prefix": "reviews"}},
     req(authority="reviews.default:9080"), True),
    # headers
    ("header exact", {"headers": {"end-user": {"exact": "jason"}}}, req(headers=[J]), True),
    ("header exact other", {"headers": {"end-user": {"exact": "jason"}}},
     req(headers=[("end-user", "bob")]), False),
    ("header missing", {"headers": {"end-user": {"exact": "jason"}}}, req(), False),
    ("header name case", {"headers": {"end-user": {"exact": "jason"}}},
     req(headers=[("End-User", "jason")]), True),
    ("header value case", {"headers": {"end-user": {"exact": "jason"}}},
     req(headers=[("end-user", "Jason")]), False),
    ("header prefix", {"headers": {"x-ver": {"prefix": "v1"}}}, req(headers=[("x-ver", "v1.2")]),
     True),
    ("header regex", {"headers": {"x-ver": {"regex": "v[12]"}}}, req(headers=[("x-ver", "v2")]),
     True),
    ("header regex full", {"headers": {"x-ver": {"regex": "v[12]"}}},
     req(headers=[("x-ver", "v21")]), False),
    ("header present {}", {"headers": {"x-canary": {}}}, req(headers=[("x-canary", "")]), True),
    ("header present {} missing", {"headers": {"x-canary": {}}}, req(), False),
    ("header repeated values joined", {"headers": {"x-a": {"exact": "1,2"}}},
     req(headers=[("x-a", "1"), ("x-a", "2")]), True),
    ("pseudo-header :method", {"headers": {":method": {"exact": "POST"}}}, req(method="POST"),
     True),
    ("pseudo-header :path has the query", {"headers": {":path": {"exact": "/p?q=1"}}},
     req("/p", query="q=1"), True),
    # withoutHeaders
    ("withoutHeaders missing", {"withoutHeaders": {"end-user": {"exact": "jason"}}}, req(), True),
    ("withoutHeaders equal", {"withoutHeaders": {"end-user": {"exact": "jason"}}},
     req(headers=[J]), False),
    ("withoutHeaders different", {"withoutHeaders": {"end-user": {"exact": "jason"}}},
     req(headers=[("end-user", "bob")]), True),
    ("withoutHeaders {} absent", {"withoutHeaders": {"x-debug": {}}}, req(), True),
    ("withoutHeaders {} present", {"withoutHeaders": {"x-debug": {}}},
     req(headers=[("x-debug", "1")]), False),
    ("withoutHeaders regex *", {"withoutHeaders": {"x-debug": {"regex": "*"}}},
     req(headers=[("x-debug", "1")]), False),
    ("withoutHeaders prefix on missing", {"withoutHeaders": {"x": {"prefix": "a"}}}, req(), True),
    # queryParams
    ("query exact", {"queryParams": {"v": {"exact": "2"}}}, req(query="v=2"), True),
    ("query exact other", {"queryParams": {"v": {"exact": "2"}}}, req(query="v=3"), False),
    ("query missing", {"queryParams": {"v": {"exact": "2"}}}, req(), False),
    ("query prefix", {"queryParams": {"v": {"prefix": "2"}}}, req(query="v=2.1"), True),
    ("query regex", {"queryParams": {"v": {"regex": "[0-9]+"}}}, req(query="a=b&v=10"), True),
    ("query present {}", {"queryParams": {"debug": {}}}, req(query="debug"), True),
    ("query flag exact ''", {"queryParams": {"debug": {"exact": ""}}}, req(query="debug"), True),
    ("query first value", {"queryParams": {"v": {"exact": "1"}}}, req(query="v=1&v=2"), True),
    ("query raw, not decoded", {"queryParams": {"q": {"exact": "a b"}}}, req(query="q=a%20b"),
     False),
    ("query in path", {"queryParams": {"v": {"exact": "2"}}}, req("/x?v=2"), True),
    # port
    ("port", {"port": 9080}, req(), True),
    ("port other", {"port": 9090}, req(), False),
    ("port default of scheme", {"port": 80}, req(authority="reviews"), True),
    # source workload
    ("sourceLabels subset", {"sourceLabels": {"app": "productpage"}}, req(), True),
    ("sourceLabels all", {"sourceLabels": {"app": "productpage", "version": "v1"}}, req(), True),
    ("sourceLabels other value", {"sourceLabels": {"version": "v2"}}, req(), False),
    ("sourceLabels missing label", {"sourceLabels": {"team": "a"}}, req(), False),
    ("sourceNamespace", {"sourceNamespace": "default"}, req(), True),
    ("sourceNamespace other", {"sourceNamespace": "prod"}, req(), False),
    # gateways
    ("gateways mesh", {"gateways": ["mesh"]}, req(), True),
    ("gateways only a gateway", {"gateways": ["istio-system/ingress"]}, req(), False),
    ("gateways mesh skip sourceLabels (Istio)",
     {"gateways": ["mesh", "istio-system/ingress"], "sourceLabels": {"app": "other"}}, req(),
     True),
    # AND inside a block
    ("and: all hold", {"uri": {"prefix": "/r"}, "headers": {"end-user": {"exact": "jason"}},
                       "method": {"exact": "GET"}}, req("/r/1", headers=[J]), True),
    ("and: header fails", {"uri": {"prefix": "/r"}, "headers": {"end-user": {"exact": "jason"}}},
     req("/r/1"), False),
    ("and: uri fails", {"uri": {"prefix": "/r"}, "headers": {"end-user": {"exact": "jason"}}},
     req("/x", headers=[J]), False),
    ("and: port fails", {"port": 1, "headers": {"end-user": {"exact": "jason"}}},
     req(headers=[J]), False),
    # an empty block matches everything
    ("empty block", {}, req(), True),
    ("only a name", {"name": "all"}, req(), True),
]


@pytest.mark.parametrize(("block", "request_view", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_match_request(block: dict[str, Any], request_view: RequestView,
                       expected: bool) -> None:
    assert match_request(match_of(block), request_view) is expected


def test_every_match_field_is_covered() -> None:
    covered = {k for _, block, _, _ in CASES for k in block}
    wire = {f.alias or n for n, f in HTTPMatchRequest.model_fields.items()}
    assert wire - covered == {"statPrefix"}  # routing never reads statPrefix


def test_header_names_in_config_are_lower_cased() -> None:
    m = HTTPMatchRequest(headers={"End-User": StringMatch(exact="jason")})
    assert match_request(m, req(headers=[J]))


def test_null_header_match_means_present() -> None:
    m = HTTPMatchRequest(headers={"x-canary": None})  # validation refuses it; still defined
    assert match_request(m, req(headers=[("x-canary", "1")]))
    assert not match_request(m, req())


def test_jwt_claims_never_match_on_the_outbound_path() -> None:
    claim = "@request.auth.claims.group"
    assert not match_request(HTTPMatchRequest(headers={claim: StringMatch(exact="a")}), req())
    assert match_request(HTTPMatchRequest(without_headers={claim: StringMatch(exact="a")}),
                         req())


def test_compiled_once_per_block() -> None:
    m = match_of({"uri": {"prefix": "/x"}})
    assert compile_match(m) is compile_match(m)


def test_source_checks_read_the_calling_workload() -> None:
    m = match_of({"sourceLabels": {"app": "reviews"}, "sourceNamespace": "prod"})
    caller = Workload("reviews-v1", "prod", {"app": "reviews", "version": "v1"})
    assert match_request(m, req(source=caller))
    assert not match_request(m, req(source=Workload("reviews-v1", "default", {"app": "reviews"})))
