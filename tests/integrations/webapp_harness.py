"""A meshed web app in a real server process, and what the tests read from it.

Shared by the Flask, FastAPI and Django end-to-end tests. :class:`MeshWorld` sets up,
in a temporary directory, everything the example service (``examples/<framework>``)
reads from its environment: a mesh CA and the app's certificate files (issued to
``spiffe://cluster.local/ns/default/sa/reviews``), an Istio config directory (STRICT
mTLS, a JWT rule, an ALLOW policy for ``productpage`` only, JSON access logs to a
file, and a ServiceEntry for the downstream ``ratings``, a real upstream here),
a file for the app's spans and a port for its Prometheus endpoint.

A server in another process cannot share an in-memory exporter with the test, so
the app reports through channels a real deployment has too:

* metrics: the mesh's own Prometheus endpoint (``mesh.serve_metrics``), scraped;
* access log: ``meshConfig.accessLogFile`` with JSON encoding, read back;
* spans: OpenTelemetry's SDK in the app with a console exporter writing one JSON
  span per line to ``MESH_SPAN_FILE`` (the example's ``telemetry`` helper).

:class:`AppProcess` starts the server, waits (bounded) until it accepts TLS
connections, and stops it by PID, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA, make_csr, new_key, private_key_pem, write_file
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.security.spiffe import spiffe_id
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.jwt import TestIssuer
from meshsdk.testing.upstream import Upstream, echo, free_port
from meshsdk.workload import Workload

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.test"
APP_HOST = "reviews.default.svc.cluster.local"
APP_WORKLOAD = Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"},
                        "reviews")
ALLOWED_SA = "productpage"
DENIED_SA = "details"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
START_TIMEOUT = 30.0
JWT = TestIssuer(ISSUER)
SIGNING_KEY = JWT.key
_jwks = JWT.jwks_json
token = JWT.token


def policies(access_log: Path) -> str:
    """The app's security and telemetry config: what the tests hold it to."""
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: STRICT}}
---
{JWT.request_authentication("reviews")}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-callers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/{ALLOWED_SA}]}}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: {access_log}
    accessLogEncoding: JSON
"""


def issue_files(ca: MeshCA, directory: Path, namespace: str, service_account: str) -> Path:
    """What ``meshctl ca issue --out DIR`` writes: key.pem, cert-chain.pem, root-cert.pem."""
    key = new_key("EC")
    uri = spiffe_id(ca.trust_domain, namespace, service_account)
    issued = ca.sign_csr(make_csr(key, uri), namespace=namespace,
                         service_account=service_account)
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / "key.pem", private_key_pem(key), private=True)
    write_file(directory / "cert-chain.pem", issued.chain_pem)
    write_file(directory / "root-cert.pem", issued.root_pem)
    return directory


@dataclass
class MeshWorld:
    """The files, ports and peers of one end-to-end test (see the module docstring)."""

    tmp: Path
    ca: MeshCA
    ratings: Upstream
    app_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    identities: list[WorkloadIdentity] = field(default_factory=list)
    meshes: list[Mesh] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config_dir = self.tmp / "mesh"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.access_log = self.tmp / "access.log"
        self.span_file = self.tmp / "spans.jsonl"
        self.cert_dir = issue_files(self.ca, self.tmp / "certs", APP_WORKLOAD.namespace,
                                    APP_WORKLOAD.service_account)
        (self.config_dir / "policies.yaml").write_text(policies(self.access_log),
                                                        encoding="utf-8")
        ratings = service_entry("ratings", [(self.ratings, {"version": "v1"})], port=9080)
        (self.config_dir / "ratings.yaml").write_text(ratings, encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        """The app process's environment (the example services read these)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.update({
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
            "MESH_CONFIG": str(self.config_dir),
            "MESH_CERT_DIR": str(self.cert_dir),
            "MESH_METRICS_PORT": str(self.metrics_port),
            "MESH_SPAN_FILE": str(self.span_file),
            "MESH_PORT": str(self.app_port),
            "MESH_WORKLOAD_NAME": APP_WORKLOAD.name,
            "MESH_WORKLOAD_NAMESPACE": APP_WORKLOAD.namespace,
            "MESH_WORKLOAD_LABELS": ",".join(f"{k}={v}" for k, v in
                                             APP_WORKLOAD.labels.items()),
            "MESH_WORKLOAD_SERVICE_ACCOUNT": APP_WORKLOAD.service_account,
        })
        env.update(extra)
        return env

    # -- callers -------------------------------------------------------------------

    def caller(self, service_account: str | None) -> Mesh:
        """A mesh for a caller running as ``service_account`` (None: no certificate,
        plaintext) that reaches ``reviews`` at the app's port with auto mTLS."""
        identity = None
        if service_account is not None:
            identity = WorkloadIdentity.from_ca(self.ca, "default", service_account)
            self.identities.append(identity)
        se = service_entry("reviews", [(self.app_port, {"security.istio.io/tlsMode": "istio",
                                                        "version": "v1"})],
                           service_account="reviews")
        mesh = Mesh(config_from_yaml(se), Workload(f"{service_account}-v1", "default",
                                                   {"app": service_account or "plain"},
                                                   service_account or "default"),
                    telemetry=False, identity=identity)
        self.meshes.append(mesh)
        return mesh

    def get(self, service_account: str | None, path: str, **headers: str) -> httpx.Response:
        """GET ``http://reviews/<path>`` through a caller's mesh (mTLS as that caller)."""
        with self.caller(service_account).client() as client:
            return client.get(f"http://{APP_HOST}{path}", headers=headers)

    def close(self) -> None:
        for mesh in self.meshes:
            mesh.close()
        for identity in self.identities:
            identity.close()

    # -- what the app reported ---------------------------------------------------------

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample of ``name`` on the app's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == name]

    def spans(self) -> list[dict[str, Any]]:
        """The app's finished spans (one JSON object per line of the span file)."""
        if not self.span_file.exists():
            return []
        return [json.loads(line) for line in
                self.span_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def access_log_entries(self) -> list[dict[str, Any]]:
        """The app's access log, one JSON object per line."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in
                self.access_log.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``probe`` until it returns something truthy, for at most ``timeout``
    seconds; returns it, or fails the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def tls_listening(port: int) -> bool:
    """Something on 127.0.0.1:port completes a TLS handshake (no certificate check)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                ctx.wrap_socket(raw) as tls:
            return tls.version() is not None
    except OSError:
        return False


class AppProcess:
    """A server process for the example app: started, awaited, stopped by PID."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log: Path,
                 port: int, cwd: Path = ROOT) -> None:
        self.command = list(command)
        self.log = log
        self.port = port
        self._out = log.open("wb")
        self.proc = subprocess.Popen(self.command, cwd=cwd, env=dict(env), stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the server completes TLS handshakes; fails with its log if it died."""
        deadline = time.monotonic() + timeout
        while not tls_listening(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.command} not serving on {self.port} after "
                                     f"{timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        self._out.flush()
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the server's process group (workers too), then SIGKILL if needed."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._out.close()


@contextlib.contextmanager
def running(command: Sequence[str], world: MeshWorld, log_name: str = "app.log",
            **env: str) -> Iterator[AppProcess]:
    """Start the app server, wait until it serves, stop it afterwards (also on failure)."""
    app = AppProcess(command, world.env(**env), world.tmp / log_name, world.app_port)
    try:
        app.wait_ready()
        yield app
    finally:
        app.stop()


def python() -> str:
    """The interpreter running the tests (the venv's), for the app process too."""
    return sys.executable


__all__ = ["ALLOWED_SA", "APP_HOST", "DENIED_SA", "ISSUER", "PARENT_SPAN", "TRACEPARENT",
           "TRACE_ID", "AppProcess", "MeshWorld", "echo", "issue_files", "python", "running",
           "token", "wait_for"]


class MeshedAppContract:
    """The end-to-end checks every framework's example service must pass.

    A framework's test module subclasses it (``class TestFlask(MeshedAppContract)``)
    and provides a ``world`` fixture (a :class:`MeshWorld` whose app is running) and
    ``ROUTE``, the name its server span must carry for ``GET /reviews/{id}``.
    """

    ROUTE = ""

    def test_an_allowed_principal_passes_and_the_app_sees_it(self, world: MeshWorld) -> None:
        r = world.get(ALLOWED_SA, "/reviews/1")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["caller"] == f"cluster.local/ns/default/sa/{ALLOWED_SA}"
        assert body["user"] is None
        assert body["ratings_status"] == 200
        assert body["ratings"]["path"] == "/ratings/1"

    def test_a_disallowed_principal_gets_403(self, world: MeshWorld) -> None:
        before = world.ratings.hits
        r = world.get(DENIED_SA, "/reviews/2")
        assert r.status_code == 403
        assert r.text == "RBAC: access denied"
        assert world.ratings.hits == before  # the view never ran

    def test_a_bad_jwt_gets_401_and_a_good_one_names_the_user(self, world: MeshWorld
                                                              ) -> None:
        forged = token(ec.generate_private_key(ec.SECP256R1()))
        r = world.get(ALLOWED_SA, "/reviews/3", authorization=f"Bearer {forged}")
        assert r.status_code == 401
        assert r.text == "Jwt verification fails"
        r = world.get(ALLOWED_SA, "/reviews/3", authorization=f"Bearer {token()}")
        assert r.status_code == 200, r.text
        assert r.json()["user"] == f"{ISSUER}/alice"

    def test_strict_refuses_a_caller_without_a_mesh_certificate(self, world: MeshWorld
                                                                ) -> None:
        before = world.ratings.hits
        r = world.get(None, "/reviews/4")  # no identity: plaintext to a TLS-only port
        assert r.status_code == 503
        assert world.ratings.hits == before

    def test_span_metrics_access_log_and_trace_to_the_downstream_call(
            self, world: MeshWorld) -> None:
        request_id = f"e2e-{self.ROUTE.count('/')}-{time.monotonic_ns()}"
        before = _requests_total(world)
        r = world.get(ALLOWED_SA, "/reviews/5", traceparent=TRACEPARENT,
                      **{"x-request-id": request_id})
        assert r.status_code == 200, r.text

        # the downstream call carried the trace, under the app's client span
        seen = r.json()["ratings"]["headers"]
        assert seen["traceparent"].split("-")[1] == TRACE_ID
        assert seen["x-request-id"] == request_id

        # spans: server span named after the route, child of the caller's span;
        # the outbound client span is its child and is the downstream's parent
        spans = wait_for("the mesh's server span", lambda: [
            s for s in world.spans() if s["kind"] == "SpanKind.SERVER"
            and s["context"]["trace_id"] == f"0x{TRACE_ID}"
            and s["attributes"].get("mesh.request_id") == request_id])
        server = spans[-1]
        assert server["name"] == self.ROUTE
        assert server["attributes"]["http.route"] == self.ROUTE
        assert server["parent_id"] == f"0x{PARENT_SPAN}"
        # (a framework may add spans of its own between the two: FastAPI does)
        clients = wait_for("the app's client span", lambda: [
            s for s in world.spans() if s["kind"] == "SpanKind.CLIENT"
            and _descends(s, server["context"]["span_id"], world.spans())])
        assert seen["traceparent"].split("-")[2] == clients[-1]["context"]["span_id"][2:]

        # metrics: reporter=destination, the caller's principal, one more request
        labels = wait_for("the request in istio_requests_total",
                          lambda: _requests_total(world) - before == 1 and _labels(world))
        assert labels["reporter"] == "destination"
        assert labels["source_principal"] == \
            f"spiffe://cluster.local/ns/default/sa/{ALLOWED_SA}"
        assert labels["destination_workload"] == "reviews-v1"
        assert labels["destination_app"] == "reviews"
        assert labels["connection_security_policy"] == "mutual_tls"
        assert labels["response_code"] == "200"

        # access log: the inbound line of this request
        entries = wait_for("the access log line", lambda: [
            e for e in world.access_log_entries() if e["request_id"] == request_id
            and str(e["upstream_cluster"]).startswith("inbound|")])
        entry = entries[-1]
        assert entry["method"] == "GET"
        assert entry["path"] == "/reviews/5"
        assert entry["response_code"] == 200
        assert entry["bytes_sent"] == len(r.content)


def _descends(span: Mapping[str, Any], ancestor: str, spans: list[dict[str, Any]]) -> bool:
    """Whether ``span``'s parent chain (within ``spans``) reaches span id ``ancestor``."""
    by_id = {s["context"]["span_id"]: s for s in spans}
    parent = span.get("parent_id")
    for _ in range(len(spans) + 1):  # bounded: a chain cannot be longer than the list
        if parent is None:
            return False
        if parent == ancestor:
            return True
        parent = by_id.get(parent, {}).get("parent_id")
    return False


def _allowed_200(labels: Mapping[str, str]) -> bool:
    return (labels.get("reporter") == "destination" and labels.get("response_code") == "200"
            and labels.get("source_principal", "").endswith(f"/sa/{ALLOWED_SA}"))


def _requests_total(world: MeshWorld) -> float:
    return sum(v for labels, v in world.metric_samples("istio_requests_total")
               if _allowed_200(labels))


def _labels(world: MeshWorld) -> dict[str, str]:
    found = [labels for labels, _ in world.metric_samples("istio_requests_total")
             if _allowed_200(labels)]
    assert len(found) == 1, found
    return found[0]


def check_matrix_bounds(framework: str) -> None:
    """``integrations/matrix.toml``'s oldest pins are the lower bounds the integration's
    pyproject declares (the same release, or the same series for a bound like ``4.2``),
    so what users may install is what ``make test-matrix`` tests."""
    import re
    import tomllib

    matrix = tomllib.loads((ROOT / "integrations" / "matrix.toml").read_text("utf-8"))
    entry = matrix[framework]
    assert (ROOT / entry["tests"]).is_dir()
    project = tomllib.loads((ROOT / entry["path"] / "pyproject.toml").read_text("utf-8"))
    requirements = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        requirements.extend(extra)
    bounds: dict[str, str] = {}
    for requirement in requirements:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if found:
            bounds[found[1].lower()] = found[2]
    checked = 0
    for pin in entry["oldest"]:
        name, _, version = pin.partition("==")
        if name.lower() in bounds:
            bound = bounds[name.lower()]
            assert version == bound or version.startswith(f"{bound}."), (
                f"{framework}: matrix oldest {pin} but pyproject says {name}>={bound}")
            checked += 1
    assert checked, f"{framework}: no oldest pin matches a declared dependency"
    assert len(entry["latest"]) == len(entry["oldest"])


def check_doc_shows(doc: Path, example: Path) -> None:
    """Every source file of ``example`` (Python and YAML, not certificates) appears in
    ``doc`` verbatim as a fenced code block, so the page cannot drift from what the
    end-to-end tests run."""
    import re

    text = doc.read_text(encoding="utf-8")
    blocks = set(re.findall(r"```(?:python|yaml)\n(.*?)```", text, flags=re.S))
    files = sorted(p for p in example.rglob("*") if p.suffix in (".py", ".yaml")
                   and "certs" not in p.parts and "__pycache__" not in p.parts
                   and p.name not in ("__init__.py", "manage.py"))
    assert files, f"no example files under {example}"
    missing = [str(p.relative_to(ROOT)) for p in files
               if p.read_text(encoding="utf-8") not in blocks]
    assert not missing, f"{doc.relative_to(ROOT)} does not show these files as they are: "\
                        f"{missing}"
