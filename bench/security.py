"""Benchmark: the cost of the mesh's security pieces.

    python bench/security.py                 # all three parts
    python bench/security.py --quick         # fewer rounds

1. **Certificate issuance**: P-256 CSRs (made beforehand, as workloads make their own)
   signed by ``MeshCA.sign_csr``: certificates per second, best of several rounds.
   Target: >= 500/s.
2. **Authorization**: one workload selected by 50 AuthorizationPolicies (DENY, ALLOW
   and AUDIT, with principals, namespaces, paths with templates, methods, headers,
   CIDRs and JWT claims), deciding a mix of requests; microseconds per decision.
   Target: < 20 us.
3. **Handshakes**: a real mTLS nginx on 127.0.0.1 (client certificate required, from
   the mesh CA); GETs with the workload's mesh SSL context over a new connection each
   time versus over one kept-alive connection: what a handshake costs, and that
   pooling amortises it. (The mTLS-against-plaintext ratio of whole mesh calls is in
   ``bench/sdk_overhead.py``.)

Not a test. Exit status 0, or 1 with ``--strict`` when a target is missed, 2 when
nginx cannot be set up (part 3 is then skipped).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from sdk_overhead import (  # noqa: E402
    MESH_URL,
    find_nginx,
    free_port,
    make_mesh,
    nginx_conf,
    stop,
    wait_until_answering,
    write_mesh_credentials,
)

from meshsdk.config.loader import config_from_result, load_string  # noqa: E402
from meshsdk.security.authz import AuthzRequest, compile_policies  # noqa: E402
from meshsdk.security.ca import MeshCA, make_csr, new_key  # noqa: E402
from meshsdk.security.identity import WorkloadIdentity  # noqa: E402

ISSUE_TARGET = 500.0        # certificates per second
DECISION_TARGET_US = 20.0   # microseconds per authorization decision


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


# --- 1. issuance --------------------------------------------------------------------------


def bench_issuance(n: int, rounds: int) -> float:
    ca = MeshCA.create()
    csrs = [make_csr(new_key(), f"spiffe://cluster.local/ns/default/sa/w{i}") for i in range(n)]
    ca.sign_csr(csrs[0], namespace="default", service_account="warmup")

    def run() -> float:
        t0 = time.perf_counter()
        for i, csr in enumerate(csrs):
            ca.sign_csr(csr, namespace="default", service_account=f"w{i}")
        return (time.perf_counter() - t0) / n

    per = best_of(rounds, run)
    return 1.0 / per


# --- 2. authorization ---------------------------------------------------------------------


def policies_yaml(count: int) -> str:
    """``count`` policies selecting ``app: reviews`` in ``default``, of every action."""
    docs = []
    for i in range(count):
        action = ("DENY", "ALLOW", "ALLOW", "AUDIT")[i % 4]
        docs.append(f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p{i}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: {action}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/ns{i}/sa/caller{i}", "cluster.local/ns/shop/sa/*"]
        notNamespaces: ["blocked{i}"]
    - source:
        ipBlocks: ["10.{i}.0.0/16"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/api/v{i}/{{*}}/items", "/static/{i}/*"]
        notPaths: ["/api/v{i}/admin/{{**}}"]
    when:
    - key: request.headers[x-tenant]
      values: ["tenant-{i}", "t{i}-*"]
    - key: request.auth.claims[groups]
      values: ["group-{i}"]
""")
    return "---".join(docs)


def requests_mix() -> list[AuthzRequest]:
    """Requests that match early, late or never (the last is the worst case)."""
    claims = {"iss": "https://issuer.example", "sub": "u1", "groups": ["group-49", "x"]}
    return [
        AuthzRequest(principal="cluster.local/ns/ns1/sa/caller1", source_ip="10.1.2.3",
                     method="GET", path="/api/v1/abc/items", host="reviews:9080",
                     headers={"x-tenant": "tenant-1"}, request_principal="https://issuer.example/u1",
                     claims={**claims, "groups": ["group-1"]}),
        AuthzRequest(principal="cluster.local/ns/shop/sa/cart", source_ip="10.49.0.1",
                     method="POST", path="/api/v49/x/items?page=2", host="reviews:9080",
                     headers={"x-tenant": "t49-blue"}, request_principal="https://issuer.example/u1",
                     claims=claims),
        AuthzRequest(principal="cluster.local/ns/other/sa/nobody", source_ip="192.168.0.9",
                     method="DELETE", path="/nothing/here", host="reviews:9080",
                     headers={"x-tenant": "none"}),
    ]


def bench_authz(count: int, n: int, rounds: int) -> tuple[float, list[str]]:
    result = load_string(policies_yaml(count), source="<bench>", namespace="default")
    authorizer = compile_policies(config_from_result(result), "default", {"app": "reviews"},
                                  root_namespace="istio-system")
    mix = requests_mix()
    outcomes = [f"{d.action}:{d.policy}" for d in (authorizer.check(r) for r in mix)]
    check = authorizer.check

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            for req in mix:
                check(req)
        return (time.perf_counter() - t0) / (n * len(mix))

    return best_of(rounds, run) * 1e6, outcomes


# --- 3. handshakes ------------------------------------------------------------------------


def bench_handshakes(n: int, rounds: int) -> tuple[float, float, float, float] | None:
    nginx = find_nginx()
    if nginx is None:
        print("nginx not installed (Debian nginx-light): handshake part skipped",
              file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="meshsdk-nginx-") as tmp:
        prefix = Path(tmp)
        port, tls_port = free_port(), free_port()
        ca = write_mesh_credentials(prefix)
        (prefix / "nginx.conf").write_text(nginx_conf(prefix, port, tls_port))
        proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        identity = WorkloadIdentity.from_ca(ca, "default", "bench")
        try:
            if wait_until_answering(proc, port) is not None:
                return None
            ctx = identity.client_context()
            tls_url = f"https://127.0.0.1:{tls_port}/"
            plain_url = f"http://127.0.0.1:{port}/"

            def fresh(url: str) -> float:  # "Connection: close": nginx ends each connection
                with httpx.Client(verify=ctx) as client:
                    close = {"connection": "close"}
                    t0 = time.perf_counter()
                    for _ in range(n):
                        client.get(url, headers=close).raise_for_status()
                    return (time.perf_counter() - t0) / n

            def pooled(url: str) -> float:
                with httpx.Client(verify=ctx) as client:
                    client.get(url).raise_for_status()
                    t0 = time.perf_counter()
                    for _ in range(n):
                        client.get(url).raise_for_status()
                    return (time.perf_counter() - t0) / n

            out = []
            for url in (tls_url, plain_url):
                out.append(statistics.median(fresh(url) for _ in range(rounds)) * 1e6)
                out.append(statistics.median(pooled(url) for _ in range(rounds)) * 1e6)
            # the mesh client's own pooling: how many handshakes for n calls over mTLS
            mesh = make_mesh(tls_port, identity=identity)
            before = identity.client_context().session_stats()["connect"]
            with mesh.client() as client:
                for _ in range(n):
                    client.get(MESH_URL).raise_for_status()
            handshakes = identity.client_context().session_stats()["connect"] - before
            mesh.close()
            print(f"   (mesh.client() over auto mTLS: {n} calls opened {handshakes} "
                  f"TLS connection(s))")
            return out[0], out[1], out[2], out[3]
        finally:
            identity.close()
            stop(proc)


# --- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 5
    print(f"meshsdk security benchmark: Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")

    rate = bench_issuance(200 if args.quick else 500, rounds)
    ok_issue = rate >= ISSUE_TARGET
    print(f"\n1. certificate issuance (P-256 CSR -> workload certificate): {rate:,.0f}/s "
          f"(target >= {ISSUE_TARGET:.0f}/s) {'PASS' if ok_issue else 'MISS'}")

    us, outcomes = bench_authz(50, 2000 if args.quick else 5000, rounds)
    ok_authz = us < DECISION_TARGET_US
    print(f"\n2. authorization, 50 policies, mix of 3 requests ({', '.join(outcomes)}): "
          f"{us:.1f} us per decision (target < {DECISION_TARGET_US:.0f} us) "
          f"{'PASS' if ok_authz else 'MISS'}")

    hs = bench_handshakes(100 if args.quick else 300, rounds)
    if hs is not None:
        tls_fresh, tls_pooled, plain_fresh, plain_pooled = hs
        handshake = (tls_fresh - tls_pooled) - (plain_fresh - plain_pooled)
        print(f"\n3. GETs to nginx, microseconds each (median of {rounds} rounds):\n"
              f"   {'':<26}{'new connection':>16}{'kept alive':>12}\n"
              f"   {'mTLS (mesh certificate)':<26}{tls_fresh:>16.0f}{tls_pooled:>12.0f}\n"
              f"   {'plaintext':<26}{plain_fresh:>16.0f}{plain_pooled:>12.0f}\n"
              f"   the mTLS handshake costs about {handshake:.0f} us beyond a TCP connect, "
              f"once per pooled connection; on a kept-alive connection mTLS adds "
              f"{tls_pooled - plain_pooled:.0f} us per GET")
    missed = not (ok_issue and ok_authz)
    return 1 if missed and args.strict else (2 if hs is None else 0)


if __name__ == "__main__":
    raise SystemExit(main())
