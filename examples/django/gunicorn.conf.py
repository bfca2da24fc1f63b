"""gunicorn serving the reviews Django project (WSGI) over mesh mTLS.

    gunicorn -c examples/django/gunicorn.conf.py

One worker process with threads: the worker owns the mesh and its metrics endpoint
(``MESH_METRICS_PORT``), so more processes would need a port each. ``MESH_PORT`` is the
port to serve (default 9080); ``MESH_MTLS_MODE`` STRICT (default: client certificates
required) or PERMISSIVE (optional).
"""

import os
from pathlib import Path

from meshsdk.inbound.servers import gunicorn_settings
from meshsdk.security.identity import WorkloadIdentity

HERE = Path(__file__).resolve().parent
PORT = int(os.environ.get("MESH_PORT", "9080"))
CERTS = Path(os.environ.get("MESH_CERT_DIR", HERE / "certs"))

wsgi_app = "reviews_site.wsgi:application"
pythonpath = str(HERE)
bind = [f"127.0.0.1:{PORT}"]
worker_class = "gthread"
workers = 1
threads = 8
control_socket_disable = True  # recent gunicorns open a control socket in $HOME otherwise

# the server's TLS: the same certificate files the project's mesh uses
_identity = WorkloadIdentity.from_files(CERTS / "cert-chain.pem", CERTS / "key.pem",
                                        CERTS / "root-cert.pem")
globals().update(gunicorn_settings(identity=_identity, port=PORT,
                                   mode=os.environ.get("MESH_MTLS_MODE", "STRICT")))
