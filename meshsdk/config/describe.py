"""``meshctl describe``: the routing table one client would use for one host.

A pure read of a :class:`Snapshot`, returned as a JSON-ready dict so the CLI's
text and JSON outputs (and later the config service's debug API) say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshsdk.config.resource import Resource
from meshsdk.config.snapshot import ClientView, Service, Snapshot
from meshsdk.routing.split import weight_shares

ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
ISTIO_DEFAULT_RETRY_ATTEMPTS = 2


def describe_host(snapshot: Snapshot, authority: str, namespace: str,
                  labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything that decides where a request to ``authority`` from this client goes."""
    view = snapshot.view(namespace, labels)
    service, fqdn, port = view.resolve(authority)
    vs = view.virtual_service(fqdn)
    dr = view.destination_rule(fqdn, service.namespace if service else None)
    info: dict[str, Any] = {
        "host": authority,
        "client": {"namespace": namespace, "labels": dict(labels or {})},
        "fqdn": fqdn,
        "port": port,
        "service": _service(service) if service else None,
        "virtualService": _where(vs) if vs else None,
        "destinationRule": _where(dr.resource) | {"merged": [_where(r)["ref"] for r in
                                                             dr.sources]} if dr else None,
    }
    if service is None and vs is None:
        mode = snapshot.mesh.outbound_traffic_policy.mode
        info["unknownHost"] = (
            "passed through unchanged (outboundTrafficPolicy ALLOW_ANY)" if mode == "ALLOW_ANY"
            else "refused with 502 (outboundTrafficPolicy REGISTRY_ONLY)")
        info["routes"] = []
        return info
    if vs is not None:
        info["routes"] = [_http_route(view, snapshot, vs, i, r, port)
                          for i, r in enumerate(vs.spec.http or ())]
        if vs.spec.tcp or vs.spec.tls:
            info["otherRoutes"] = {"tcp": len(vs.spec.tcp or ()), "tls": len(vs.spec.tls or ())}
    else:
        info["routes"] = [{
            "name": "(default: no VirtualService)", "match": ["any request"],
            "destinations": [_destination(view, snapshot, fqdn, None, port, 1.0, None)],
            "timeout": None, "retries": _default_retries(snapshot),
        }]
    return info


def _where(r: Resource) -> dict[str, Any]:
    return {"ref": r.ref, "file": r.file, "line": r.line}


def _dump(model: Any) -> Any:
    if model is None:
        return None
    return model.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True,
                            mode="json")


def _service(svc: Service) -> dict[str, Any]:
    return {
        "hostname": svc.hostname,
        "namespace": svc.namespace,
        "resolution": svc.resolution,
        "location": svc.location,
        "ports": [{"number": p.number, "name": p.name, "protocol": p.protocol,
                   **({"targetPort": p.target_port} if p.target_port else {})}
                  for p in svc.ports],
        "exportTo": sorted(svc.export_to),
        "definedBy": _where(svc.resource),
    }


def _default_retries(snapshot: Snapshot) -> dict[str, Any]:
    policy = snapshot.mesh.default_http_retry_policy
    if policy is not None:
        return {"source": "mesh defaultHttpRetryPolicy", **_dump(policy)}
    return {"source": "Istio default", "attempts": ISTIO_DEFAULT_RETRY_ATTEMPTS,
            "retryOn": ISTIO_DEFAULT_RETRY_ON}


def _http_route(view: ClientView, snapshot: Snapshot, vs: Resource, index: int, route: Any,
                port: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": route.name or f"http[{index}]",
        "line": vs.line_of(("spec", "http", index)),
        "match": [_dump(m) for m in route.match] if route.match else ["any request"],
    }
    dests = list(route.route or ())
    shares = weight_shares([d.weight for d in dests]) if dests else ()
    out["destinations"] = []
    for d, share in zip(dests, shares, strict=True):
        dest = d.destination
        dport = dest.port.number if dest.port is not None and dest.port.number else port
        fqdn = _rule_host(view, vs, dest.host)
        out["destinations"].append(
            _destination(view, snapshot, fqdn, dest.subset, dport, share, d.weight))
    for key in ("redirect", "direct_response", "rewrite", "fault", "cors_policy", "headers",
                "mirror", "mirrors", "mirror_percentage", "delegate"):
        value = getattr(route, key, None)
        if value:
            alias = type(route).model_fields[key].alias or key
            out[alias] = [_dump(v) for v in value] if isinstance(value, list) else _dump(value)
    out["timeout"] = _dump_scalar(route, "timeout")
    out["retries"] = ({"source": "route", **_dump(route.retries)} if route.retries is not None
                      else _default_retries(snapshot))
    return out


def _dump_scalar(model: Any, field: str) -> Any:
    data = model.model_dump(by_alias=True, include={field}, mode="json")
    return next(iter(data.values()), None)


def _rule_host(view: ClientView, vs: Resource, host: str) -> str:
    from meshsdk.config.hosts import expand_host

    return expand_host(host, vs.namespace, view.snapshot.domain)


def _destination(view: ClientView, snapshot: Snapshot, fqdn: str, subset: str | None,
                 port: int | None, share: float, weight: int | None) -> dict[str, Any]:
    svc = view.service(fqdn)
    out: dict[str, Any] = {"host": fqdn, "subset": subset, "port": port,
                           "weight": weight, "share": round(share * 100, 2)}
    labels: Mapping[str, str] | None = None
    if subset:
        labels = view.subset_labels(fqdn, subset)
        if labels is None:
            out["problem"] = f"subset {subset!r} is not defined by any visible DestinationRule"
        else:
            out["subsetLabels"] = dict(labels)
    if svc is None:
        out["endpoints"] = []
        out["problem"] = out.get("problem") or "host is not a known service"
    else:
        sport = port if port is not None else (svc.ports[0].number if len(svc.ports) == 1
                                               else None)
        if sport is None:
            out["problem"] = "the service has several ports; the request must name one"
            out["endpoints"] = []
        else:
            eps = snapshot.endpoints(svc, sport, labels)
            out["endpoints"] = [{"address": e.authority, "labels": dict(e.labels),
                                 "weight": e.weight, "serviceAccount": e.service_account,
                                 "source": e.source} for e in eps]
    out["policy"] = _dump(view.policy(fqdn, subset, port))
    return out


def render_text(info: Mapping[str, Any]) -> str:
    """Human-readable form of :func:`describe_host`'s result."""
    lines: list[str] = []
    add = lines.append
    client = info["client"]
    label_text = ",".join(f"{k}={v}" for k, v in client["labels"].items()) or "none"
    add(f"Host:     {info['host']}  ->  {info['fqdn']}"
        + (f" port {info['port']}" if info["port"] else ""))
    add(f"Client:   namespace {client['namespace']}, labels {label_text}")
    svc = info["service"]
    if svc:
        ports = ", ".join(f"{p['number']}/{p['protocol'] or '?'}" for p in svc["ports"])
        d = svc["definedBy"]
        add(f"Service:  {svc['hostname']} ({svc['resolution']}, {svc['location']}), "
            f"ports {ports}  [{d['ref']} at {d['file']}:{d['line']}]")
    else:
        add("Service:  none")
    for key, title in (("virtualService", "VirtualService"),
                       ("destinationRule", "DestinationRule")):
        r = info.get(key)
        add(f"{title + ':':<17}{r['ref']} at {r['file']}:{r['line']}" if r
            else f"{title + ':':<17}none")
    if info.get("unknownHost"):
        add(f"Unknown host: {info['unknownHost']}")
    for route in info["routes"]:
        add("")
        where = f" (line {route['line']})" if route.get("line") else ""
        add(f"Route {route['name']}{where}")
        for m in route["match"]:
            add(f"  match: {_inline(m)}")
        for key in ("redirect", "directResponse", "rewrite", "fault", "mirror", "mirrors",
                    "mirrorPercentage", "headers", "corsPolicy", "delegate"):
            if key in route:
                add(f"  {key}: {_inline(route[key])}")
        if route.get("timeout"):
            add(f"  timeout: {route['timeout']}")
        add(f"  retries: {_inline(route['retries'])}")
        for d in route["destinations"]:
            subset = f" subset {d['subset']}" if d["subset"] else ""
            port = f" port {d['port']}" if d["port"] else ""
            add(f"  -> {d['share']:g}%  {d['host']}{subset}{port}")
            if d.get("problem"):
                add(f"       problem: {d['problem']}")
            for e in d["endpoints"]:
                labels = ",".join(f"{k}={v}" for k, v in e["labels"].items())
                add(f"       endpoint {e['address']}  {labels}  ({e['source']})")
            if d.get("policy"):
                add(f"       policy: {_inline(d['policy'])}")
    return "\n".join(lines) + "\n"


def _inline(value: Any) -> str:
    """Compact one-line rendering of nested config (``a.b=c`` pairs)."""
    if isinstance(value, str):
        return value
    flat: list[str] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            if not v:
                flat.append(f"{prefix}={{}}" if prefix else "{}")
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)
        elif isinstance(v, list):
            flat.append(f"{prefix}=[{', '.join(_inline(x) for x in v)}]")
        else:
            flat.append(f"{prefix}={v}" if prefix else str(v))

    walk("", value)
    return " ".join(flat)
