"""reviews, a meshed FastAPI service (the example of docs/integrations/fastapi.md).

    python examples/fastapi/app.py

``GET /reviews/{product_id}`` asks ratings for the product's ratings through the mesh
and says who called. The mesh is made when the app starts (the lifespan hooks of
``meshsdk_fastapi``) and closed when it stops; uvicorn serves mesh mTLS with the
workload's rotating certificate. The environment:

* ``MESH_CONNECT``: the config service (``host:port``), or else ``MESH_CONFIG``: Istio
  YAML, a file or directory (default: ``mesh/`` beside this file);
* ``MESH_CERT_DIR``: the workload certificate, as ``meshctl ca issue --out DIR`` writes
  it (default: ``certs/`` beside this file);
* ``MESH_WORKLOAD_NAME``/``_NAMESPACE``/``_LABELS``/``_SERVICE_ACCOUNT`` (default:
  ``reviews-v1`` in ``default``, labels ``app=reviews,version=v1``, account ``reviews``);
* ``MESH_PORT`` (default 9080) and ``MESH_MTLS_MODE`` (``STRICT``, ``PERMISSIVE``);
* ``MESH_METRICS_PORT``: serve Istio's metrics for Prometheus there (default: 15090);
* ``MESH_SPAN_FILE``: write finished spans there, one JSON object a line (optional;
  the end-to-end tests read it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from meshsdk_fastapi import inbound_request, instrument

from meshsdk import Mesh, Workload
from meshsdk.security.identity import WorkloadIdentity

HERE = Path(__file__).resolve().parent
RATINGS = "http://ratings.default.svc.cluster.local:9080"


def export_spans_to_file() -> None:
    """Install OpenTelemetry's SDK with spans written to ``$MESH_SPAN_FILE``, if set."""
    path = os.environ.get("MESH_SPAN_FILE")
    if not path:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    exporter = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def workload() -> Workload:
    """This workload, from MESH_WORKLOAD_* or the example's default."""
    if "MESH_WORKLOAD_NAME" in os.environ:
        return Workload.from_env()
    return Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"}, "reviews")


certs = Path(os.environ.get("MESH_CERT_DIR", HERE / "certs"))
identity = WorkloadIdentity.from_files(certs / "cert-chain.pem", certs / "key.pem",
                                       certs / "root-cert.pem")


def make_mesh() -> Mesh:
    """Called at startup: the mesh, from the config service or from files."""
    if os.environ.get("MESH_CONNECT"):
        mesh = Mesh.connect(os.environ["MESH_CONNECT"], workload(), identity=identity)
    else:
        mesh = Mesh.from_config(os.environ.get("MESH_CONFIG", HERE / "mesh"), workload(),
                                identity=identity)
    metrics = mesh.serve_metrics(int(os.environ.get("MESH_METRICS_PORT", "15090")))
    mesh_lifespan.on_close.append(metrics.close)
    return mesh


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own startup: the mesh is already there (and closed after this ends)."""
    async with app.state.mesh.async_client() as client:
        app.state.ratings = client
        yield


app = FastAPI(lifespan=lifespan)
mesh_lifespan = instrument(app, make_mesh)


@app.get("/reviews/{product_id}")
async def reviews(product_id: int, request: Request) -> dict[str, Any]:
    """The product's reviews: ratings asked through the mesh, in this request's trace."""
    caller = inbound_request(request)
    answer = await request.app.state.ratings.get(f"{RATINGS}/ratings/{product_id}")
    return {"id": product_id, "caller": caller.principal, "user": caller.request_principal,
            "ratings": answer.json() if answer.status_code == 200 else None,
            "ratings_status": answer.status_code}


def main() -> None:
    """Serve the app with uvicorn over mesh mTLS (the workload certificate, rotating)."""
    import uvicorn

    from meshsdk.inbound.servers import uvicorn_config

    export_spans_to_file()
    identity.start()
    config = uvicorn_config(app, identity=identity,
                            mode=os.environ.get("MESH_MTLS_MODE", "STRICT"),  # type: ignore[arg-type]
                            port=int(os.environ.get("MESH_PORT", "9080")),
                            lifespan="on", log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
