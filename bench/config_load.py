"""Benchmark: load, validate and index a large Istio configuration; time the hot lookups.

    python bench/config_load.py                 # 5,000 resources
    python bench/config_load.py --resources 20000 --strict

Generates a realistic mix (ServiceEntries with ports and workloadSelector,
WorkloadEntries, VirtualServices with matches, weighted routes, retries, timeouts
and faults, DestinationRules with subsets and traffic policies, and a few
AuthorizationPolicies / PeerAuthentications) over ~50 namespaces in ~50 files in
a temporary directory, then measures (best of 3, ``time.perf_counter``):

* load + validate: ``load_path`` of the directory;
* analyze: ``config_from_result`` (the cross-resource analyzer warnings pass);
* snapshot: ``Snapshot(config)``;
* hot-path lookups, 100,000 calls each after warm-up.

Not a test (pytest only collects ``tests/``); ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from meshsdk.config import Snapshot, config_from_result, load_path  # noqa: E402

TARGET_BUILD_S = 2.0
TARGET_LOOKUP_US = 5.0
NETWORKING = "networking.istio.io/v1"
SECURITY = "security.istio.io/v1"


# --- generation -----------------------------------------------------------------------


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace}


def _service_group(k: int, ns: str, n_services: int, n_namespaces: int) -> list[dict[str, Any]]:
    """The five documents of one service: ServiceEntry, two WorkloadEntries, VS, DR."""
    name = f"svc-{k}"
    fqdn = f"{name}.{ns}.svc.cluster.local"
    se = {"apiVersion": NETWORKING, "kind": "ServiceEntry", "metadata": _meta(name, ns),
          "spec": {"hosts": [fqdn], "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"},
                             {"number": 9443, "name": "grpc", "protocol": "GRPC",
                              "targetPort": 9444}],
                   "workloadSelector": {"labels": {"app": name}}}}
    workloads = []
    for v, version in enumerate(("v1", "v2")):
        workloads.append({
            "apiVersion": NETWORKING, "kind": "WorkloadEntry",
            "metadata": _meta(f"{name}-{version}", ns),
            "spec": {"address": f"10.{k // 250 % 250}.{k % 250}.{v + 1}",
                     "ports": {"http": 20000 + v, "grpc": 21000 + v},
                     "labels": {"app": name, "version": version},
                     "serviceAccount": name, "locality": "eu-west/zone-a"}})
    # every tenth service also sends a share of its traffic to a service elsewhere
    other = (k + 1) % n_services
    other_host = f"svc-{other}.ns-{other % n_namespaces}.svc.cluster.local"
    default_route: dict[str, Any] = {
        "name": "default",
        "route": [{"destination": {"host": name, "subset": "v1"}, "weight": 90},
                  {"destination": {"host": name, "subset": "v2"}, "weight": 10}],
        "timeout": "10s",
        "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure"},
    }
    if k % 10 == 0:
        default_route["route"].append({"destination": {"host": other_host}, "weight": 5})
    http: list[dict[str, Any]] = [
        {"name": "canary",
         "match": [{"headers": {"x-canary": {"exact": "true"}}, "uri": {"prefix": "/api"}},
                   {"sourceLabels": {"track": "canary"}}],
         "route": [{"destination": {"host": name, "subset": "v2",
                                    "port": {"number": 9080}}}],
         "timeout": "3s"},
        default_route,
    ]
    if k % 5 == 0:
        http[0]["fault"] = {"delay": {"fixedDelay": "100ms", "percentage": {"value": 1.0}},
                            "abort": {"httpStatus": 503, "percentage": {"value": 0.1}}}
    vs = {"apiVersion": NETWORKING, "kind": "VirtualService", "metadata": _meta(name, ns),
          "spec": {"hosts": [name], "http": http}}
    dr = {"apiVersion": NETWORKING, "kind": "DestinationRule", "metadata": _meta(name, ns),
          "spec": {"host": name,
                   "trafficPolicy": {
                       "loadBalancer": {"simple": "LEAST_REQUEST"},
                       "connectionPool": {"tcp": {"maxConnections": 100,
                                                  "connectTimeout": "500ms"},
                                          "http": {"http1MaxPendingRequests": 10,
                                                   "maxRetries": 3}},
                       "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s",
                                            "baseEjectionTime": "30s"},
                       "portLevelSettings": [{"port": {"number": 9443},
                                              "loadBalancer": {"simple": "ROUND_ROBIN"}}]},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                               {"name": "v2", "labels": {"version": "v2"},
                                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]}}
    return [se, *workloads, vs, dr]


def _security(ns: str, j: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": SECURITY, "kind": "PeerAuthentication", "metadata": _meta("default", ns),
         "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": SECURITY, "kind": "AuthorizationPolicy",
         "metadata": _meta("allow-frontends", ns),
         "spec": {"selector": {"matchLabels": {"app": f"svc-{j}"}}, "action": "ALLOW",
                  "rules": [{"from": [{"source": {"principals": [
                                 f"cluster.local/ns/{ns}/sa/frontend"]}}],
                             "to": [{"operation": {"methods": ["GET", "POST"],
                                                   "paths": ["/api/*"]}}]}]}},
    ]


def generate(directory: Path, resources: int, namespaces: int, files: int) -> dict[str, int]:
    """Write ``resources`` documents into ``files`` files; return counts by kind."""
    security_docs = 2 * namespaces
    n_services = max(1, (resources - security_docs) // 5)
    by_file: list[list[dict[str, Any]]] = [[] for _ in range(files)]
    docs_total = 0
    for j in range(namespaces):
        for doc in _security(f"ns-{j}", j):
            by_file[j % files].append(doc)
            docs_total += 1
    for k in range(n_services):
        j = k % namespaces
        for doc in _service_group(k, f"ns-{j}", n_services, namespaces):
            by_file[j % files].append(doc)
            docs_total += 1
    extra = 0
    while docs_total < resources:  # top up with more workloads of service 0
        by_file[0].append({
            "apiVersion": NETWORKING, "kind": "WorkloadEntry",
            "metadata": _meta(f"svc-0-extra-{extra}", "ns-0"),
            "spec": {"address": f"10.250.{extra // 250 % 250}.{extra % 250 + 1}",
                     "ports": {"http": 20000}, "labels": {"app": "svc-0", "version": "v1"}}})
        extra += 1
        docs_total += 1
    counts: dict[str, int] = {}
    for i, docs in enumerate(by_file):
        if not docs:
            continue
        sub = directory / f"group-{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"ns-{i:03d}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        for d in docs:
            counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    return counts


# --- measuring ------------------------------------------------------------------------


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def per_call_us(iterations: int, fn: Callable[[Any], Any], args: Sequence[Any],
                runs: int) -> float:
    """Microseconds per call of ``fn(arg)`` cycling through ``args``; best of ``runs``."""
    calls = [args[i % len(args)] for i in range(iterations)]
    for a in args:  # warm-up: fill the caches the data path relies on
        fn(a)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for a in calls:
            fn(a)
        best = min(best, time.perf_counter() - start)
    return best / iterations * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=5000, help="documents (default 5000)")
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=100_000,
                        help="calls per lookup (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="take the best of this many runs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.resources < 2 * args.namespaces + 5 or min(args.namespaces, args.files) < 1:
        parser.error("need --resources >= 2 * --namespaces + 5 and at least one file")

    with tempfile.TemporaryDirectory(prefix="meshsdk-bench-") as tmp:
        root = Path(tmp)
        counts = generate(root, args.resources, args.namespaces, args.files)
        n_files = sum(1 for _ in root.rglob("*.yaml"))

        t_load, result = best_of(args.runs, lambda: load_path(root))
        if result.errors:
            for d in result.errors[:20]:
                print(d.format(), file=sys.stderr)
            print(f"generated config has {len(result.errors)} errors", file=sys.stderr)
            return 2
        t_analyze, config = best_of(args.runs, lambda: config_from_result(result))
        t_snapshot, snap = best_of(args.runs, lambda: Snapshot(config))

    # lookups from one client namespace to the services it holds
    view = snap.view("ns-0")
    names = [f"svc-{k}" for k in range(0, counts["ServiceEntry"], args.namespaces)][:100]
    authorities = [f"{n}:9080" for n in names]
    fqdns = [f"{n}.ns-0.svc.cluster.local" for n in names]
    services = [view.service(f) for f in fqdns]
    assert all(s is not None for s in services)
    v1 = view.subset_labels(fqdns[0], "v1")
    assert v1 is not None and view.resolve(authorities[0])[0] is services[0]
    assert snap.endpoints(services[0], 9080, v1), "no endpoints: generator out of step"

    n, runs = args.iterations, args.runs
    lookups = [
        ('view.resolve("svc-N:9080")', per_call_us(n, view.resolve, authorities, runs)),
        ("view.virtual_service(fqdn)", per_call_us(n, view.virtual_service, fqdns, runs)),
        ("view.destination_rule(fqdn)", per_call_us(n, view.destination_rule, fqdns, runs)),
        ('view.policy(fqdn, "v2", 9080)',
         per_call_us(n, lambda f: view.policy(f, "v2", 9080), fqdns, runs)),
        ("snapshot.endpoints(svc, 9080, v1)",
         per_call_us(n, lambda s: snap.endpoints(s, 9080, v1), services, runs)),
    ]

    total = t_load + t_analyze + t_snapshot
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"meshsdk config benchmark: {sum(counts.values())} resources in {n_files} files, "
          f"{args.namespaces} namespaces")
    print(f"  ({kinds})")
    print(f"  {len(config.resources)} loaded, {len(config.warnings)} warnings; "
          f"best of {runs} runs; lookups: {n} calls each after warm-up\n")
    rows: list[tuple[str, str, str, str]] = [
        ("load + validate (load_path)", f"{t_load:.3f} s", "", ""),
        ("analyze (config_from_result)", f"{t_analyze:.3f} s", "", ""),
        ("Snapshot(config)", f"{t_snapshot:.3f} s", "", ""),
        ("load + validate + analyze + snapshot", f"{total:.3f} s", f"< {TARGET_BUILD_S:g} s",
         "PASS" if total < TARGET_BUILD_S else "MISS"),
    ]
    for label, us in lookups:
        rows.append((label, f"{us:.2f} us", f"< {TARGET_LOOKUP_US:g} us",
                     "PASS" if us < TARGET_LOOKUP_US else "MISS"))
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'measured':>10}  {'target':>9}  result")
    for label, measured, target, verdict in rows:
        print(f"{label:<{width}}  {measured:>10}  {target:>9}  {verdict}")
    missed = [r[0] for r in rows if r[3] == "MISS"]
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
