"""meshsdk-grpc, end to end on one machine: ``.venv/bin/python examples/grpc/app.py``

Two versions of a gRPC ``reviews`` service run as real gRPC servers on 127.0.0.1, each
behind :class:`meshsdk_grpc.MeshServerInterceptor` with mesh mTLS (STRICT) and the
AuthorizationPolicy of ``istio.yaml``. ``productpage`` calls them through
``meshsdk_grpc.channel``: the 80/20 split, the ``end-user: jason`` match, retries on
UNAVAILABLE, and a caller the policy does not allow. Exits 0 when everything behaved
as configured; stops every server it started.
"""

from __future__ import annotations

import random
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import meshsdk_grpc

from meshsdk import Mesh, Workload, load_config
from meshsdk.security.ca import MeshCA
from meshsdk.security.identity import WorkloadIdentity

HERE = Path(__file__).resolve().parent


def reviews_handlers(version: str) -> Any:
    """The app: ``Get`` answers with its version; ``Flaky`` fails every other call."""
    calls = {"flaky": 0}

    def get(request: bytes, context: Any) -> bytes:
        return f"reviews {version}".encode()

    def flaky(request: bytes, context: Any) -> bytes:
        calls["flaky"] += 1
        if calls["flaky"] % 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"flaky answered"

    return grpc.method_handlers_generic_handler("reviews.Reviews", {
        "Get": grpc.unary_unary_rpc_method_handler(get),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky)})


def service_entry(ports: dict[str, int]) -> str:
    """Where the reviews servers listen: a ServiceEntry, as a registry would give it."""
    endpoints = "".join(
        f"  - {{address: 127.0.0.1, ports: {{grpc: {port}}}, serviceAccount: reviews,\n"
        f"     labels: {{app: reviews, version: {version}}}}}\n"
        for version, port in ports.items())
    return ("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            "metadata: {name: reviews, namespace: default}\nspec:\n"
            "  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n"
            "  resolution: STATIC\n  ports: [{number: 9080, name: grpc, protocol: GRPC}]\n"
            f"  endpoints:\n{endpoints}")


def main() -> int:
    ca = MeshCA.create()  # a throwaway mesh CA; real meshes use `meshctl ca` or the CA service
    servers: list[Any] = []
    closing: list[Any] = []
    failures: list[str] = []
    try:
        reviews_id = WorkloadIdentity.from_ca(ca, "default", "reviews")
        closing.append(reviews_id)
        ports: dict[str, int] = {}
        for version in ("v1", "v2"):
            workload = Workload(f"reviews-{version}", "default",
                                {"app": "reviews", "version": version}, "reviews")
            mesh = Mesh.from_config(HERE / "istio.yaml", workload)
            closing.append(mesh)
            server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=[
                meshsdk_grpc.MeshServerInterceptor(mesh, port=9080)])
            server.add_generic_rpc_handlers((reviews_handlers(version),))
            ports[version] = server.add_secure_port(
                "127.0.0.1:0", meshsdk_grpc.server_credentials(reviews_id))
            server.start()
            servers.append(server)

        with tempfile.TemporaryDirectory() as tmp:
            registry = Path(tmp) / "registry.yaml"
            registry.write_text(service_entry(ports), encoding="utf-8")
            config = load_config(HERE / "istio.yaml", registry)

        def caller(service_account: str) -> Any:
            identity = WorkloadIdentity.from_ca(ca, "default", service_account)
            mesh = Mesh(config, Workload(f"{service_account}-v1", "default",
                                         {"app": service_account}, service_account),
                        identity=identity, rng=random.Random(42))
            channel = meshsdk_grpc.channel(mesh, "reviews:9080")
            closing.extend([channel, mesh, identity])
            return channel

        productpage = caller("productpage")
        get = productpage.unary_unary("/reviews.Reviews/Get")
        answers = [get(b"") for _ in range(200)]
        v1 = answers.count(b"reviews v1") / len(answers)
        print(f"80/20 split over 200 calls: v1 {v1:.0%}, v2 {1 - v1:.0%}")
        if not 0.7 <= v1 <= 0.9:
            failures.append(f"split {v1:.0%} is not about 80%")

        jason = {get(b"", metadata=[("end-user", "jason")]) for _ in range(10)}
        print(f"end-user: jason -> {sorted(a.decode() for a in jason)}")
        if jason != {b"reviews v2"}:
            failures.append("jason did not always reach v2")

        answer, call = productpage.unary_unary("/reviews.Reviews/Flaky").with_call(b"")
        print(f"Flaky: {answer.decode()!r} after {call.info.attempts} attempts "
              f"(retryOn: unavailable)")
        if call.info.attempts != 2:
            failures.append("the retry did not happen")

        ratings = caller("ratings")
        try:
            ratings.unary_unary("/reviews.Reviews/Get")(b"")
            failures.append("ratings was let in")
        except meshsdk_grpc.MeshRpcError as err:
            print(f"ratings -> {err.code().name}: {err.details()}")
            if err.code() is not grpc.StatusCode.PERMISSION_DENIED:
                failures.append(f"ratings got {err.code().name}")
    finally:
        for server in servers:
            server.stop(0).wait(5)
        for thing in reversed(closing):
            thing.close()
    for failure in failures:
        print(f"FAIL: {failure}")
    print("ok" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
