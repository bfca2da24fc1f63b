"""The CA's CreateCertificate service over real gRPC on 127.0.0.1, with bootstrap tokens."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from cryptography import x509

from meshsdk.controlplane.ca_service import (
    METHOD,
    Caller,
    TokenDirectory,
    add_ca_service,
    remote_signer,
)
from meshsdk.security.ca import MeshCA, make_csr, new_key
from meshsdk.security.errors import SecurityError
from meshsdk.security.identity import WorkloadIdentity

TOKEN = "cart-secret-0123456789abcdef"
OTHER = "front-secret-0123456789abcdef"
CART = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    """One root for the module (key generation is the slow part)."""
    return MeshCA.create()


@pytest.fixture
def tokens(tmp_path: Path) -> TokenDirectory:
    """Two identities; the service account of the second contains a dot."""
    (tmp_path / "shop.cart.token").write_text(TOKEN + "\n")
    (tmp_path / "web.front.v2.token").write_text(OTHER)
    (tmp_path / "README").write_text("not a token")
    return TokenDirectory(tmp_path)


@pytest.fixture
def address(ca: MeshCA, tokens: TokenDirectory) -> Iterator[str]:
    """A gRPC server with only the CA service; stopped at the end."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_ca_service(server, ca, tokens)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _raw_call(address: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()
              ) -> Any:
    """Call CreateCertificate directly; the decoded JSON response."""
    with grpc.insecure_channel(address) as channel:
        return json.loads(channel.unary_unary(METHOD)(body, timeout=5, metadata=metadata))


def _code(address: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()
          ) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(address, body, metadata)
    return info.value.code(), info.value.details()


def _csr_body(validity: object = 0) -> bytes:
    csr = make_csr(new_key(), "spiffe://cluster.local/ns/x/sa/y").decode()
    return json.dumps({"csr": csr, "validity_duration": validity}).encode()


BEARER = (("authorization", f"Bearer {TOKEN}"),)


def test_identity_comes_from_the_token_not_the_csr(address: str, ca: MeshCA) -> None:
    sign = remote_signer(address, TOKEN)
    asked = "spiffe://cluster.local/ns/kube-system/sa/admin"
    with WorkloadIdentity.from_signer(sign, asked) as identity:
        assert identity.spiffe_id == CART
        assert identity.roots_pem == ca.roots
        life = identity.certificate.not_valid_after_utc - identity.certificate.not_valid_before_utc
        assert life == dt.timedelta(hours=24) + ca.clock_skew


def test_dotted_service_account(address: str) -> None:
    with WorkloadIdentity.from_signer(remote_signer(address, OTHER), CART) as identity:
        assert identity.spiffe_id == "spiffe://cluster.local/ns/web/sa/front.v2"


def test_rotation_goes_through_the_service(address: str) -> None:
    with WorkloadIdentity.from_signer(remote_signer(address, TOKEN), CART) as identity:
        first, first_chain = identity.certificate, identity.chain_pem
        identity.rotate()
        assert identity.generation == 1
        assert identity.spiffe_id == CART
        assert identity.certificate.serial_number != first.serial_number
        assert identity.certificate.public_key() != first.public_key()
        assert identity.chain_pem != first_chain


def test_wrong_token_is_unauthenticated(address: str) -> None:
    with pytest.raises(SecurityError, match=r"refused the bootstrap token.*UNAUTHENTICATED"):
        WorkloadIdentity.from_signer(remote_signer(address, "nope-" + TOKEN), CART)
    code, details = _code(address, _csr_body())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    code, _ = _code(address, _csr_body(), (("authorization", f"Basic {TOKEN}"),))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_garbage_csr_is_invalid_argument(address: str) -> None:
    with pytest.raises(SecurityError, match=r"INVALID_ARGUMENT.*CSR"):
        remote_signer(address, TOKEN)(b"not a csr")
    for body, reason in [(b"{", "not JSON"), (b"[]", "JSON object"),
                         (json.dumps({"csr": ""}).encode(), "'csr'"),
                         (_csr_body(-1), "negative"), (_csr_body("1h"), "integer")]:
        code, details = _code(address, body, BEARER)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in details


def test_validity_is_capped_at_90_days(address: str, ca: MeshCA) -> None:
    def life(validity: int) -> dt.timedelta:
        body = _raw_call(address, _csr_body(validity), BEARER)
        cert = x509.load_pem_x509_certificates(body["cert_chain"].encode())[0]
        return cert.not_valid_after_utc - cert.not_valid_before_utc - ca.clock_skew

    assert life(3600) == dt.timedelta(hours=1)
    assert life(365 * 86400) == dt.timedelta(days=90)
    short = remote_signer(address, TOKEN, lifetime=dt.timedelta(minutes=30))
    issued = short(make_csr(new_key(), CART))
    cert = issued.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == (
        dt.timedelta(minutes=30) + ca.clock_skew)


def test_unreachable_ca_is_a_security_error() -> None:
    with pytest.raises(SecurityError, match="CreateCertificate failed"):
        remote_signer("127.0.0.1:1", TOKEN, timeout=0.5)(b"x")


def test_token_directory(tmp_path: Path) -> None:
    (tmp_path / "shop.cart.token").write_text(TOKEN)
    tokens = TokenDirectory(tmp_path)
    assert len(tokens) == 1
    assert tokens.authenticate(TOKEN) == Caller("shop", "cart")
    assert tokens.authenticate(TOKEN[:-1]) is None
    assert tokens.authenticate("") is None
    (tmp_path / "web.front.token").write_text(TOKEN)
    with pytest.raises(SecurityError, match=r"same token as shop\.cart\.token"):
        tokens.reload()
    assert tokens.authenticate(TOKEN) == Caller("shop", "cart")  # old set kept
    (tmp_path / "web.front.token").write_text(OTHER)
    tokens.reload()
    assert tokens.authenticate(OTHER) == Caller("web", "front")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("nodot.token", TOKEN, "<namespace>.<service-account>"),
    ("Bad ns.sa.token", TOKEN, "not a valid SPIFFE path segment"),
    ("shop.cart.token", "short", "shorter than 16"),
    ("shop.cart.token", "  \n", "empty"),
])
def test_token_directory_refuses(tmp_path: Path, name: str, content: str,
                                 message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(SecurityError, match=message):
        TokenDirectory(tmp_path)


def test_token_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="cannot list token directory"):
        TokenDirectory(tmp_path / "absent")
