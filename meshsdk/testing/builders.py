"""Build mesh configuration for tests in a line: services backed by real upstreams.

    >>> from meshsdk.testing.builders import service_entry
    >>> print(service_entry("reviews", [(19082, {"version": "v1"})]).splitlines()[1])
    kind: ServiceEntry
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from meshsdk.config.loader import config_from_result, load_string
from meshsdk.config.resource import Config
from meshsdk.testing.upstream import Upstream

EndpointSpec = tuple["Upstream | int", Mapping[str, str]]


def service_entry(name: str, endpoints: Sequence[EndpointSpec], *, namespace: str = "default",
                  port: int = 80, protocol: str = "HTTP",
                  service_account: str | None = None) -> str:
    """A ServiceEntry for ``name.namespace.svc.cluster.local`` with one inline endpoint per
    (upstream or port, labels), all on 127.0.0.1. Labels get ``app: name`` added."""
    eps: list[dict[str, Any]] = []
    for target, labels in endpoints:
        number = target.port if isinstance(target, Upstream) else int(target)
        ep: dict[str, Any] = {"address": "127.0.0.1", "ports": {"http": number},
                              "labels": {"app": name, **labels}}
        if service_account:
            ep["serviceAccount"] = service_account
        eps.append(ep)
    doc = {
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": [f"{name}.{namespace}.svc.cluster.local"], "location": "MESH_INTERNAL",
                 "resolution": "STATIC",
                 "ports": [{"number": port, "name": "http", "protocol": protocol}],
                 "endpoints": eps},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def config_from_yaml(*documents: str | Iterable[str], namespace: str = "default") -> Config:
    """A validated Config from YAML strings (raises ConfigError with every problem)."""
    texts: list[str] = []
    for d in documents:
        texts.extend([d] if isinstance(d, str) else list(d))
    result = load_string("\n---\n".join(texts), source="<test config>", namespace=namespace)
    return config_from_result(result)
