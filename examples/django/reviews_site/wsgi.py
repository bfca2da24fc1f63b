"""WSGI entry point (gunicorn -c examples/django/gunicorn.conf.py)."""

import os

from django.core.wsgi import get_wsgi_application

from reviews_site.tracing import export_spans_to_file

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviews_site.settings")
export_spans_to_file()
application = get_wsgi_application()
