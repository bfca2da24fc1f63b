"""``GET /reviews/<id>``: ratings asked through the mesh, and who called."""

from __future__ import annotations

import functools

import httpx
from django.http import HttpRequest, JsonResponse
from meshsdk_django import get_mesh, inbound_request

RATINGS = "http://ratings.default.svc.cluster.local:9080"


@functools.cache
def ratings() -> httpx.Client:
    """One mesh client for the process (made on first use, once the mesh exists)."""
    return get_mesh().client()


def reviews(request: HttpRequest, product_id: int) -> JsonResponse:
    """The product's reviews: ratings asked through the mesh, in this request's trace."""
    caller = inbound_request(request)
    answer = ratings().get(f"{RATINGS}/ratings/{product_id}")
    return JsonResponse({
        "id": product_id, "caller": caller.principal, "user": caller.request_principal,
        "ratings": answer.json() if answer.status_code == 200 else None,
        "ratings_status": answer.status_code})
