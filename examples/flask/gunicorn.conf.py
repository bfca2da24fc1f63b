"""gunicorn serving examples/flask/app.py over mesh mTLS (the mesh certificate, rotating).

    gunicorn -c examples/flask/gunicorn.conf.py

One worker process with threads: the worker owns the mesh and its metrics endpoint
(``MESH_METRICS_PORT``), so more processes would need a port each. ``MESH_PORT`` is the
port to serve (default 9080); the PeerAuthentication mode of that port decides whether
client certificates are required (STRICT) or optional (PERMISSIVE).
"""

import os
from pathlib import Path

from meshsdk import Mesh, Workload
from meshsdk.inbound.servers import gunicorn_settings
from meshsdk.security.identity import WorkloadIdentity

HERE = Path(__file__).resolve().parent
PORT = int(os.environ.get("MESH_PORT", "9080"))
CERTS = Path(os.environ.get("MESH_CERT_DIR", HERE / "certs"))

wsgi_app = "app:app"
pythonpath = str(HERE)
bind = [f"127.0.0.1:{PORT}"]
worker_class = "gthread"
workers = 1
threads = 8
control_socket_disable = True  # recent gunicorns open a control socket in $HOME otherwise

# the server's TLS: the same certificate files the app's mesh uses
_identity = WorkloadIdentity.from_files(CERTS / "cert-chain.pem", CERTS / "key.pem",
                                        CERTS / "root-cert.pem")
_workload = (Workload.from_env() if "MESH_WORKLOAD_NAME" in os.environ
             else Workload("reviews-v1", "default", {"app": "reviews"}, "reviews"))
_policy = Mesh.from_config(os.environ.get("MESH_CONFIG", HERE / "mesh"), _workload,
                           telemetry=False)
globals().update(gunicorn_settings(_policy, identity=_identity, port=PORT))
