"""``meshctl ca init|issue|inspect`` through :func:`meshsdk.cli.main`."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from meshsdk.cli import main
from meshsdk.security.ca import MeshCA, key_matches, read_key
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.security.spiffe import spiffe_ids_of
from tests.security.conftest import write_plugin_ca


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_plugin_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ca", "init", "--out", tmp_path / "ca",
                         "--trust-domain", "example.org")
    assert (code, err) == (0, "")
    assert "trust domain example.org" in out
    names = sorted(p.name for p in (tmp_path / "ca").iterdir())
    assert names == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    ca = MeshCA.load(tmp_path / "ca", trust_domain="example.org")
    assert ca.certificate.not_valid_after_utc - ca.certificate.not_valid_before_utc \
        >= dt.timedelta(days=3650)
    # an existing CA is not overwritten by accident
    code, out, err = run(capsys, "ca", "init", "--out", tmp_path / "ca")
    assert code == 1 and "ca-key.pem: a CA already exists" in err and "--force" in err
    code, _, _ = run(capsys, "ca", "init", "--out", tmp_path / "ca", "--force")
    assert code == 0 and MeshCA.load(tmp_path / "ca").certificate != ca.certificate


def test_issue_writes_workload_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    assert run(capsys, "ca", "init", "--out", tmp_path / "ca")[0] == 0
    code, out, err = run(capsys, "ca", "issue", "--namespace", "shop",
                         "--service-account", "cart", "--ca", tmp_path / "ca",
                         "--out", tmp_path / "w", "--lifetime", "2h")
    assert (code, err) == (0, "")
    assert "issued spiffe://cluster.local/ns/shop/sa/cart" in out
    w = tmp_path / "w"
    assert stat.S_IMODE(os.stat(w / "key.pem").st_mode) == 0o600
    cert = x509.load_pem_x509_certificates((w / "cert-chain.pem").read_bytes())[0]
    assert spiffe_ids_of(cert) == ["spiffe://cluster.local/ns/shop/sa/cart"]
    assert key_matches(read_key(w / "key.pem"), cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc \
        == dt.timedelta(hours=2, minutes=1)
    # the files are what WorkloadIdentity.from_files reads
    with WorkloadIdentity.from_files(w / "cert-chain.pem", w / "key.pem",
                                     w / "root-cert.pem") as identity:
        assert identity.spiffe_id == "spiffe://cluster.local/ns/shop/sa/cart"


def test_issue_from_a_plugin_ca_and_inspect_the_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = write_plugin_ca(tmp_path / "ca")
    code, _, err = run(capsys, "ca", "issue", "-n", "shop", "--sa", "cart", "--ca",
                       plugin.directory, "--out", tmp_path / "w", "--key-type", "RSA")
    assert code == 0, err
    code, out, err = run(capsys, "ca", "inspect", tmp_path / "w" / "cert-chain.pem")
    assert (code, err) == (0, "")
    assert "certificate 1 of 2" in out and "certificate 2 of 2" in out
    assert "subject:    (empty)" in out
    assert "SPIFFE ID:  spiffe://cluster.local/ns/shop/sa/cart" in out
    assert "issuer:     CN=Intermediate CA 1,O=cluster.local" in out
    assert "key:        RSA 2048" in out
    assert "(expires in 23h 5" in out
    assert "CA:         yes" in out


def test_inspect_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "ca", "init", "--out", tmp_path)
    code, out, _ = run(capsys, "ca", "inspect", tmp_path / "root-cert.pem")
    assert code == 0
    assert "subject:    O=cluster.local" in out and "SPIFFE ID:  (none)" in out
    assert "key:        EC P-256" in out and "CA:         yes" in out
    assert "(expires in 3649d" in out or "(expires in 3650d" in out
    assert "not before: " in out and "not after:  " in out


@pytest.mark.parametrize(("content", "reason"), [
    (None, "missing"),
    (b"", "the file is empty"),
    (b"hello", "no PEM block found"),
    (b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
     "it holds a private key"),
])
def test_inspect_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            content: bytes | None, reason: str) -> None:
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "ca", "inspect", path)
    assert code == 1 and out == ""
    assert err.startswith(f"meshctl: {path}: ") and reason in err
    assert "Traceback" not in err


def test_issue_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ca", "issue", "-n", "shop", "--sa", "cart",
                       "--ca", tmp_path / "nowhere", "--out", tmp_path / "w")
    assert code == 1 and "ca-cert.pem: missing" in err
    run(capsys, "ca", "init", "--out", tmp_path / "ca")
    code, _, err = run(capsys, "ca", "issue", "-n", "shop", "--sa", "cart", "--ca",
                       tmp_path / "ca", "--out", tmp_path / "w", "--lifetime", "soon")
    assert code == 2 and "--lifetime" in err
    code, _, err = run(capsys, "ca", "issue", "-n", "bad/ns", "--sa", "cart", "--ca",
                       tmp_path / "ca", "--out", tmp_path / "w")
    assert code == 1 and "namespace 'bad/ns'" in err
    assert not (tmp_path / "w").exists()


def test_ca_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ca"])
    assert exc.value.code == 2
