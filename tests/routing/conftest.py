"""Fixtures for the routing tests: configurations built the way users build them
(YAML text -> ``load_string`` -> ``config_from_result`` -> ``Snapshot``) and requests
built the way drivers build them (``RequestView.build``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pytest

from meshsdk.config import (
    LoadResult,
    Snapshot,
    config_from_result,
    load_mesh_config_string,
    load_string,
)
from meshsdk.routing.request import RequestView
from meshsdk.workload import Workload

# The bookinfo services as ServiceEntries + WorkloadEntries (namespace "default"), plus
# a two-port service, so that tests need only write their VirtualServices.
SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi}
spec:
  hosts: [multi.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 9090, name: admin, protocol: HTTP}
  workloadSelector: {labels: {app: multi}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 10.0.0.2, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3}
spec: {address: 10.0.0.3, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1}
spec: {address: 10.0.0.4, labels: {app: ratings, version: v1}}
"""

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
"""

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
PRODUCTPAGE = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"})

SnapshotFactory = Callable[..., Snapshot]
RequestFactory = Callable[..., RequestView]


def _load(*texts: str, mesh: str | None = None) -> Snapshot:
    result = LoadResult()
    for i, text in enumerate(texts):
        result.extend(load_string(text, source=f"<test {i}>"))
    assert not result.errors, "\n".join(str(d) for d in result.errors)
    mesh_config = None
    if mesh is not None:
        mesh_config, diagnostics = load_mesh_config_string(mesh)
        assert mesh_config is not None, diagnostics
    return Snapshot(config_from_result(result, mesh=mesh_config))


@pytest.fixture
def snapshot_of() -> SnapshotFactory:
    """``snapshot_of(vs_yaml, ..., mesh=None, services=True)``: the bookinfo services and
    subsets plus the given documents, validated as ``meshctl validate`` would."""

    def build(*texts: str, mesh: str | None = None, services: bool = True) -> Snapshot:
        base = (SERVICES, SUBSETS) if services else ()
        return _load(*base, *texts, mesh=mesh)

    return build


def make_request(url_path: str = "/", *, authority: str = "reviews:9080", method: str = "GET",
                 scheme: str = "http", query: str = "",
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                 source: Workload | None = None) -> RequestView:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    return RequestView.build(method, scheme, authority, url_path, query, items,
                             source=source or PRODUCTPAGE)


@pytest.fixture
def request_of() -> RequestFactory:
    """``request_of(path, authority=..., method=..., headers=..., source=...)``."""
    return make_request


def vs_doc(http: str, *, hosts: str = "[reviews]", name: str = "reviews",
           namespace: str | None = None, extra: str = "") -> str:
    """A VirtualService document with the given (indented) ``http`` block."""
    ns = f", namespace: {namespace}" if namespace else ""
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: {name}{ns}}}\nspec:\n  hosts: {hosts}\n{extra}  http:\n{http}")


@pytest.fixture
def vs() -> Callable[..., str]:
    return vs_doc
