"""gunicorn config for the WSGI tests: mesh mTLS from identity files the test writes
(and rewrites to rotate), one gthread worker on the port the test chose."""

import os

from meshsdk.inbound.servers import gunicorn_settings
from meshsdk.security.identity import WorkloadIdentity

_dir = os.environ["MESHSDK_TEST_IDENTITY"]
identity = WorkloadIdentity.from_files(
    os.path.join(_dir, "cert-chain.pem"), os.path.join(_dir, "key.pem"),
    os.path.join(_dir, "root-cert.pem"))
globals().update(gunicorn_settings(identity=identity,
                                   mode=os.environ.get("MESHSDK_TEST_MODE", "STRICT"),
                                   directory=_dir))
bind = f"127.0.0.1:{os.environ['MESHSDK_TEST_PORT']}"
workers = 1
worker_class = "gthread"
threads = 4
loglevel = "warning"
