"""ASGI entry point (python examples/django/serve_asgi.py: uvicorn over mesh mTLS)."""

import os

from django.core.asgi import get_asgi_application

from reviews_site.tracing import export_spans_to_file

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviews_site.settings")
export_spans_to_file()
application = get_asgi_application()
