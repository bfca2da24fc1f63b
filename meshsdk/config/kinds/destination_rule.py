"""DestinationRule: what happens to traffic for a host after routing.

Load balancing, connection pool limits, outlier detection, client TLS, per-port
and per-subset overrides, tunnelling, PROXY protocol and retry budgets, as Istio's
``networking.v1alpha3.DestinationRule`` defines them (deprecated spellings such as
``outlierDetection.consecutiveErrors``, ``consistentHash.minimumRingSize`` and
``loadBalancer.warmupDurationSecs`` are accepted, with a warning). The rules follow
Istio's ``ValidateDestinationRule``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.types import (
    Duration,
    IstioModel,
    PortSelector,
    WorkloadSelector,
    check_duration,
    check_export_to,
    check_fqdn,
    check_labels,
    check_percent,
    check_port,
    check_positive_duration,
    check_selector_labels,
    check_wildcard_domain,
    format_duration,
    is_dns1123_label,
    is_ip,
)

# --- models ------------------------------------------------------------------------


class HTTPCookieAttribute(IstioModel):
    """An extra attribute of a generated session cookie (``SameSite=Strict`` ...)."""

    name: str = ""
    value: str | None = None


class HTTPCookie(IstioModel):
    """Hash on a cookie; Envoy generates it (with ``ttl``) when it is absent."""

    name: str = ""
    path: str | None = None
    ttl: Duration | None = None
    attributes: list[HTTPCookieAttribute] = Field(default_factory=list)


class RingHash(IstioModel):
    """Ring hash: ``minimumRingSize`` virtual nodes (default 1024)."""

    minimum_ring_size: int | None = None


class MagLev(IstioModel):
    """Maglev: a prime ``tableSize`` (default 65537)."""

    table_size: int | None = None


class ConsistentHashLB(IstioModel):
    """Consistent hashing: one hash key, and ring hash or Maglev."""

    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: int | None = None  # deprecated: ringHash.minimumRingSize


class LocalityDistribute(IstioModel):
    """Traffic from locality ``from`` is spread over ``to`` (locality -> weight)."""

    from_: str = Field(default="", alias="from")
    to: dict[str, int] = Field(default_factory=dict)


class LocalityFailover(IstioModel):
    """Traffic from region ``from`` fails over to region ``to``."""

    from_: str = Field(default="", alias="from")
    to: str = ""


class LocalityLoadBalancerSetting(IstioModel):
    """Locality-aware load balancing (overrides the mesh-wide setting entirely)."""

    distribute: list[LocalityDistribute] = Field(default_factory=list)
    failover: list[LocalityFailover] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list)
    enabled: bool | None = None


class WarmupConfiguration(IstioModel):
    """Slow start for new endpoints."""

    duration: Duration | None = None
    minimum_percent: float | None = None
    aggression: float | None = None


class LoadBalancerSettings(IstioModel):
    """``simple`` or ``consistentHash``, plus locality and warmup settings."""

    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN",
                    "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    warmup_duration_secs: Duration | None = None  # deprecated: warmup.duration
    warmup: WarmupConfiguration | None = None


class TcpKeepalive(IstioModel):
    """SO_KEEPALIVE settings (OS defaults when unset)."""

    probes: int | None = None
    time: Duration | None = None
    interval: Duration | None = None


class TCPSettings(IstioModel):
    """Limits common to TCP and HTTP upstream connections."""

    max_connections: int | None = None
    connect_timeout: Duration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


class Http2KeepAlive(IstioModel):
    """HTTP/2 PING keepalive for upstream connections."""

    interval: Duration | None = None
    timeout: Duration | None = None


class HTTPSettings(IstioModel):
    """Limits for HTTP/1.1, HTTP/2 and gRPC upstream connections."""

    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: Duration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = None
    http2_keep_alive: Http2KeepAlive | None = None


class ConnectionPoolSettings(IstioModel):
    """Circuit-breaking limits per upstream host (overflow answers 503, flag UO)."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(IstioModel):
    """Eject hosts that keep failing. ``consecutiveErrors`` is deprecated."""

    consecutive_errors: int | None = None
    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_5xx_errors: int | None = Field(default=None, alias="consecutive5xxErrors")
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


class ClientTLSSettings(IstioModel):
    """TLS the client side originates toward the upstream."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None


class PortTrafficPolicy(IstioModel):
    """A policy for one port; replaces (does not merge with) the top-level one."""

    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TunnelSettings(IstioModel):
    """Tunnel TCP over HTTP CONNECT or POST to ``targetHost:targetPort``."""

    protocol: str | None = None
    target_host: str = ""
    target_port: int | None = None


class ProxyProtocol(IstioModel):
    """Send a PROXY protocol header upstream."""

    version: Literal["V1", "V2"] | None = None


class RetryBudget(IstioModel):
    """Cap concurrent retries at ``percent`` of active requests (min ``minRetryConcurrency``)."""

    percent: float | None = None
    min_retry_concurrency: int | None = None
    budget_interval: Duration | None = None


class TrafficPolicy(IstioModel):
    """Policies for all ports of the destination (or of a subset)."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None


class Subset(IstioModel):
    """A named set of endpoints (by labels) with an optional policy override."""

    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioModel):
    """``spec`` of a DestinationRule."""

    host: str = ""
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None


# --- rules -------------------------------------------------------------------------

_MAGLEV_MAX_TABLE = 5000011
_TOPOLOGY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone",
                    "topology.istio.io/subzone")


def validate_destination_rule(spec: DestinationRuleSpec) -> Iterator[Finding]:
    """Istio's DestinationRule validation, located."""
    if not spec.host:
        yield Finding(("host",), "host is required")
    else:
        yield from check_wildcard_domain(spec.host, ("host",))
    yield from check_traffic_policy(spec.traffic_policy, ("trafficPolicy",))
    names: dict[str, int] = {}
    for i, subset in enumerate(spec.subsets):
        p: Path = ("subsets", i)
        if not subset.name:
            yield Finding((*p, "name"), "subset name is required")
        elif not is_dns1123_label(subset.name):
            yield Finding((*p, "name"), f"must be a DNS-1123 label (letters, digits and '-'), "
                                        f"got {subset.name!r}")
        elif subset.name in names:
            yield Finding((*p, "name"), f"duplicate subset name {subset.name!r} "
                                        f"(also subsets[{names[subset.name]}])")
        else:
            names[subset.name] = i
        yield from check_labels(subset.labels, (*p, "labels"))
        yield from check_traffic_policy(subset.traffic_policy, (*p, "trafficPolicy"))
    yield from check_export_to(spec.export_to, ("exportTo",))
    if spec.workload_selector is not None:
        yield from check_selector_labels(spec.workload_selector, ("workloadSelector",))
        if not spec.workload_selector.match_labels:
            yield Finding(("workloadSelector",), "workloadSelector has no matchLabels: it "
                                                 "selects every workload in the namespace",
                          "warning")
        if "*" in spec.export_to or len(set(spec.export_to)) > 1:
            yield Finding(("exportTo",), "a DestinationRule with a workloadSelector can only be "
                                         "exported to its own namespace ('.'), got "
                                         f"{', '.join(spec.export_to)}")


def check_traffic_policy(tp: TrafficPolicy | None, p: Path) -> Iterator[Finding]:
    """A traffic policy (top level or a subset's)."""
    if tp is None:
        return
    if (tp.load_balancer is None and tp.connection_pool is None and tp.outlier_detection is None
            and tp.tls is None and not tp.port_level_settings and tp.tunnel is None
            and tp.proxy_protocol is None and tp.retry_budget is None):
        yield Finding(p, "trafficPolicy must set at least one field")
        return
    if tp.tunnel is not None and tp.proxy_protocol is not None:
        yield Finding((*p, "proxyProtocol"), "cannot be used with tunnel")
    yield from check_outlier_detection(tp.outlier_detection, (*p, "outlierDetection"))
    yield from check_connection_pool(tp.connection_pool, (*p, "connectionPool"))
    yield from check_load_balancer(tp.load_balancer, tp.outlier_detection, (*p, "loadBalancer"))
    yield from check_client_tls(tp.tls, (*p, "tls"))
    for i, pl in enumerate(tp.port_level_settings):
        pp = (*p, "portLevelSettings", i)
        if pl.port is None:
            yield Finding(pp, "port is required")
        else:
            yield from check_port(pl.port.number, (*pp, "port", "number"))
        if (pl.load_balancer is None and pl.connection_pool is None
                and pl.outlier_detection is None and pl.tls is None):
            yield Finding(pp, "must set at least one of loadBalancer, connectionPool, "
                              "outlierDetection or tls")
            continue
        yield from check_outlier_detection(pl.outlier_detection, (*pp, "outlierDetection"))
        yield from check_connection_pool(pl.connection_pool, (*pp, "connectionPool"))
        yield from check_load_balancer(pl.load_balancer, pl.outlier_detection,
                                       (*pp, "loadBalancer"))
        yield from check_client_tls(pl.tls, (*pp, "tls"))
    yield from _check_tunnel(tp.tunnel, (*p, "tunnel"))
    yield from _check_retry_budget(tp.retry_budget, (*p, "retryBudget"))


def _non_negative(value: int | None, path: Path) -> Iterator[Finding]:
    if value is not None and value < 0:
        yield Finding(path, f"must be >= 0, got {value}")


def _percent_int(value: int | None, path: Path) -> Iterator[Finding]:
    if value is not None and not 0 <= value <= 100:
        yield Finding(path, f"must be in [0, 100], got {value}")


def check_outlier_detection(o: OutlierDetection | None, p: Path) -> Iterator[Finding]:
    """Outlier detection: durations >= 1ms, counts >= 0, percentages in [0, 100]."""
    if o is None:
        return
    yield from check_duration(o.base_ejection_time, (*p, "baseEjectionTime"))
    yield from check_duration(o.interval, (*p, "interval"))
    if o.consecutive_errors is not None:
        yield from _non_negative(o.consecutive_errors, (*p, "consecutiveErrors"))
        yield Finding((*p, "consecutiveErrors"), "is deprecated; use consecutive5xxErrors or "
                                                 "consecutiveGatewayErrors", "warning")
    for field, value in (("consecutive5xxErrors", o.consecutive_5xx_errors),
                         ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
                         ("consecutiveLocalOriginFailures", o.consecutive_local_origin_failures)):
        yield from _non_negative(value, (*p, field))
    if (o.consecutive_local_origin_failures or 0) > 0 and not o.split_external_local_origin_errors:
        yield Finding((*p, "consecutiveLocalOriginFailures"),
                      "has no effect unless splitExternalLocalOriginErrors is true")
    yield from _percent_int(o.max_ejection_percent, (*p, "maxEjectionPercent"))
    yield from _percent_int(o.min_health_percent, (*p, "minHealthPercent"))


def check_connection_pool(cp: ConnectionPoolSettings | None, p: Path) -> Iterator[Finding]:
    """Connection pool limits: counts >= 0, durations >= 1ms."""
    if cp is None:
        return
    if cp.http is None and cp.tcp is None:
        yield Finding(p, "connectionPool must set tcp and/or http")
        return
    if (h := cp.http) is not None:
        hp = (*p, "http")
        for field, value in (("http1MaxPendingRequests", h.http1_max_pending_requests),
                             ("http2MaxRequests", h.http2_max_requests),
                             ("maxRequestsPerConnection", h.max_requests_per_connection),
                             ("maxRetries", h.max_retries),
                             ("maxConcurrentStreams", h.max_concurrent_streams)):
            yield from _non_negative(value, (*hp, field))
        yield from check_duration(h.idle_timeout, (*hp, "idleTimeout"))
        if h.h2_upgrade_policy == "UPGRADE" and h.use_client_protocol:
            yield Finding((*hp, "useClientProtocol"),
                          "must not be true when h2UpgradePolicy is UPGRADE")
        if h.http2_keep_alive is not None:
            yield from check_duration(h.http2_keep_alive.interval,
                                      (*hp, "http2KeepAlive", "interval"))
            yield from check_duration(h.http2_keep_alive.timeout,
                                      (*hp, "http2KeepAlive", "timeout"))
    if (t := cp.tcp) is not None:
        tp = (*p, "tcp")
        yield from _non_negative(t.max_connections, (*tp, "maxConnections"))
        yield from check_duration(t.connect_timeout, (*tp, "connectTimeout"))
        yield from check_duration(t.max_connection_duration, (*tp, "maxConnectionDuration"))
        if t.idle_timeout:  # 0s disables the idle timeout
            yield from check_duration(t.idle_timeout, (*tp, "idleTimeout"))
        if (ka := t.tcp_keepalive) is not None:
            kp = (*tp, "tcpKeepalive")
            yield from _non_negative(ka.probes, (*kp, "probes"))
            yield from check_duration(ka.time, (*kp, "time"))
            yield from check_duration(ka.interval, (*kp, "interval"))


def _is_prime(x: int) -> bool:
    """Envoy's primality test for Maglev table sizes."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % f for f in range(3, math.isqrt(x) + 1, 2))


def check_load_balancer(lb: LoadBalancerSettings | None, outlier: OutlierDetection | None,
                        p: Path) -> Iterator[Finding]:
    """Load balancer: one algorithm; consistent hash needs exactly one key."""
    if lb is None:
        return
    if lb.simple is not None and lb.consistent_hash is not None:
        yield Finding((*p, "consistentHash"), "cannot be used with simple; set one")
    if (ch := lb.consistent_hash) is not None:
        yield from _check_consistent_hash(ch, (*p, "consistentHash"))
    yield from _check_locality(lb.locality_lb_setting, outlier, (*p, "localityLbSetting"))
    if (w := lb.warmup) is not None:
        wp = (*p, "warmup")
        if w.duration is None:
            yield Finding(wp, "duration is required")
        else:
            yield from check_duration(w.duration, (*wp, "duration"))
        if w.minimum_percent is not None:
            yield from check_percent(w.minimum_percent, (*wp, "minimumPercent"))
        if w.aggression is not None and w.aggression < 1:
            yield Finding((*wp, "aggression"), f"must be >= 1, got {w.aggression:g}")
    if lb.warmup_duration_secs is not None:
        yield from check_duration(lb.warmup_duration_secs, (*p, "warmupDurationSecs"))
        yield Finding((*p, "warmupDurationSecs"), "is deprecated; use warmup.duration",
                      "warning")


def _check_consistent_hash(ch: ConsistentHashLB, p: Path) -> Iterator[Finding]:
    keys = [n for n, v in (("httpHeaderName", ch.http_header_name),
                           ("httpCookie", ch.http_cookie), ("useSourceIp", ch.use_source_ip),
                           ("httpQueryParameterName", ch.http_query_parameter_name))
            if v is not None]
    if len(keys) != 1:
        got = ", ".join(keys) if keys else "none"
        yield Finding(p, "must set exactly one of httpHeaderName, httpCookie, useSourceIp or "
                         f"httpQueryParameterName, got {got}")
    if (cookie := ch.http_cookie) is not None:
        cp = (*p, "httpCookie")
        if not cookie.name:
            yield Finding(cp, "cookie name is required")
        yield from check_positive_duration(cookie.ttl, (*cp, "ttl"), allow_zero=True)
        for i, attr in enumerate(cookie.attributes):
            if not attr.name:
                yield Finding((*cp, "attributes", i), "attribute name is required")
    if ch.minimum_ring_size is not None:
        yield from _non_negative(ch.minimum_ring_size, (*p, "minimumRingSize"))
        yield Finding((*p, "minimumRingSize"), "is deprecated; use ringHash.minimumRingSize",
                      "warning")
        if ch.ring_hash is not None or ch.maglev is not None:
            yield Finding((*p, "minimumRingSize"), "cannot be used with ringHash or maglev")
    if ch.ring_hash is not None and ch.maglev is not None:
        yield Finding((*p, "maglev"), "cannot be used with ringHash; set one")
    if ch.ring_hash is not None:
        yield from _non_negative(ch.ring_hash.minimum_ring_size,
                                 (*p, "ringHash", "minimumRingSize"))
    if ch.maglev is not None:
        mp = (*p, "maglev", "tableSize")
        size = ch.maglev.table_size
        if not size:
            yield Finding((*p, "maglev"), "tableSize is required")
        elif size < 0 or size >= _MAGLEV_MAX_TABLE:
            yield Finding(mp, f"must be less than {_MAGLEV_MAX_TABLE}, got {size}")
        elif not _is_prime(size):
            yield Finding(mp, f"must be a prime number, got {size}")


def _check_locality(lb: LocalityLoadBalancerSetting | None, outlier: OutlierDetection | None,
                    p: Path) -> Iterator[Finding]:
    if lb is None:
        return
    if lb.distribute and lb.failover:
        yield Finding((*p, "failover"), "cannot be used with distribute; set one")
        return
    if lb.failover:
        for i, label in enumerate(lb.failover_priority):
            if label in _TOPOLOGY_LABELS:
                yield Finding((*p, "failoverPriority", i),
                              f"cannot use the topology label {label!r} together with failover")
                return
    for i, d in enumerate(lb.distribute):
        dp = (*p, "distribute", i)
        total = 0
        for loc, weight in d.to.items():
            if not 1 <= weight <= 100:
                yield Finding((*dp, "to", loc), f"locality weight must be in [1, 100], "
                                                f"got {weight}")
                return
            total += weight
        if total != 100:
            yield Finding((*dp, "to"), f"locality weights must add up to 100, got {total}")
            return
        if (err := _localities_error(list(d.to))) is not None:
            yield Finding((*dp, "to"), err)
    if (err := _localities_error([d.from_ for d in lb.distribute])) is not None:
        yield Finding((*p, "distribute"), err)
    if (lb.failover or lb.failover_priority) and outlier is None:
        yield Finding(p, "failover needs outlierDetection in the same policy to detect "
                         "unhealthy endpoints", "warning")
    for i, f in enumerate(lb.failover):
        fp = (*p, "failover", i)
        if f.from_ == f.to:
            yield Finding(fp, f"from and to must be different regions, got {f.to!r} twice")
        if "/" in f.from_ or "/" in f.to:
            yield Finding(fp, "failover takes regions only (no '/')")
        if "*" in f.from_ or "*" in f.to:
            yield Finding(fp, "failover regions must not contain '*'")


def _localities_error(localities: list[str]) -> str | None:
    """Istio's validateLocalities: region[/zone[/subzone]], one trailing '*', no overlaps."""
    seen: dict[str, dict[str, set[str]]] = {}
    for loc in localities:
        stars = loc.count("*")
        if stars and (stars > 1 or not loc.endswith("*")):
            return f"locality {loc!r}: at most one '*', and only at the end"
        if "*" in seen:
            return f"locality {loc!r} overlaps an earlier one"
        items = loc.split("/", 2)
        if any(not item for item in items):
            return f"locality {loc!r} has an empty region, zone or subzone"
        region = items[0]
        zones = seen.get(region)
        if len(items) == 1:
            if zones is not None:
                return f"locality {loc!r} overlaps an earlier one"
            seen[region] = {"*": {"*"}}
            continue
        zone = items[1]
        if zones is not None and ("*" in zones or (len(items) == 2 and zone in zones)):
            return f"locality {loc!r} overlaps an earlier one"
        zones = seen.setdefault(region, {})
        if len(items) == 2:
            zones[zone] = {"*"}
            continue
        subzones = zones.setdefault(zone, set())
        if "*" in subzones or items[2] in subzones:
            return f"locality {loc!r} overlaps an earlier one"
        subzones.add(items[2])
    return None


def check_client_tls(tls: ClientTLSSettings | None, p: Path) -> Iterator[Finding]:
    """Client TLS: what each mode needs and what it must not have."""
    if tls is None:
        return
    mode = tls.mode or "DISABLE"
    if tls.insecure_skip_verify:
        banned: tuple[tuple[str, object], ...] = ()
        if mode == "SIMPLE":
            banned = (("caCertificates", tls.ca_certificates),
                      ("credentialName", tls.credential_name),
                      ("subjectAltNames", tls.subject_alt_names or None))
        elif mode == "MUTUAL":
            banned = (("caCertificates", tls.ca_certificates),
                      ("subjectAltNames", tls.subject_alt_names or None))
        for field, value in banned:
            if value:
                yield Finding((*p, field), "cannot be used with insecureSkipVerify: true")
    if mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
        for field, value in (("clientCertificate", tls.client_certificate),
                             ("privateKey", tls.private_key),
                             ("caCertificates", tls.ca_certificates), ("caCrl", tls.ca_crl)):
            if value:
                yield Finding((*p, field), "cannot be used with credentialName: the secret "
                                           "holds the certificates")
        return
    if mode == "MUTUAL":
        if not tls.client_certificate:
            yield Finding(p, "MUTUAL needs clientCertificate and privateKey, or credentialName; "
                             "clientCertificate is missing")
        if not tls.private_key:
            yield Finding(p, "MUTUAL needs clientCertificate and privateKey, or credentialName; "
                             "privateKey is missing")
    if mode == "ISTIO_MUTUAL":
        for field, value in (("clientCertificate", tls.client_certificate),
                             ("privateKey", tls.private_key),
                             ("caCertificates", tls.ca_certificates),
                             ("credentialName", tls.credential_name), ("caCrl", tls.ca_crl)):
            if value:
                yield Finding((*p, field), f"must be empty with mode ISTIO_MUTUAL, which uses "
                                           f"the mesh's own certificates; got {value!r}")


def _check_tunnel(t: TunnelSettings | None, p: Path) -> Iterator[Finding]:
    if t is None:
        return
    if t.protocol and t.protocol not in ("CONNECT", "POST"):
        yield Finding((*p, "protocol"), f"must be 'CONNECT' or 'POST', got {t.protocol!r}")
    if not t.target_host:
        yield Finding(p, "targetHost is required")
    elif not is_ip(t.target_host):
        found = list(check_fqdn(t.target_host, (*p, "targetHost")))
        if found:
            yield Finding((*p, "targetHost"),
                          f"must be a DNS name or an IP address, got {t.target_host!r}")
    if t.target_port is None:
        yield Finding(p, "targetPort is required")
    else:
        yield from check_port(t.target_port, (*p, "targetPort"))


def _check_retry_budget(rb: RetryBudget | None, p: Path) -> Iterator[Finding]:
    if rb is None:
        return
    if rb.percent is not None:
        yield from check_percent(rb.percent, (*p, "percent"))
    yield from _non_negative(rb.min_retry_concurrency, (*p, "minRetryConcurrency"))
    if rb.budget_interval is not None:
        if rb.budget_interval < 0:
            yield Finding((*p, "budgetInterval"),
                          f"duration must be >= 0, got {format_duration(rb.budget_interval)}")
        elif rb.budget_interval:
            yield from check_duration(rb.budget_interval, (*p, "budgetInterval"))


KIND = KindInfo("DestinationRule", NETWORKING, NETWORKING_VERSIONS, DestinationRuleSpec,
                rules=validate_destination_rule)
