"""Istio's host name rules, in one place.

* In a rule (VirtualService, DestinationRule, Sidecar...), a host with no dot is
  short for ``<name>.<rule namespace>.svc.<domain>``; any name with a dot is used
  as written (``reviews.foo`` is *not* expanded); ``*`` and IPs are kept.
* A client asking for ``http://reviews:9080`` reaches the service the way the
  sidecar's virtual hosts allow: the short name inside the service's namespace,
  ``name.namespace`` and ``name.namespace.svc`` from anywhere, and the FQDN.
"""

from __future__ import annotations

DEFAULT_DOMAIN = "cluster.local"


def expand_host(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Expand a rule's host relative to the rule's namespace (Istio's ResolveShortnameToFQDN)."""
    host = host.lower()
    if host == "*" or "." in host or ":" in host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def kube_service_parts(fqdn: str, domain: str = DEFAULT_DOMAIN) -> tuple[str, str] | None:
    """``(name, namespace)`` when ``fqdn`` is ``name.namespace.svc.<domain>``, else None."""
    suffix = f".svc.{domain}"
    if not fqdn.endswith(suffix):
        return None
    head = fqdn[: -len(suffix)]
    name, dot, namespace = head.rpartition(".")
    if not dot or not name or "." in name or not namespace:
        return None
    return name, namespace


def client_aliases(fqdn: str, client_namespace: str, domain: str = DEFAULT_DOMAIN) -> list[str]:
    """The names a client in ``client_namespace`` may use for the service ``fqdn``."""
    names = [fqdn]
    parts = kube_service_parts(fqdn, domain)
    if parts is not None:
        name, namespace = parts
        names += [f"{name}.{namespace}", f"{name}.{namespace}.svc"]
        if namespace == client_namespace:
            names.append(name)
    return names


def wildcard_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``; ``*`` matches all."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return pattern == host


def join_host_port(host: str, port: int | None) -> str:
    """The reverse of :func:`split_host_port`: ``host:port`` (IPv6 in brackets), or
    ``host`` alone without a port."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(authority: str) -> tuple[str, int | None]:
    """``reviews:9080`` -> ("reviews", 9080); ``[::1]:80`` -> ("::1", 80); no port -> None."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[1:end], authority[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:
        host, port = authority, ""
    return host, int(port) if port.isdigit() else None


def wildcard_specificity(pattern: str) -> int:
    """Longer wildcard suffixes are more specific; exact hosts beat every wildcard."""
    return len(pattern) if pattern.startswith("*") else 10_000 + len(pattern)
