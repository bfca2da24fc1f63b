"""uvicorn serving the reviews Django project (ASGI) over mesh mTLS.

    python examples/django/serve_asgi.py

Same environment as the WSGI setup (``MESH_PORT``, ``MESH_MTLS_MODE``,
``MESH_CERT_DIR``...); the server presents the workload's rotating certificate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Import the project and serve it (lifespan off: Django does not speak it)."""
    sys.path.insert(0, str(HERE))
    import uvicorn
    from reviews_site.asgi import application

    from meshsdk.inbound.servers import uvicorn_config
    from meshsdk.security.identity import WorkloadIdentity

    certs = Path(os.environ.get("MESH_CERT_DIR", HERE / "certs"))
    identity = WorkloadIdentity.from_files(certs / "cert-chain.pem", certs / "key.pem",
                                           certs / "root-cert.pem")
    identity.start()
    config = uvicorn_config(application, identity=identity,
                            mode=os.environ.get("MESH_MTLS_MODE", "STRICT"),  # type: ignore[arg-type]
                            port=int(os.environ.get("MESH_PORT", "9080")),
                            log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
