"""A workload's mesh identity: its key, certificate chain and trust bundle, kept fresh.

Istio's agent holds one key and certificate per workload and rotates them at 50% of
the certificate's life (+-1% jitter so a fleet does not renew at once). The same rule
here, with the clock and the jitter's random source injected so rotation is testable
with a FakeClock:

* :meth:`WorkloadIdentity.from_ca` / :meth:`~WorkloadIdentity.from_signer`: the
  identity makes a new key and CSR for each rotation and asks a signer (a
  :class:`~meshsdk.security.ca.MeshCA`, later the config service). The key never
  leaves this object except inside the SSL contexts.
* :meth:`WorkloadIdentity.from_files`: an external agent writes the files (Istio's
  ``cert-chain.pem``, ``key.pem``, ``root-cert.pem``); they are re-read when they
  change. A half-written set (key not matching the certificate) is skipped until the
  files change again, keeping the old credentials in use.

TLS contexts are built from the current credentials and cached: the same object until
a rotation, then a new one, so connections opened after a rotation present the new
certificate while open ones keep theirs. Peers are verified by SPIFFE ID
(:func:`verify_peer`), not by DNS name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import random
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509

from meshsdk.randomness import fresh_random
from meshsdk.security.ca import (
    WORKLOAD_LIFETIME,
    Clock,
    IssuedCert,
    KeyType,
    MeshCA,
    PrivateKey,
    key_matches,
    make_csr,
    new_key,
    private_key_pem,
    read_key,
    read_pem,
)
from meshsdk.security.errors import SecurityError
from meshsdk.security.spiffe import (
    SCHEME,
    parse_spiffe_id,
    peer_spiffe_id,
    spiffe_id,
    spiffe_ids_of,
)

log = logging.getLogger("meshsdk.security")

Signer = Callable[[bytes], IssuedCert]
"""Turns a PEM CSR into an issued certificate (the CA decides the identity)."""

ROTATION_RATIO = 0.5
"""Rotate at this fraction of the certificate's life (Istio's grace period ratio)."""
ROTATION_JITTER = 0.01
"""+- this fraction of the life, drawn per certificate (Istio's jitter)."""
ALPN_PROTOCOLS = ("http/1.1",)
"""Offered in TLS. h2 is not listed: no HTTP/2 stack is installed to serve or speak it."""
MIN_RECHECK = 1.0
"""The rotation thread never waits less than this after a check (no busy loop when a
fresh certificate is already due, e.g. the signer's clock disagrees with ours)."""
MAX_SLEEP = 60.0
"""The rotation thread re-reads the clock at least this often (wall-clock jumps)."""
_RETRY_MAX = 60.0


@dataclass(frozen=True, slots=True)
class _Material:
    """One set of credentials, validated."""

    key: PrivateKey
    key_pem: bytes
    chain: tuple[x509.Certificate, ...]
    chain_pem: bytes
    roots_pem: bytes
    spiffe_id: str

    @property
    def not_before(self) -> float:
        return self.chain[0].not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.chain[0].not_valid_after_utc.timestamp()


@dataclass(slots=True)
class _Credentials:
    """The material in use, its generation, rotation time and SSL contexts."""

    material: _Material
    generation: int
    rotate_at: float
    contexts: dict[tuple[str, bool], ssl.SSLContext] = field(default_factory=dict)


def _material(key: PrivateKey, chain_pem: bytes, roots_pem: bytes, *,
              chain_where: str, key_where: str, roots_where: str) -> _Material:
    """Parse and check one credential set; SecurityError says which part is wrong."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError as exc:
        raise SecurityError(f"{chain_where}: not a PEM certificate chain ({exc})") from exc
    try:
        roots = x509.load_pem_x509_certificates(roots_pem)
    except ValueError as exc:
        raise SecurityError(f"{roots_where}: not a PEM trust bundle ({exc})") from exc
    if not roots:  # pragma: no cover - cryptography raises on no certificates
        raise SecurityError(f"{roots_where}: no root certificate")
    if not key_matches(key, chain[0]):
        raise SecurityError(f"{key_where}: key does not match the first certificate of "
                            f"{chain_where}")
    ids = spiffe_ids_of(chain[0])
    if len(ids) != 1:
        raise SecurityError(f"{chain_where}: the workload certificate must name exactly one "
                            f"SPIFFE ID in its URI SAN, found {len(ids)}")
    parse_spiffe_id(ids[0])
    return _Material(key=key, key_pem=private_key_pem(key), chain=chain, chain_pem=chain_pem,
                     roots_pem=roots_pem, spiffe_id=ids[0])


class _Source(Protocol):
    """Where credentials come from."""

    watches_files: bool

    def fetch(self) -> _Material: ...

    def changed(self) -> bool: ...


class _SignerSource:
    """A new key and CSR per rotation, signed by a signer."""

    watches_files = False

    def __init__(self, sign: Signer, spiffe: str, key_type: KeyType) -> None:
        self._sign = sign
        self._spiffe = spiffe
        self._key_type = key_type

    def fetch(self) -> _Material:
        key = new_key(self._key_type)
        issued = self._sign(make_csr(key, self._spiffe))
        return _material(key, issued.chain_pem, issued.root_pem, chain_where="issued chain",
                         key_where="signer", roots_where="issued root bundle")

    def changed(self) -> bool:
        return False


class _FileSource:
    """Files written by an external agent, re-read when their stat signature changes."""

    watches_files = True

    def __init__(self, chain: Path, key: Path, roots: Path) -> None:
        self._paths = (chain, key, roots)
        self._seen: tuple[tuple[int, int, int], ...] | None = None

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        sig = []
        for p in self._paths:
            try:
                st = p.stat()
            except OSError:
                sig.append((-1, -1, -1))
            else:
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def changed(self) -> bool:
        return self._signature() != self._seen

    def fetch(self) -> _Material:
        # Record the signature before reading: a write racing the read shows up as a
        # change on the next check.
        self._seen = self._signature()
        chain_path, key_path, roots_path = self._paths
        key = read_key(key_path)
        chain_pem = read_pem(chain_path, "certificate chain")
        roots_pem = read_pem(roots_path, "trust bundle")
        return _material(key, chain_pem, roots_pem, chain_where=str(chain_path),
                         key_where=str(key_path), roots_where=str(roots_path))


def _normalize(identity: str) -> str:
    """``spiffe://td/ns/x/sa/y`` or the principal ``td/ns/x/sa/y`` -> the URI form."""
    return identity if identity.startswith(SCHEME) else SCHEME + identity


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, allowed: Collection[str] = ()
                ) -> str:
    """The peer's SPIFFE ID if it is one of ``allowed``; else SecurityError.

    ``allowed`` holds SPIFFE IDs or Istio principals (``cluster.local/ns/x/sa/y``);
    empty means any identity the trust bundle vouches for (the handshake already
    verified the chain). A connection whose context did not verify certificates
    (``CERT_NONE``) is refused: its peer certificate proves nothing.
    """
    if ssl_object.context.verify_mode == ssl.CERT_NONE:
        raise SecurityError("peer certificate was not verified (the SSL context uses "
                            "CERT_NONE); cannot trust its identity")
    peer = peer_spiffe_id(ssl_object)
    wanted = sorted({_normalize(a) for a in allowed})
    expected = f"expected one of {', '.join(wanted)}" if wanted else "expected a SPIFFE ID"
    if peer is None:
        presented = ("a certificate without SPIFFE ID" if ssl_object.getpeercert(True)
                     else "no certificate")
        raise SecurityError(f"peer presented {presented}; {expected}")
    if wanted and peer not in wanted:
        raise SecurityError(f"peer presented {peer}; {expected}")
    return peer


class WorkloadIdentity:
    """The current key, certificate chain and trust bundle of a workload, with rotation.

    Build with :meth:`from_ca`, :meth:`from_signer` or :meth:`from_files`. ``clock`` is
    wall-clock seconds since the epoch (certificate times are absolute); a
    ``FakeClock(start=time.time())`` makes rotation testable. Thread-safe. Call
    :meth:`close` (or use ``with``) to stop the rotation thread and remove the private
    temporary directory used to hand the key to ``ssl``.
    """

    def __init__(self, source: _Source, *, clock: Clock = time.time,
                 rng: random.Random | None = None, poll_interval: float = 5.0) -> None:
        """Prefer the ``from_*`` constructors. Fetches the first credentials now."""
        self._source = source
        self._clock = clock
        self._rng = rng if rng is not None else fresh_random()
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._rotate_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._tmpdir = tempfile.mkdtemp(prefix="meshsdk-identity-")  # mode 0700
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self._counter = itertools.count(1)
        try:
            self._creds = self._credentials(source.fetch(), 0)
        except BaseException:
            self._finalizer()
            raise

    # constructors

    @classmethod
    def from_signer(cls, sign: Signer, spiffe: str, *, key_type: KeyType = "EC",
                    clock: Clock = time.time, rng: random.Random | None = None
                    ) -> WorkloadIdentity:
        """An identity that makes its own key and CSR for ``spiffe`` and has ``sign``
        issue the certificate, now and at every rotation."""
        parse_spiffe_id(spiffe)
        return cls(_SignerSource(sign, spiffe, key_type), clock=clock, rng=rng)

    @classmethod
    def from_ca(cls, ca: MeshCA, namespace: str, service_account: str, *,
                lifetime: dt.timedelta = WORKLOAD_LIFETIME, key_type: KeyType = "EC",
                clock: Clock = time.time, rng: random.Random | None = None
                ) -> WorkloadIdentity:
        """An identity for ``namespace``/``service_account`` issued by ``ca`` (the CA's
        clock dates the certificates; ``clock`` decides when to rotate)."""
        uri = spiffe_id(ca.trust_domain, namespace, service_account)

        def sign(csr: bytes) -> IssuedCert:
            return ca.sign_csr(csr, namespace=namespace, service_account=service_account,
                               lifetime=lifetime)

        return cls(_SignerSource(sign, uri, key_type), clock=clock, rng=rng)

    @classmethod
    def from_files(cls, cert_chain_path: str | os.PathLike[str],
                   key_path: str | os.PathLike[str], roots_path: str | os.PathLike[str], *,
                   clock: Clock = time.time, poll_interval: float = 5.0) -> WorkloadIdentity:
        """An identity read from files an agent keeps up to date; :meth:`maybe_rotate`
        (and the :meth:`start` thread, every ``poll_interval`` seconds) re-reads them
        when they change."""
        source = _FileSource(Path(cert_chain_path), Path(key_path), Path(roots_path))
        return cls(source, clock=clock, poll_interval=poll_interval)

    # state

    def _credentials(self, material: _Material, generation: int) -> _Credentials:
        life = material.not_after - material.not_before
        ratio = ROTATION_RATIO + self._rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)
        return _Credentials(material, generation, material.not_before + ratio * life)

    @property
    def generation(self) -> int:
        """0 for the first credentials, +1 at every rotation."""
        return self._creds.generation

    @property
    def spiffe_id(self) -> str:
        """The SPIFFE ID of the current certificate."""
        return self._creds.material.spiffe_id

    @property
    def certificate(self) -> x509.Certificate:
        """The current workload certificate."""
        return self._creds.material.chain[0]

    @property
    def chain_pem(self) -> bytes:
        """The current certificate chain (leaf first), PEM."""
        return self._creds.material.chain_pem

    @property
    def roots_pem(self) -> bytes:
        """The current trust bundle, PEM (several roots during a root rotation)."""
        return self._creds.material.roots_pem

    def pem_credentials(self) -> tuple[bytes, bytes, bytes]:
        """The current private key, certificate chain and trust bundle as PEM, taken
        together (one generation), for TLS stacks that load PEM themselves (gRPC)."""
        material = self._creds.material
        return material.key_pem, material.chain_pem, material.roots_pem

    @property
    def expires_at(self) -> float:
        """``notAfter`` of the current certificate, epoch seconds."""
        return self._creds.material.not_after

    @property
    def rotate_at(self) -> float:
        """When the current certificate is due for rotation, epoch seconds:
        ``notBefore + (50% +- 1%) * lifetime``."""
        return self._creds.rotate_at

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # rotation

    def rotate(self) -> None:
        """Replace the credentials now (a new key and certificate, or the files re-read).

        On error the current credentials stay in use and the error propagates.
        """
        self._check_open()
        with self._rotate_lock:
            self._replace()

    def _replace(self) -> None:
        """Fetch new material and make it current (the caller holds the rotate lock)."""
        material = self._source.fetch()
        with self._lock:
            self._creds = self._credentials(material, self._creds.generation + 1)
        log.info("workload identity %s rotated: generation %d, serial %x, expires %s",
                 material.spiffe_id, self.generation, material.chain[0].serial_number,
                 material.chain[0].not_valid_after_utc.isoformat())

    def maybe_rotate(self) -> bool:
        """Rotate if due; True if the credentials changed.

        Signed identities are due when the clock reaches :attr:`rotate_at`; a signer
        error propagates (the old credentials stay). File identities are re-read when
        a file changed; an unusable set (e.g. half written) is logged and skipped until
        the files change again.
        """
        self._check_open()
        if self._source.watches_files:
            if not self._source.changed():
                return False
            with self._rotate_lock:
                try:
                    material = self._source.fetch()
                except SecurityError as exc:
                    log.warning("workload identity files changed but are not usable yet; "
                                "keeping the current credentials: %s", exc)
                    return False
                with self._lock:
                    current = self._creds.material
                    if (material.chain_pem, material.key_pem, material.roots_pem) == (
                            current.chain_pem, current.key_pem, current.roots_pem):
                        return False
                    self._creds = self._credentials(material, self._creds.generation + 1)
            log.info("workload identity %s reloaded from files: generation %d",
                     material.spiffe_id, self.generation)
            return True
        if self._clock() < self._creds.rotate_at:
            return False
        with self._rotate_lock:  # re-checked: a concurrent caller may have rotated
            if self._clock() < self._creds.rotate_at:
                return False
            self._replace()
        return True

    def _next_delay(self) -> float:
        if self._source.watches_files:
            return self._poll_interval
        due = self._creds.rotate_at - self._clock()
        return min(max(due, MIN_RECHECK), MAX_SLEEP)

    def start(self) -> None:
        """Run :meth:`maybe_rotate` in a daemon thread: it sleeps until the next rotation
        (or file poll), retries failures with backoff (1 s doubling to 60 s), and stops
        promptly on :meth:`close`. Calling it again is a no-op."""
        self._check_open()
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"meshsdk-identity {self.spiffe_id}")
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.maybe_rotate()
            except Exception as exc:
                if self._stop.is_set():
                    return
                failures += 1
                delay = min(2.0 ** (failures - 1), _RETRY_MAX)
                log.warning("workload identity %s: rotation failed (attempt %d), retrying "
                            "in %.0fs: %s", self.spiffe_id, failures, delay, exc)
            else:
                failures = 0
                delay = self._next_delay()
            self._stop.wait(delay)

    def close(self) -> None:
        """Stop the rotation thread and delete the private temporary directory.
        Contexts already handed out keep working; new ones cannot be built."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._closed = True
        self._finalizer()

    def __enter__(self) -> WorkloadIdentity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SecurityError(f"workload identity {self.spiffe_id} is closed")

    # TLS

    def client_context(self) -> ssl.SSLContext:
        """The client SSL context of the current credentials (cached per rotation):
        TLS >= 1.2, presents the workload certificate, requires and verifies the
        server's against the trust bundle, no host name check (check the SPIFFE ID
        with :func:`verify_peer`)."""
        return self._context(False, True)

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """The server SSL context of the current credentials (cached per rotation):
        client certificates are verified against the trust bundle, and required
        (mTLS) when ``require_client_cert`` else optional."""
        return self._context(True, require_client_cert)

    def _context(self, server: bool, require: bool) -> ssl.SSLContext:
        creds = self._creds
        ctx = creds.contexts.get(("server" if server else "client", require))
        if ctx is not None:
            return ctx
        self._check_open()
        with self._lock:
            creds = self._creds
            key = ("server" if server else "client", require)
            ctx = creds.contexts.get(key)
            if ctx is None:
                ctx = creds.contexts[key] = self._build(creds.material, server, require)
            return ctx

    def _build(self, material: _Material, server: bool, require: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
            # a connection's peer identity is read once and kept (servers cache it per
            # connection): no renegotiation may swap the certificate, as in Envoy
            ctx.options |= ssl.OP_NO_RENEGOTIATION
        else:
            ctx.check_hostname = False  # mesh peers are checked by SPIFFE ID
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=material.roots_pem.decode("ascii"))
        self._load_chain(ctx, material)
        ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
        return ctx

    def _load_chain(self, ctx: ssl.SSLContext, material: _Material) -> None:
        """``ssl`` only loads keys from files: write key + chain to a 0600 file in the
        private 0700 directory, load it, and delete it at once."""
        path = os.path.join(self._tmpdir, f"credentials-{next(self._counter)}.pem")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SecurityError(f"{path}: cannot write the temporary credentials file: "
                                f"{exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(material.key_pem)
                fh.write(material.chain_pem)
            ctx.load_cert_chain(path)
        except (OSError, ssl.SSLError) as exc:
            raise SecurityError(f"cannot load the credentials of {material.spiffe_id} into "
                                f"an SSL context: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def verify_peer(self, ssl_object: ssl.SSLObject | ssl.SSLSocket,
                    allowed: Collection[str] = ()) -> str:
        """:func:`verify_peer` (kept as a method for callers holding an identity)."""
        return verify_peer(ssl_object, allowed)

    def __repr__(self) -> str:
        return (f"WorkloadIdentity({self.spiffe_id!r}, generation={self.generation}, "
                f"expires_at={self.expires_at:.0f})")


__all__ = ["ALPN_PROTOCOLS", "ROTATION_JITTER", "ROTATION_RATIO", "Signer",
           "WorkloadIdentity", "verify_peer"]
