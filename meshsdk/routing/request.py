"""The protocol-neutral view of one HTTP request that every routing decision reads.

Drivers (httpx transports, WSGI/ASGI middleware, the sidecar) build a
:class:`RequestView` from their own request type; the decision code never sees
httpx or a framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshsdk.config.hosts import split_host_port
from meshsdk.memo import remember
from meshsdk.workload import Workload

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class RequestView:
    """One request as routing sees it.

    ``headers`` has lower-case names; a repeated header's values are joined with
    ``","`` as HTTP allows. ``authority`` is the Host as the caller wrote it
    (``reviews:9080``); ``port`` is its port or the scheme's default.

    Treat as read-only (``headers`` is a read-only mapping). Not ``frozen``: one is
    built on every call, and a frozen dataclass's ``__init__`` stores each field
    through ``object.__setattr__``, several times the cost of plain slot stores.
    """

    method: str
    scheme: str
    authority: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    port: int | None = None
    source: Workload = field(default_factory=Workload)
    grpc: bool = False

    @classmethod
    def build(cls, method: str, url_scheme: str, authority: str, path: str, query: str = "",
              headers: Iterable[tuple[str, str]] | dict[str, str] = (),
              source: Workload | None = None,
              *, lowered: bool = False) -> RequestView:
        """Normalise raw parts: upper-case method, lower-case header names, joined repeats.

        ``lowered``: the names in ``headers`` are lower-case already: a list (httpx's
        ``multi_items()``), so a header block without repeats is one ``dict()`` call,
        or a dict of them without repeats, used as it is (the view keeps it: it must
        not change afterwards).
        """
        merged: dict[str, str] | None = None
        if lowered and isinstance(headers, dict):
            merged = headers
        elif lowered and isinstance(headers, list):
            merged = dict(headers)
            if len(merged) != len(headers):  # a repeated name: join its values below
                merged = None
        if merged is None:
            merged = {}
            for name, value in (headers.items() if isinstance(headers, dict) else headers):
                key = name.lower()
                merged[key] = f"{merged[key]},{value}" if key in merged else value
        return cls.of(method.upper(), url_scheme.lower(), authority, path, query, merged,
                      source or Workload())

    @classmethod
    def of(cls, method: str, scheme: str, authority: str, path: str, query: str,
           headers: dict[str, str], source: Workload) -> RequestView:
        """:meth:`build` from parts already normalised (method upper-case, scheme
        lower-case, one lower-case name per header), as httpx's request has them: no
        pass over the headers. The view keeps ``headers``; it must not change afterwards.

        Every outbound call builds one here, so its fields are stored one by one rather
        than bound as arguments of the dataclass ``__init__`` (a third of the cost);
        ``tests/test_value_objects.py`` checks it against the constructor."""
        view: RequestView = object.__new__(cls)
        view.method = method
        view.scheme = scheme
        view.authority = authority
        view.path = path
        view.query = query
        view.headers = MappingProxyType(headers)
        view.port = _port_of(authority, scheme)
        view.source = source
        view.grpc = headers.get("content-type", "").startswith("application/grpc")
        return view


_PORT_CACHE_LIMIT = 1024
_ports: dict[tuple[str, str], int | None] = {}


def _port_of(authority: str, url_scheme: str) -> int | None:
    """The port of ``authority`` (``host:port``, ``[v6]:port``), else the scheme's
    default; memoised per (authority, scheme), as calls repeat a few of them. Bounded:
    cleared when full."""
    key = (authority, url_scheme)
    port = _ports.get(key, -1)  # -1: not known yet (a known port may be None)
    if port != -1:
        return port
    port = split_host_port(authority)[1]
    if port is None:
        port = _DEFAULT_PORTS.get(url_scheme.lower())
    remember(_ports, key, port, _PORT_CACHE_LIMIT)
    return port
