"""Real TLS handshakes on 127.0.0.1: STRICT/PERMISSIVE/DISABLE, peer identities,
rejected certificates and rotation under load."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Mapping

import httpx
import pytest
from cryptography import x509

from meshsdk.security.ca import MeshCA
from meshsdk.security.errors import SecurityError
from meshsdk.security.identity import WorkloadIdentity, verify_peer
from meshsdk.security.tlsserver import MeshTLSServer, detect_tls
from meshsdk.testing.clock import FakeClock
from tests.security.conftest import HOUR, IdentityFactory, ServerFactory

CLIENT = "spiffe://cluster.local/ns/shop/sa/cart"
SERVER = "spiffe://cluster.local/ns/shop/sa/payments"


def peer_of(response: httpx.Response) -> str | None:
    """The peer identity the server reported to its handler."""
    peer: str | None = json.loads(response.text)["peer"]
    return peer


def ssl_object(response: httpx.Response) -> ssl.SSLObject:
    obj: ssl.SSLObject = response.extensions["network_stream"].get_extra_info("ssl_object")
    return obj


def serial_of(der: bytes | None) -> int:
    assert der, "no peer certificate"
    return x509.load_der_x509_certificate(der).serial_number


def server_serial(response: httpx.Response) -> int:
    return serial_of(ssl_object(response).getpeercert(True))


def client(identity: WorkloadIdentity) -> httpx.Client:
    return httpx.Client(verify=identity.client_context(), timeout=5.0)


def anonymous_tls() -> ssl.SSLContext:
    """A TLS client with no certificate that does not check the server either."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- detect_tls ---------------------------------------------------------------------------


def real_client_hello() -> bytes:
    ctx = anonymous_tls()
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_detect_tls() -> None:
    assert detect_tls(real_client_hello())
    assert detect_tls(b"\x16\x03\x01\x02\x00")
    assert not detect_tls(b"GET / HTTP/1.1\r\n")
    assert not detect_tls(b"PRI * HTTP/2.0")
    assert not detect_tls(b"\x16")  # one byte is not enough to tell
    assert not detect_tls(b"")
    assert not detect_tls(b"\x15\x03")  # an alert, not a handshake


# --- STRICT ----------------------------------------------------------------------------


@pytest.fixture
def pair(make_identity: IdentityFactory) -> tuple[WorkloadIdentity, WorkloadIdentity]:
    """(server identity, client identity) from the same CA."""
    return make_identity("shop", "payments"), make_identity("shop", "cart")


def test_strict_mtls(serve: ServerFactory, pair: tuple[WorkloadIdentity, WorkloadIdentity]
                     ) -> None:
    server_id, client_id = pair
    server = serve(server_id, "STRICT")
    with client(client_id) as c:
        response = c.get(server.url("/hello"))
        assert response.status_code == 200
        assert peer_of(response) == CLIENT
        assert ssl_object(response).selected_alpn_protocol() == "http/1.1"
        assert ssl_object(response).version() in ("TLSv1.2", "TLSv1.3")


def test_strict_rejects_plaintext(serve: ServerFactory,
                                  pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(pair[0], "STRICT")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5.0)


def test_strict_rejects_a_client_without_certificate(
        serve: ServerFactory, pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(pair[0], "STRICT")
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url(), verify=anonymous_tls(), timeout=5.0)


def test_strict_rejects_a_certificate_from_another_ca(
        serve: ServerFactory, make_identity: IdentityFactory, other_ca: MeshCA,
        pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(pair[0], "STRICT")
    stranger = make_identity("shop", "cart", ca=other_ca)  # same SPIFFE ID, wrong root
    with pytest.raises(httpx.TransportError), client(stranger) as c:
        c.get(server.url())


def test_strict_rejects_an_expired_certificate(
        serve: ServerFactory, make_identity: IdentityFactory, past_ca: MeshCA,
        mesh_ca: MeshCA) -> None:
    # past_ca's clock is 3 days behind: the 24 h certificate it issues expired 2 days ago.
    # The server trusts past_ca's root, so expiry is the only thing wrong.
    server_id = make_identity("shop", "payments", ca=past_ca)
    expired = make_identity("shop", "cart", ca=past_ca)
    assert expired.expires_at < time.time()
    good = make_identity("shop", "cart", ca=mesh_ca)
    server = serve(server_id, "STRICT")
    with pytest.raises(httpx.TransportError), client(expired) as c:
        c.get(server.url())
    # a client that trusts past_ca's root rejects the expired server certificate too
    with pytest.raises(httpx.ConnectError), client(good) as c:
        c.get(server.url())


def test_client_rejects_a_server_from_another_ca(
        serve: ServerFactory, make_identity: IdentityFactory, other_ca: MeshCA,
        pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(make_identity("shop", "payments", ca=other_ca), "STRICT")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), \
            client(pair[1]) as c:
        c.get(server.url())


# --- PERMISSIVE and DISABLE --------------------------------------------------------------


def test_permissive_accepts_mtls_and_plaintext(
        serve: ServerFactory, pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server_id, client_id = pair
    server = serve(server_id, "PERMISSIVE")
    with client(client_id) as c:
        assert peer_of(c.get(server.url("/tls"))) == CLIENT
    plain = httpx.get(f"http://127.0.0.1:{server.port}/plain", timeout=5.0)
    assert plain.status_code == 200 and peer_of(plain) is None
    # one-way TLS (no client certificate) is not a mesh peer: rejected (module docstring)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url(), verify=anonymous_tls(), timeout=5.0)


def test_disable_is_plaintext_only(serve: ServerFactory,
                                   pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(None, "DISABLE")
    response = httpx.get(server.url("/x"), timeout=5.0)
    assert server.url().startswith("http://")
    assert response.status_code == 200 and peer_of(response) is None
    with pytest.raises(httpx.TransportError), client(pair[1]) as c:
        c.get(f"https://127.0.0.1:{server.port}/")


def test_server_needs_an_identity_unless_disabled() -> None:
    with pytest.raises(SecurityError, match="needs a workload identity"):
        MeshTLSServer(None, mode="STRICT")
    with pytest.raises(SecurityError, match="mode must be one of"):
        MeshTLSServer(None, mode="OFF")  # type: ignore[arg-type]


def test_handler_gets_method_path_headers(serve: ServerFactory,
                                          pair: tuple[WorkloadIdentity, WorkloadIdentity]
                                          ) -> None:
    seen: list[tuple[str, str, dict[str, str], str | None]] = []

    def handler(method: str, path: str, headers: Mapping[str, str],
                peer: str | None) -> tuple[int, bytes | str]:
        seen.append((method, path, dict(headers), peer))
        if path == "/boom":
            raise RuntimeError("boom")
        return 201, b"made"

    server = serve(pair[0], "STRICT", handler)
    with client(pair[1]) as c:
        response = c.post(server.url("/items?x=1"), content=b"body", headers={"X-Test": "1"})
        assert (response.status_code, response.content) == (201, b"made")
        assert c.get(server.url("/boom")).status_code == 500
    method, path, headers, peer = seen[0]
    assert (method, path, peer) == ("POST", "/items?x=1", CLIENT)
    assert headers["x-test"] == "1" and headers["content-length"] == "4"


# --- verify_peer ---------------------------------------------------------------------------


def test_verify_peer(serve: ServerFactory,
                     pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server_id, client_id = pair
    server = serve(server_id, "STRICT")
    with client(client_id) as c:
        obj = ssl_object(c.get(server.url()))
        assert verify_peer(obj, [SERVER]) == SERVER
        assert verify_peer(obj, []) == SERVER  # any identity the bundle vouches for
        assert client_id.verify_peer(obj, ["cluster.local/ns/shop/sa/payments"]) == SERVER
        with pytest.raises(SecurityError, match=rf"peer presented {SERVER}; expected one of "
                           r"spiffe://cluster.local/ns/shop/sa/reviews"):
            verify_peer(obj, ["spiffe://cluster.local/ns/shop/sa/reviews"])


def test_verify_peer_refuses_unverified_connections(
        serve: ServerFactory, pair: tuple[WorkloadIdentity, WorkloadIdentity]) -> None:
    server = serve(pair[0], "PERMISSIVE")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            anonymous_tls().wrap_socket(raw) as tls, \
            pytest.raises(SecurityError, match="not verified"):
        verify_peer(tls, [SERVER])


# --- rotation ---------------------------------------------------------------------------


def client_serial_seen_by(server_id: WorkloadIdentity, ctx: ssl.SSLContext) -> int:
    """Handshake ``ctx`` against ``server_id``'s mTLS context; the client certificate's
    serial as the server received it."""
    seen: dict[str, int] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept() -> None:
            conn, _ = listener.accept()
            server_ctx = server_id.server_context(require_client_cert=True)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["serial"] = serial_of(tls.getpeercert(True))
                tls.sendall(b"ok")

        thread = threading.Thread(target=accept)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            assert tls.recv(2) == b"ok"
        thread.join(5)
    return seen["serial"]


def test_rotation_new_connections_new_certificate(
        serve: ServerFactory, make_identity: IdentityFactory) -> None:
    server_clock, client_clock = FakeClock(start=time.time()), FakeClock(start=time.time())
    server_id = make_identity("shop", "payments", clock=server_clock)
    client_id = make_identity("shop", "cart", clock=client_clock)
    server = serve(server_id, "STRICT")
    old_server_serial = server_id.certificate.serial_number

    with client(client_id) as kept:
        first = kept.get(server.url())
        assert server_serial(first) == old_server_serial
        server_clock.advance(13 * HOUR)
        assert server_id.maybe_rotate() and server_id.generation == 1
        new_server_serial = server_id.certificate.serial_number
        # the open keep-alive connection is untouched: same stream, old certificate
        again = kept.get(server.url())
        assert again.extensions["network_stream"] is first.extensions["network_stream"]
        assert server_serial(again) == old_server_serial
        # a new connection gets the new certificate
        with client(client_id) as fresh:
            assert server_serial(fresh.get(server.url())) == new_server_serial

    # client side: a new context presenting the new certificate after rotation
    old_ctx = client_id.client_context()
    assert client_serial_seen_by(server_id, old_ctx) == client_id.certificate.serial_number
    client_clock.advance(13 * HOUR)
    assert client_id.maybe_rotate()
    new_ctx = client_id.client_context()
    assert new_ctx is not old_ctx
    assert client_serial_seen_by(server_id, new_ctx) == client_id.certificate.serial_number
    # the old context still works for connections opened with it
    assert client_serial_seen_by(server_id, old_ctx) != client_id.certificate.serial_number


def test_rotation_under_load_loses_no_request(
        serve: ServerFactory, make_identity: IdentityFactory) -> None:
    server_clock, client_clock = FakeClock(start=time.time()), FakeClock(start=time.time())
    server_id = make_identity("shop", "payments", clock=server_clock)
    client_id = make_identity("shop", "cart", clock=client_clock)
    server = serve(server_id, "STRICT")
    total, failures, served = 200, [], []
    done = threading.Event()

    def loop() -> None:
        ctx: ssl.SSLContext | None = None
        c: httpx.Client | None = None
        try:
            for i in range(total):
                current = client_id.client_context()
                if current is not ctx:  # rotated: new connections use the new certificate
                    if c is not None:
                        c.close()
                    ctx, c = current, httpx.Client(verify=current, timeout=5.0)
                assert c is not None
                # every 10th request closes its connection: handshakes happen throughout
                headers = {"Connection": "close"} if i % 10 == 9 else {}
                try:
                    response = c.get(server.url(f"/{i}"), headers=headers)
                    if response.status_code != 200 or peer_of(response) != CLIENT:
                        failures.append(f"{i}: {response.status_code} {response.text}")
                    if not headers:  # the connection is still open: its peer is known
                        served.append(server_serial(response))
                except Exception as exc:
                    failures.append(f"{i}: {exc!r}")
        finally:
            if c is not None:
                c.close()
            done.set()

    started = time.monotonic()
    worker = threading.Thread(target=loop)
    worker.start()
    rounds = 0
    while not done.is_set() and rounds < 3:  # rotate both sides three times mid-loop
        time.sleep(0.04)
        server_clock.advance(13 * HOUR)
        client_clock.advance(13 * HOUR)
        assert server_id.maybe_rotate() and client_id.maybe_rotate()
        rounds += 1
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert failures == []
    assert len(served) == total - total // 10
    assert rounds == 3 and server_id.generation == client_id.generation == 3
    assert len(set(served)) >= 2  # connections saw more than one server certificate
    assert time.monotonic() - started < 20
