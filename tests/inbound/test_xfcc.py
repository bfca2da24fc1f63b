"""X-Forwarded-Client-Cert: the parser (table of well-formed and malformed values) and
the trust rule end to end (honoured from a sidecar address, stripped from others)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from meshsdk.inbound.xfcc import XfccElement, XfccError, parse_xfcc, xfcc_peer
from meshsdk.security.errors import SecurityError
from tests.inbound.conftest import HOST, PRODUCTPAGE, Served

REVIEWS_ID = "spiffe://cluster.local/ns/default/sa/reviews"
ISTIO = (f'By={REVIEWS_ID};Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;'
         f'Subject="";URI={PRODUCTPAGE}')


@pytest.mark.parametrize(("value", "expected"), [
    (ISTIO, [XfccElement(by=(REVIEWS_ID,), subject="",
                         hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
                         uri=(PRODUCTPAGE,))]),
    # Envoy's documentation examples: quoted subject with , and =; several elements
    ('By=http://frontend.lyft.com;Hash=468ed33b;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft'
     '/CN=Test Client";URI=http://testclient.lyft.com',
     [XfccElement(by=("http://frontend.lyft.com",), hash="468ed33b",
                  subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
                  uri=("http://testclient.lyft.com",))]),
    ('By=http://frontend.lyft.com;Hash=a;URI=http://testclient.lyft.com,'
     'By=http://backend.lyft.com;Hash=b;URI=http://frontend.lyft.com',
     [XfccElement(by=("http://frontend.lyft.com",), hash="a",
                  uri=("http://testclient.lyft.com",)),
      XfccElement(by=("http://backend.lyft.com",), hash="b",
                  uri=("http://frontend.lyft.com",))]),
    ('Subject="CN=a, O=b; c=\\"q\\"";URI=spiffe://td/ns/x/sa/y;DNS=a.b;DNS=c.d',
     [XfccElement(subject='CN=a, O=b; c="q"', uri=("spiffe://td/ns/x/sa/y",),
                  dns=("a.b", "c.d"))]),
    ("uri=spiffe://td/ns/x/sa/y;HASH=z", [XfccElement(hash="z",
                                                      uri=("spiffe://td/ns/x/sa/y",))]),
    ('Cert="-----BEGIN%20CERTIFICATE-----%0A";URI=a',
     [XfccElement(cert="-----BEGIN%20CERTIFICATE-----%0A", uri=("a",))]),
], ids=["istio", "envoy-subject", "two-hops", "quoted-escapes", "case", "cert"])
def test_parse(value: str, expected: list[XfccElement]) -> None:
    assert parse_xfcc(value) == expected


@pytest.mark.parametrize("value", [
    "",
    "   ",
    'Subject="unterminated;URI=spiffe://td/ns/x/sa/y',
    "URI",                       # no '='
    "Foo=bar",                   # unknown key
    "URI=a;;Hash=b",             # empty pair
    'URI=a"b',                   # stray quote
    "Hash=a;Hash=b",             # single-valued key twice
    "URI=a,",                    # empty element
    "x" * 70000,                 # too long
], ids=["empty", "blank", "unterminated", "no-equals", "unknown-key", "empty-pair",
        "stray-quote", "duplicate-hash", "trailing-comma", "too-long"])
def test_malformed_values_are_refused(value: str) -> None:
    with pytest.raises(XfccError):
        parse_xfcc(value)


def test_peer_is_the_single_spiffe_id_of_the_nearest_hop() -> None:
    far = "By=x;URI=spiffe://cluster.local/ns/other/sa/far"
    assert xfcc_peer([ISTIO]) == PRODUCTPAGE
    assert xfcc_peer([f"{far},{ISTIO}"]) == PRODUCTPAGE
    assert xfcc_peer([far, ISTIO]) == PRODUCTPAGE  # repeated headers join in order
    assert xfcc_peer([]) is None


@pytest.mark.parametrize("value", [
    "By=x;URI=http://not-spiffe",
    "By=x;URI=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/c/sa/d",
    "By=x;URI=spiffe://cluster.local/ns/a/sa/b,By=y;Hash=z",     # nearest hop has none
    "By=x;URI=spiffe://cluster.local/ns/a/sa/b/extra",
    "By=x;URI=spiffe://Cluster.Local/ns/a/sa/b",
], ids=["not-spiffe", "two-ids", "nearest-without", "bad-shape", "bad-trust-domain"])
def test_unusable_peers_are_refused(value: str) -> None:
    with pytest.raises(SecurityError):
        xfcc_peer([value])


def _from(local_address: str, url: str, **headers: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.get(url, headers={"host": HOST, **headers})


def test_xfcc_is_honoured_only_from_a_trusted_sidecar_address(
        serve_reviews: Callable[..., Served]) -> None:
    # the app behind a sidecar on 127.0.0.2: plaintext on loopback, policy still STRICT
    served = serve_reviews(mode="STRICT", server_mode="DISABLE",
                           trusted_proxies=["127.0.0.2"])
    url = served.server.url("/reviews/1")

    r = _from("127.0.0.2", url, **{"x-forwarded-client-cert": ISTIO})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["peer"] == PRODUCTPAGE
    assert seen["headers"]["x-forwarded-client-cert"] == ISTIO  # the app may read it too

    # the same header from anyone else proves nothing: no peer, so STRICT refuses
    r = _from("127.0.0.1", url, **{"x-forwarded-client-cert": ISTIO})
    assert r.status_code == 503

    # a malformed header from the sidecar gives no peer either
    r = _from("127.0.0.2", url, **{"x-forwarded-client-cert": 'URI="x'})
    assert r.status_code == 503
    labels = [labels for labels, _ in served.capture.wait_requests(3)]
    principals = sorted(label["source_principal"] for label in labels)
    assert principals == ["spiffe://cluster.local/ns/default/sa/productpage", "unknown"]


def test_untrusted_xfcc_is_stripped_before_the_app(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews(mode="PERMISSIVE", server_mode="DISABLE",
                           trusted_proxies=["127.0.0.2"])
    r = _from("127.0.0.1", served.server.url("/open/1"), **{"x-forwarded-client-cert": ISTIO})
    assert r.status_code == 200
    seen = r.json()
    assert seen["peer"] is None
    assert "x-forwarded-client-cert" not in seen["headers"]
    # and it does not open what only productpage may call
    r = _from("127.0.0.1", served.server.url("/reviews/1"),
              **{"x-forwarded-client-cert": ISTIO})
    assert r.status_code == 403
