"""The Django app: builds the mesh from ``settings.MESHSDK`` when Django is ready."""

from __future__ import annotations

import atexit
import os

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

import meshsdk_django
from meshsdk.errors import MeshError
from meshsdk_django import conf


class MeshSdkConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """``"meshsdk_django"`` in INSTALLED_APPS: one mesh per process, closed at exit."""

    name = "meshsdk_django"
    label = "meshsdk"
    verbose_name = "meshsdk"
    path = os.path.dirname(os.path.abspath(__file__))  # editable installs confuse Django

    def ready(self) -> None:
        if meshsdk_django._runtime is not None:  # ready() again (tests): keep the mesh
            return
        options = getattr(settings, "MESHSDK", None)
        if not isinstance(options, dict):
            raise ImproperlyConfigured("meshsdk_django needs settings.MESHSDK, a dict with "
                                       "'CONFIG' (Istio YAML) or 'CONNECT' (host:port)")
        try:
            runtime = conf.build(options)
        except MeshError as exc:
            raise ImproperlyConfigured(f"settings.MESHSDK: {exc}") from exc
        meshsdk_django._runtime = runtime
        atexit.register(runtime.close)
