"""Settings of the reviews example: a Django project with no database and one view.

The mesh is configured under ``MESHSDK`` (see ``meshsdk_django.conf``), here from the
environment so the tests can point it elsewhere:

* ``MESH_CONFIG``: Istio YAML, a file or directory (default: ``mesh/``), or
  ``MESH_CONNECT``: the config service (``host:port``);
* ``MESH_CERT_DIR``: the workload certificate as ``meshctl ca issue --out DIR`` writes
  it (default: ``certs/``);
* ``MESH_WORKLOAD_*``: the workload (default: ``reviews-v1``, account ``reviews``);
* ``MESH_METRICS_PORT``: Istio's metrics for Prometheus (default: 15090).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "reviews-example-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]  # callers use the mesh name: reviews.default.svc.cluster.local
ROOT_URLCONF = "reviews_site.urls"
INSTALLED_APPS = ["meshsdk_django"]
MIDDLEWARE = ["meshsdk_django.middleware.MeshMiddleware"]  # first: it sees every request
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

_source = ({"CONNECT": os.environ["MESH_CONNECT"]} if os.environ.get("MESH_CONNECT")
           else {"CONFIG": os.environ.get("MESH_CONFIG", str(BASE_DIR / "mesh"))})
MESHSDK = {
    **_source,
    "CERT_DIR": os.environ.get("MESH_CERT_DIR", str(BASE_DIR / "certs")),
    "WORKLOAD": None if "MESH_WORKLOAD_NAME" in os.environ else {
        "name": "reviews-v1", "namespace": "default",
        "labels": {"app": "reviews", "version": "v1"}, "service_account": "reviews"},
    "METRICS_PORT": int(os.environ.get("MESH_METRICS_PORT", "15090")),
}
