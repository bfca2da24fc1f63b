"""reviews, a meshed Flask service (the example of docs/integrations/flask.md).

    gunicorn -c examples/flask/gunicorn.conf.py

``GET /reviews/<id>`` asks ratings for the product's ratings through the mesh and
says who called. The mesh comes from the environment:

* ``MESH_CONFIG``: Istio YAML, a file or directory (default: ``mesh/`` beside this file);
* ``MESH_CERT_DIR``: the workload certificate, as ``meshctl ca issue --out DIR`` writes
  it (default: ``certs/`` beside this file);
* ``MESH_WORKLOAD_NAME``/``_NAMESPACE``/``_LABELS``/``_SERVICE_ACCOUNT`` (default:
  ``reviews-v1`` in ``default``, labels ``app=reviews,version=v1``, account ``reviews``);
* ``MESH_METRICS_PORT``: serve Istio's metrics for Prometheus there (default: 15090);
* ``MESH_SPAN_FILE``: write finished spans there, one JSON object a line (optional;
  the end-to-end tests read it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from meshsdk_flask import MeshFlask, inbound_request

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


def build_mesh() -> Mesh:
    """This workload's mesh: config, identity (rotating files) and metrics endpoint."""
    if "MESH_WORKLOAD_NAME" in os.environ:
        workload = Workload.from_env()
    else:
        workload = Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"},
                            "reviews")
    certs = Path(os.environ.get("MESH_CERT_DIR", HERE / "certs"))
    identity = WorkloadIdentity.from_files(certs / "cert-chain.pem", certs / "key.pem",
                                           certs / "root-cert.pem")
    identity.start()
    mesh = Mesh.from_config(os.environ.get("MESH_CONFIG", HERE / "mesh"), workload,
                            identity=identity)
    mesh.serve_metrics(int(os.environ.get("MESH_METRICS_PORT", "15090")))
    return mesh


export_spans_to_file()
mesh = build_mesh()
app = Flask(__name__)
MeshFlask(app, mesh=mesh)
ratings = mesh.client()


@app.get("/reviews/<int:product_id>")
def reviews(product_id: int) -> dict[str, Any]:
    """The product's reviews: ratings asked through the mesh, in this request's trace."""
    caller = inbound_request()
    answer = ratings.get(f"{RATINGS}/ratings/{product_id}")
    return {"id": product_id, "caller": caller.principal, "user": caller.request_principal,
            "ratings": answer.json() if answer.status_code == 200 else None,
            "ratings_status": answer.status_code}
