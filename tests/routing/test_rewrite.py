"""Path and authority rewrites, RE2 substitution and header operations."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from meshsdk.config import Snapshot
from meshsdk.config.kinds.virtual_service import HeaderOperations
from meshsdk.routing.request import RequestView
from meshsdk.routing.rewrite import (
    apply_header_operations,
    regex_replace_all,
    request_header_operations,
    response_header_operations,
    rewrite_request,
)
from meshsdk.routing.router import RouteDecision, Target, decide, pick_target

Build = Callable[..., Snapshot]
Req = Callable[..., RequestView]
VS = Callable[..., str]


def decide_for(snapshot: Snapshot, request: RequestView) -> RouteDecision:
    return decide(snapshot.view("default", {"app": "productpage"}), request, snapshot.mesh)


def rewritten(snapshot: Snapshot, request: RequestView) -> tuple[str, str | None]:
    d = decide_for(snapshot, request)
    target = d.targets[0] if d.targets else None
    return rewrite_request(d, request, target)


# --- path rewrites ---------------------------------------------------------------------

@pytest.mark.parametrize(("match", "rewrite", "path", "query", "expected"), [
    # a prefix match: the matched prefix is replaced
    ("[{uri: {prefix: /api/v1}}]", "{uri: /v2}", "/api/v1/users", "", "/v2/users"),
    ("[{uri: {prefix: /api/v1}}]", "{uri: /v2}", "/api/v1/users", "id=3", "/v2/users?id=3"),
    ("[{uri: {prefix: /api/}}]", "{uri: /}", "/api/users", "", "/users"),
    ("[{uri: {prefix: /API}, ignoreUriCase: true}]", "{uri: /x}", "/api/y", "", "/x/y"),
    # exact and regex matches: the whole path is replaced, the query kept
    ("[{uri: {exact: /old}}]", "{uri: /new}", "/old", "q=1", "/new?q=1"),
    ("[{uri: {regex: '/r/[0-9]+'}}]", "{uri: /ratings}", "/r/12", "", "/ratings"),
    # no uri condition: Istio's implicit prefix "/" is what gets replaced
    ("[{headers: {x-a: {}}}]", "{uri: /v2/}", "/ratings/1", "", "/v2/ratings/1"),
    (None, "{uri: /v2/}", "/ratings", "", "/v2/ratings"),
    (None, "{uri: /}", "/ratings", "", "/ratings"),
    # regex rewrite: the whole path, RE2 groups, query kept
    (None, "{uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}",
     "/service/foo/v1/api", "k=v", "/v1/api/instance/foo?k=v"),
    (None, "{uriRegexRewrite: {match: 'a', rewrite: 'b'}}", "/banana", "", "/bbnbnb"),
    (None, "{uriRegexRewrite: {match: '^/x', rewrite: '/y'}}", "/z", "", "/z"),
])
def test_path_rewrite(snapshot_of: Build, request_of: Req, vs: VS, match: str | None,
                      rewrite: str, path: str, query: str, expected: str) -> None:
    match_line = f"    match: {match}\n" if match else ""
    snap = snapshot_of(vs(f"  - rewrite: {rewrite}\n{match_line}"
                          "    route: [{destination: {host: reviews}}]\n"))
    if match is not None and "x-a" in match:
        request = request_of(path, query=query, headers={"x-a": "1"})
    else:
        request = request_of(path, query=query)
    assert rewritten(snap, request) == (expected, None)


def test_no_rewrite_keeps_path_and_query(snapshot_of: Build, request_of: Req, vs: VS) -> None:
    snap = snapshot_of(vs("  - route: [{destination: {host: reviews}}]\n"))
    assert rewritten(snap, request_of("/a/b", query="x=1")) == ("/a/b?x=1", None)
    assert rewritten(snapshot_of(), request_of("/a", authority="ratings:9080")) == ("/a", None)


@pytest.mark.parametrize(("path", "query", "expected"), [
    ("/a", "", "/a"),
    ("/a", "x=1", "/a?x=1"),
    ("/a", "?x=1", "/a?x=1"),        # a driver that kept the "?" on the query
    ("/a?x=1", "", "/a?x=1"),        # the query still on the path
    ("/a#frag", "", "/a"),           # a fragment never goes upstream
    ("/a?x=1#frag", "", "/a?x=1"),
])
def test_without_a_rewrite_the_target_is_normalised_as_with_one(
        snapshot_of: Build, request_of: Req, vs: VS, path: str, query: str,
        expected: str) -> None:
    """Routes without a rewrite take a shortcut; it must give what the general path
    gives (query from either place, fragment dropped), with and without a route."""
    plain = snapshot_of(vs("  - route: [{destination: {host: reviews}}]\n"))
    prefixed = snapshot_of(vs("  - rewrite: {uri: /}\n"
                              "    match: [{uri: {prefix: /}}]\n"
                              "    route: [{destination: {host: reviews}}]\n"))
    request = request_of(path, query=query)
    assert rewritten(plain, request) == (expected, None)
    assert rewritten(prefixed, request) == (expected, None)  # the general path agrees
    assert rewritten(snapshot_of(), request_of(path, query=query, authority="ratings:9080")
                     ) == (expected, None)


# --- authority -------------------------------------------------------------------------

@pytest.mark.parametrize(("route_part", "authority"), [
    ("    rewrite: {authority: new.example}\n"
     "    route: [{destination: {host: reviews}}]\n", "new.example"),
    ("    headers: {request: {set: {':authority': set.example}}}\n"
     "    route: [{destination: {host: reviews}}]\n", "set.example"),
    ("    headers: {request: {add: {host: add.example}}}\n"
     "    route: [{destination: {host: reviews}}]\n", "add.example"),
    # destination-level authority, used when the route sets none
    ("    route: [{destination: {host: reviews},"
     " headers: {request: {set: {host: dest.example}}}}]\n", "dest.example"),
    # the route level wins over the destination
    ("    rewrite: {authority: route.example}\n"
     "    route: [{destination: {host: reviews},"
     " headers: {request: {set: {host: dest.example}}}}]\n", "route.example"),
])
def test_authority_rewrite(snapshot_of: Build, request_of: Req, vs: VS, route_part: str,
                           authority: str) -> None:
    snap = snapshot_of(vs("  - name: r\n" + route_part))
    path, new_authority = rewritten(snap, request_of("/p"))
    assert (path, new_authority) == ("/p", authority)


def test_destination_authority_needs_the_target(snapshot_of: Build, request_of: Req,
                                                vs: VS) -> None:
    snap = snapshot_of(vs("  - route: [{destination: {host: reviews},"
                          " headers: {request: {set: {host: dest.example}}}}]\n"))
    d = decide_for(snap, request_of())
    assert rewrite_request(d, request_of()) == ("/", None)
    assert rewrite_request(d, request_of(), d.targets[0]) == ("/", "dest.example")


# --- RE2 GlobalReplace -----------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "substitution", "text", "expected"), [
    ("a", "b", "banana", "bbnbnb"),
    ("(a)(n)", "\\2\\1", "banana", "bnanaa"),
    ("an", "[\\0]", "banana", "b[an][an]a"),
    ("x", "\\\\", "axb", "a\\b"),                # \\ is a backslash
    ("a*", "X", "baaac", "XbXcX"),               # RE2: no empty match right after a match
    ("", "-", "ab", "-a-b-"),
    ("é", "e", "café crème", "cafe crème"),      # UTF-8 text
    ("(a)", "\\2", "banana", "banana"),          # a group the pattern lacks: no change
    ("z", "y", "banana", "banana"),              # no match
    ("(a)", "<\\1\\q>", "ba", "b<a"),            # an invalid escape ends that replacement
])
def test_regex_replace_all(pattern: str, substitution: str, text: str, expected: str) -> None:
    assert regex_replace_all(pattern, substitution, text) == expected


def test_regex_replace_differs_from_python_only_on_empty_matches() -> None:
    assert re.sub("a*", "X", "baaac") == "XbXXcX"  # Python's rule, for contrast
    assert regex_replace_all("a*", "X", "baaac") == "XbXcX"
    for pattern, text in [("[0-9]+", "a1b22c333"), ("/+", "//a///b/"), ("(b)(c)", "abcbc")]:
        assert regex_replace_all(pattern, "<\\0>", text) == re.sub(pattern, r"<\g<0>>", text)


# --- apply_header_operations -----------------------------------------------------------

def ops(**kw: object) -> HeaderOperations:
    return HeaderOperations.model_validate(kw)


BASE = [("Accept", "a"), ("x-multi", "1"), ("X-Multi", "2"), ("keep", "k")]


@pytest.mark.parametrize(("operations", "expected"), [
    (None, BASE),
    (ops(set={"x-multi": "9"}), [("Accept", "a"), ("keep", "k"), ("x-multi", "9")]),
    (ops(set={"X-New": "n"}), [*BASE, ("x-new", "n")]),
    (ops(add={"x-multi": "3"}), [*BASE, ("x-multi", "3")]),
    (ops(remove=["X-MULTI"]), [("Accept", "a"), ("keep", "k")]),
    (ops(remove=["missing"]), BASE),
    # remove first, then set, then add (one Envoy header parser)
    (ops(remove=["keep"], set={"keep": "new"}), [("Accept", "a"), ("x-multi", "1"),
                                                  ("X-Multi", "2"), ("keep", "new")]),
    (ops(set={"a": "1"}, add={"a": "2"}), [*BASE, ("a", "1"), ("a", "2")]),
    # Envoy skips empty values; "%%" is a literal percent sign
    (ops(set={"keep": ""}), BASE),
    (ops(add={"x-pct": "100%%"}), [*BASE, ("x-pct", "100%")]),
    # names that are not headers to Envoy are left alone
    (ops(set={"host": "h", ":path": "/x"}), BASE),
])
def test_apply_header_operations(operations: HeaderOperations | None,
                                 expected: list[tuple[str, str]]) -> None:
    before = list(BASE)
    assert apply_header_operations(BASE, operations) == expected
    assert before == BASE  # a new list; the input is untouched


def test_set_with_two_spellings_of_one_name() -> None:
    # Istio sorts by name ("X-A" < "x-a") and the last set wins.
    assert apply_header_operations([], ops(set={"x-a": "low", "X-A": "up"})) == [("x-a", "low")]


# --- route vs destination order --------------------------------------------------------

def run_ops(decision: RouteDecision, target: Target, base: list[tuple[str, str]],
            response: bool = False) -> list[tuple[str, str]]:
    lists = (response_header_operations if response else request_header_operations)(
        decision, target)
    headers = base
    for op in lists:
        headers = apply_header_operations(headers, op)
    return headers


SINGLE = """\
  - headers:
      request:
        set: {x-who: route, x-route: "1"}
        add: {x-trace: route}
        remove: [x-drop]
      response:
        set: {x-resp: route}
    route:
    - destination: {host: reviews}
      headers:
        request:
          set: {x-who: destination}
          add: {x-trace: destination}
          remove: [x-trace]
        response:
          set: {x-resp: destination}
"""

WEIGHTED = """\
  - headers:
      request:
        set: {x-who: route}
        remove: [x-dest-only]
      response:
        set: {x-resp: route}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers:
        request:
          set: {x-who: destination, x-dest-only: "1"}
        response:
          set: {x-resp: destination}
    - destination: {host: reviews, subset: v2}
      weight: 50
"""


def test_single_destination_order(snapshot_of: Build, request_of: Req, vs: VS) -> None:
    # One parser: all removes first (so the route's x-trace add survives the destination's
    # remove), then sets (the destination's wins), then adds (route first).
    snap = snapshot_of(vs(SINGLE))
    d = decide_for(snap, request_of())
    got = run_ops(d, d.targets[0], [("x-drop", "1"), ("x-trace", "caller")])
    assert got == [("x-route", "1"), ("x-who", "destination"), ("x-trace", "route"),
                   ("x-trace", "destination")]
    assert run_ops(d, d.targets[0], [], response=True) == [("x-resp", "destination")]


def test_weighted_destination_order(snapshot_of: Build, request_of: Req, vs: VS) -> None:
    # Weighted cluster first, then the route: the route's set wins, and its remove
    # removes what the destination added.
    snap = snapshot_of(vs(WEIGHTED))
    d = decide_for(snap, request_of())
    v1 = d.targets[0]
    assert run_ops(d, v1, []) == [("x-who", "route")]
    assert run_ops(d, v1, [], response=True) == [("x-resp", "route")]
    v2 = d.targets[1]
    assert run_ops(d, v2, []) == [("x-who", "route")]
    assert pick_target(d, random.Random(3)) in d.targets


def test_no_operations_without_route(snapshot_of: Build, request_of: Req) -> None:
    d = decide_for(snapshot_of(), request_of(authority="ratings:9080"))
    assert request_header_operations(d, d.targets[0]) == []
    assert response_header_operations(d, d.targets[0]) == []


def test_operation_lists_are_cached(snapshot_of: Build, request_of: Req, vs: VS) -> None:
    snap = snapshot_of(vs(SINGLE))
    d = decide_for(snap, request_of())
    first = request_header_operations(d, d.targets[0])
    again = request_header_operations(d, d.targets[0])
    assert first == again and all(a is b for a, b in zip(first, again, strict=True))
