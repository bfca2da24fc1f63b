"""MeshConfig: the mesh-wide options (the ``mesh`` key of Istio's ``istio`` ConfigMap).

The model follows Istio's ``istio.mesh.v1alpha1.MeshConfig`` with Istio's defaults
(``mesh.DefaultMeshConfig()``): what an empty mesh config means in Istio is what
``MeshConfig()`` means here. Every documented field is accepted, even the many
that only tune Envoy, so an existing mesh config loads unchanged; a field Istio
does not document is an error (Istio itself drops unknown fields silently, the
most common way a mesh setting "does nothing"). A few fields Istio removed long
ago are still accepted, with a warning, because old installs still carry them.

``defaultConfig`` (ProxyConfig) models the fields users commonly set and accepts
any other key: ProxyConfig is large, Envoy-specific and grows every release.

:func:`validate_mesh_config` gives the semantic checks, with paths relative to the
mesh document root (``("extensionProviders", 0, "envoyExtAuthzHttp", "port")``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import ConfigDict, Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.destination_rule import LocalityLoadBalancerSetting
from meshsdk.config.types import (
    Duration,
    IstioModel,
    check_export_to,
    check_header_name,
    check_host,
    check_percent,
    check_port,
    check_positive_duration,
    format_duration,
    is_dns1123_label,
    is_ip,
)

# --- small shared pieces -------------------------------------------------------------------


class LabelSelectorRequirement(IstioModel):
    """Kubernetes ``matchExpressions[]`` entry."""

    key: str = ""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = "In"
    values: list[str] = Field(default_factory=list)


class KubernetesLabelSelector(IstioModel):
    """Kubernetes ``LabelSelector`` (``discoverySelectors``, ``serviceScopeConfigs``)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class TcpKeepalive(IstioModel):
    probes: int | None = None
    time: Duration | None = None
    interval: Duration | None = None


class MeshHttpRetry(IstioModel):
    """``defaultHttpRetryPolicy``: the HTTPRetry used by routes without ``retries``.

    A local copy of the VirtualService HTTPRetry shape (the networking kinds own
    theirs). As in protobuf, an omitted ``attempts`` is 0, which turns retries off
    mesh-wide. Istio ignores ``perTryTimeout`` here (it is per route only).
    """

    attempts: int = 0
    per_try_timeout: Duration | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: Duration | None = None


# MeshConfig's localityLbSetting is the same message as a DestinationRule's.
LocalityLbSetting = LocalityLoadBalancerSetting


# --- extension providers -----------------------------------------------------------------


class HttpHeader(IstioModel):
    """A header sent to a provider: a fixed ``value`` or one read from ``envName``."""

    name: str = ""
    value: str | None = None
    env_name: str | None = None


class HttpService(IstioModel):
    """``opentelemetry.http``: export OTLP over HTTP to ``path`` (default timeout 3s)."""

    path: str = ""
    timeout: Duration | None = None
    headers: list[HttpHeader] = Field(default_factory=list)


class GrpcService(IstioModel):
    """``opentelemetry.grpc``: gRPC export settings."""

    timeout: Duration | None = None
    initial_metadata: list[HttpHeader] = Field(default_factory=list)


class EmptyMessage(IstioModel):
    """A provider or detector that takes no settings (``prometheus: {}``)."""


class ResourceDetectors(IstioModel):
    environment: EmptyMessage | None = None
    dynatrace: EmptyMessage | None = None


class ExtAuthzRequestBody(IstioModel):
    """``includeRequestBodyInCheck``: buffer (part of) the body for the authorizer."""

    max_request_bytes: int | None = None
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


class EnvoyExtAuthzHttpProvider(IstioModel):
    """External authorization over HTTP (Envoy's ext_authz); default timeout 600s."""

    service: str = ""
    port: int = 0
    timeout: Duration | None = None
    path_prefix: str | None = None
    fail_open: bool = False
    status_on_error: str | None = None
    include_headers_in_check: list[str] = []  # deprecated: use includeRequestHeadersInCheck
    include_request_headers_in_check: list[str] = Field(default_factory=list)
    include_additional_headers_in_check: dict[str, str] = Field(default_factory=dict)
    include_request_body_in_check: ExtAuthzRequestBody | None = None
    headers_to_upstream_on_allow: list[str] = Field(default_factory=list)
    headers_to_downstream_on_deny: list[str] = Field(default_factory=list)
    headers_to_downstream_on_allow: list[str] = Field(default_factory=list)


class EnvoyExtAuthzGrpcProvider(IstioModel):
    """External authorization over gRPC (Envoy's ext_authz); default timeout 600s."""

    service: str = ""
    port: int = 0
    timeout: Duration | None = None
    fail_open: bool = False
    status_on_error: str | None = None
    include_request_body_in_check: ExtAuthzRequestBody | None = None


class ZipkinTracingProvider(IstioModel):
    service: str = ""
    port: int = 0
    max_tag_length: int | None = None
    enable_64bit_trace_id: bool = Field(default=False, alias="enable64bitTraceId")
    path: str | None = None
    trace_context_option: Literal["USE_B3", "USE_B3_WITH_W3C_PROPAGATION"] | None = None
    timeout: Duration | None = None
    headers: list[HttpHeader] = Field(default_factory=list)


class LightstepTracingProvider(IstioModel):
    """Deprecated in Istio (use opentelemetry); still accepted."""

    service: str = ""
    port: int = 0
    access_token: str = ""
    max_tag_length: int | None = None


class DatadogTracingProvider(IstioModel):
    service: str = ""
    port: int = 0
    max_tag_length: int | None = None


class StackdriverLogging(IstioModel):
    labels: dict[str, str] = Field(default_factory=dict)


class StackdriverProvider(IstioModel):
    debug: bool = False
    max_number_of_attributes: int | None = None
    max_number_of_annotations: int | None = None
    max_number_of_message_events: int | None = None
    max_tag_length: int | None = None
    logging: StackdriverLogging | None = None


class OpenCensusAgentTracingProvider(IstioModel):
    """Deprecated in Istio (OpenCensus is retired); still accepted."""

    service: str = ""
    port: int = 0
    context: list[Literal["W3C_TRACE_CONTEXT", "GRPC_BIN", "CLOUD_TRACE_CONTEXT", "B3"]] = Field(
        default_factory=list)
    max_tag_length: int | None = None


class SkyWalkingTracingProvider(IstioModel):
    service: str = ""
    port: int = 0
    access_token: str | None = None


class OpenTelemetryTracingProvider(IstioModel):
    """OTLP traces to ``service:port``, over gRPC unless ``http`` is set.

    ``dynatraceSampler`` is accepted as written and not interpreted.
    """

    service: str = ""
    port: int = 0
    max_tag_length: int | None = None
    http: HttpService | None = None
    grpc: GrpcService | None = None
    resource_detectors: ResourceDetectors | None = None
    dynatrace_sampler: dict[str, Any] | None = None


class AccessLogFormat(IstioModel):
    """Exactly one of ``text`` (Envoy format string) or ``labels`` (JSON; ``{}`` = default)."""

    text: str | None = None
    labels: dict[str, Any] | None = None


class EnvoyFileAccessLogProvider(IstioModel):
    """Access log to a file; an empty path means ``/dev/stdout``."""

    path: str | None = None
    log_format: AccessLogFormat | None = None


class EnvoyHttpGrpcV3LogProvider(IstioModel):
    service: str = ""
    port: int = 0
    log_name: str | None = None
    filter_state_objects_to_log: list[str] = Field(default_factory=list)
    additional_request_headers_to_log: list[str] = Field(default_factory=list)
    additional_response_headers_to_log: list[str] = Field(default_factory=list)
    additional_response_trailers_to_log: list[str] = Field(default_factory=list)


class EnvoyTcpGrpcV3LogProvider(IstioModel):
    service: str = ""
    port: int = 0
    log_name: str | None = None
    filter_state_objects_to_log: list[str] = Field(default_factory=list)


class OtelLogFormat(IstioModel):
    text: str | None = None
    labels: dict[str, Any] | None = None


class EnvoyOpenTelemetryLogProvider(IstioModel):
    service: str = ""
    port: int = 0
    log_name: str | None = None
    log_format: OtelLogFormat | None = None


PROVIDER_TYPES = (
    "envoy_ext_authz_http", "envoy_ext_authz_grpc", "zipkin", "lightstep", "datadog",
    "stackdriver", "opencensus", "skywalking", "opentelemetry", "prometheus",
    "envoy_file_access_log", "envoy_http_als", "envoy_tcp_als", "envoy_otel_als",
)
TRACING_PROVIDER_TYPES = frozenset({"zipkin", "lightstep", "datadog", "stackdriver",
                                    "opencensus", "skywalking", "opentelemetry"})
METRICS_PROVIDER_TYPES = frozenset({"prometheus", "stackdriver"})
ACCESS_LOG_PROVIDER_TYPES = frozenset({"envoy_file_access_log", "envoy_http_als",
                                       "envoy_tcp_als", "envoy_otel_als", "stackdriver"})
AUTHZ_PROVIDER_TYPES = frozenset({"envoy_ext_authz_http", "envoy_ext_authz_grpc"})


class ExtensionProvider(IstioModel):
    """``extensionProviders[]``: a unique ``name`` and exactly one provider type."""

    name: str = ""
    envoy_ext_authz_http: EnvoyExtAuthzHttpProvider | None = None
    envoy_ext_authz_grpc: EnvoyExtAuthzGrpcProvider | None = None
    zipkin: ZipkinTracingProvider | None = None
    lightstep: LightstepTracingProvider | None = None
    datadog: DatadogTracingProvider | None = None
    stackdriver: StackdriverProvider | None = None
    opencensus: OpenCensusAgentTracingProvider | None = None
    skywalking: SkyWalkingTracingProvider | None = None
    opentelemetry: OpenTelemetryTracingProvider | None = None
    prometheus: EmptyMessage | None = None
    envoy_file_access_log: EnvoyFileAccessLogProvider | None = None
    envoy_http_als: EnvoyHttpGrpcV3LogProvider | None = None
    envoy_tcp_als: EnvoyTcpGrpcV3LogProvider | None = None
    envoy_otel_als: EnvoyOpenTelemetryLogProvider | None = None

    def provider_types(self) -> list[str]:
        """Python names of the provider types set (exactly one in a valid provider)."""
        return [t for t in PROVIDER_TYPES if getattr(self, t) is not None]

    @property
    def provider_type(self) -> str | None:
        """The provider type (``"zipkin"``, ``"envoy_ext_authz_http"`` ...), None if not one."""
        types = self.provider_types()
        return types[0] if len(types) == 1 else None


DEFAULT_EXTENSION_PROVIDERS: tuple[ExtensionProvider, ...] = (
    ExtensionProvider(name="prometheus", prometheus=EmptyMessage()),
    ExtensionProvider(name="envoy",
                      envoy_file_access_log=EnvoyFileAccessLogProvider(path="/dev/stdout")),
)
"""Providers Istio defines even when the mesh config lists none (a listed provider
with the same name replaces the default one)."""


class DefaultProviders(IstioModel):
    """``defaultProviders``: provider names used when a Telemetry resource names none."""

    tracing: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    access_logging: list[str] = Field(default_factory=list)


# --- ProxyConfig (defaultConfig) ----------------------------------------------------------


class TracingLiteral(IstioModel):
    value: str = ""


class TracingEnvironment(IstioModel):
    name: str = ""
    default_value: str | None = None


class TracingRequestHeader(IstioModel):
    name: str = ""
    default_value: str | None = None


class TracingCustomTag(IstioModel):
    literal: TracingLiteral | None = None
    environment: TracingEnvironment | None = None
    header: TracingRequestHeader | None = None


class TracingZipkin(IstioModel):
    address: str = ""


class TracingLightstep(IstioModel):
    address: str = ""
    access_token: str = ""


class TracingDatadog(IstioModel):
    address: str = ""


class TracingStackdriver(IstioModel):
    debug: bool = False
    max_number_of_attributes: int | None = None
    max_number_of_annotations: int | None = None
    max_number_of_message_events: int | None = None


class TracingOpenCensusAgent(IstioModel):
    address: str = ""
    context: list[Literal["W3C_TRACE_CONTEXT", "GRPC_BIN", "CLOUD_TRACE_CONTEXT", "B3"]] = Field(
        default_factory=list)


class ProxyTracing(IstioModel):
    """``defaultConfig.tracing``: the proxy's legacy tracer settings.

    ``sampling`` is a percentage in [0, 100]; Istio's default is 1%. Setting
    ``tracing`` replaces the whole default (the zipkin tracer included), as in Istio.
    ``tlsSettings`` (a DestinationRule ClientTLSSettings) is kept as written.
    """

    zipkin: TracingZipkin | None = None
    lightstep: TracingLightstep | None = None
    datadog: TracingDatadog | None = None
    stackdriver: TracingStackdriver | None = None
    open_census_agent: TracingOpenCensusAgent | None = None
    custom_tags: dict[str, TracingCustomTag] = Field(default_factory=dict)
    max_path_tag_length: int | None = None
    sampling: float = 1.0
    tls_settings: dict[str, Any] | None = None


class RemoteService(IstioModel):
    address: str = ""
    tls_settings: dict[str, Any] | None = None
    tcp_keepalive: TcpKeepalive | None = None


class ProxyStatsMatcher(IstioModel):
    inclusion_prefixes: list[str] = Field(default_factory=list)
    inclusion_suffixes: list[str] = Field(default_factory=list)
    inclusion_regexps: list[str] = Field(default_factory=list)


class Topology(IstioModel):
    num_trusted_proxies: int | None = None
    forward_client_cert_details: Literal[
        "UNDEFINED", "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET",
        "ALWAYS_FORWARD_ONLY",
    ] | None = None
    proxy_protocol: dict[str, Any] | None = None


class ProxyImage(IstioModel):
    image_type: str | None = None


def _default_proxy_tracing() -> ProxyTracing:
    return ProxyTracing(zipkin=TracingZipkin(address="zipkin.istio-system:9411"))


class ProxyConfig(IstioModel):
    """``defaultConfig``: settings of every proxy (Istio's ProxyConfig), with Istio's defaults.

    Only the fields people commonly set are modelled; any other ProxyConfig key is
    accepted as written (``model_extra``) because ProxyConfig is large,
    Envoy-specific and grows every Istio release. This is the only place in the
    mesh config where unknown keys are allowed.
    """

    model_config = ConfigDict(extra="allow")

    config_path: str = "./etc/istio/proxy"
    binary_path: str = "/usr/local/bin/envoy"
    service_cluster: str | None = "istio-proxy"
    tracing_service_name: Literal[
        "APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE",
    ] | None = None
    drain_duration: Duration = 45.0
    parent_shutdown_duration: Duration | None = 60.0  # deprecated in Istio
    termination_drain_duration: Duration = 5.0
    discovery_address: str = "istiod.istio-system.svc:15012"
    zipkin_address: str | None = None  # deprecated: use tracing.zipkin
    statsd_udp_address: str | None = None
    envoy_metrics_service_address: str | None = None  # deprecated
    proxy_admin_port: int = 15000
    status_port: int = 15020
    control_plane_auth_policy: Literal["NONE", "MUTUAL_TLS", "INHERIT"] = "MUTUAL_TLS"
    custom_config_file: str | None = None
    stat_name_length: int = 189
    concurrency: int | None = 2
    proxy_bootstrap_template_path: str | None = None
    interception_mode: Literal["REDIRECT", "TPROXY", "NONE"] = "REDIRECT"
    tracing: ProxyTracing | None = Field(default_factory=_default_proxy_tracing)
    envoy_access_log_service: RemoteService | None = None
    envoy_metrics_service: RemoteService | None = None
    proxy_metadata: dict[str, str] = Field(default_factory=dict)
    runtime_values: dict[str, str] = Field(default_factory=dict)
    extra_stat_tags: list[str] = Field(default_factory=list)
    gateway_topology: Topology | None = None
    mesh_id: str | None = None
    proxy_stats_matcher: ProxyStatsMatcher | None = None
    hold_application_until_proxy_starts: bool = False
    ca_certificates_pem: list[str] = Field(default_factory=list)
    image: ProxyImage | None = None
    readiness_probe: dict[str, Any] | None = None
    private_key_provider: dict[str, Any] | None = None
    proxy_headers: dict[str, Any] | None = None


# --- the rest of MeshConfig -----------------------------------------------------------------


class OutboundTrafficPolicy(IstioModel):
    """``outboundTrafficPolicy``. An object without ``mode`` means REGISTRY_ONLY in Istio
    (the enum's zero value), not the mesh default ALLOW_ANY; the validator warns."""

    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "REGISTRY_ONLY"


class InboundTrafficPolicy(IstioModel):
    mode: Literal["PASSTHROUGH", "LOCALHOST"] = "PASSTHROUGH"


class ConfigSource(IstioModel):
    address: str = ""
    tls_settings: dict[str, Any] | None = None
    subscribed_resources: list[Literal["SERVICE_REGISTRY"]] = Field(default_factory=list)


class CertificateData(IstioModel):
    """``caCertificates[]``: one of ``pem`` / ``spiffeBundleUrl``, optionally scoped."""

    pem: str | None = None
    spiffe_bundle_url: str | None = None
    cert_signers: list[str] = Field(default_factory=list)
    trust_domains: list[str] = Field(default_factory=list)


class Certificate(IstioModel):
    """Deprecated ``certificates[]`` entry."""

    secret_name: str | None = None
    dns_names: list[str] = Field(default_factory=list)


class ServiceSettingsValues(IstioModel):
    cluster_local: bool = False


class ServiceSettings(IstioModel):
    settings: ServiceSettingsValues | None = None
    hosts: list[str] = Field(default_factory=list)


class CaSettings(IstioModel):
    """``ca``: an external CA istiod forwards CSRs to."""

    address: str = ""
    tls_settings: dict[str, Any] | None = None
    request_timeout: Duration | None = None
    istiod_side: bool = False


class ProxyPathNormalization(IstioModel):
    normalization: Literal["DEFAULT", "NONE", "BASE", "MERGE_SLASHES",
                           "DECODE_AND_MERGE_SLASHES"] = "DEFAULT"


class TlsConfig(IstioModel):
    """``meshMTLS`` / ``tlsDefaults``."""

    min_protocol_version: Literal["TLS_AUTO", "TLSV1_2", "TLSV1_3"] | None = None
    ecdh_curves: list[str] = Field(default_factory=list)
    cipher_suites: list[str] = Field(default_factory=list)


class ServiceScopeConfig(IstioModel):
    """``serviceScopeConfigs[]`` (ambient multicluster): which services are LOCAL or GLOBAL."""

    namespace_selector: KubernetesLabelSelector | None = None
    services_selector: KubernetesLabelSelector | None = None
    scope: Literal["LOCAL", "GLOBAL"] = "LOCAL"


REMOVED_MESH_FIELDS: dict[str, str] = {
    "thrift_config": "thriftConfig",
    "mixer_check_server": "mixerCheckServer",
    "mixer_report_server": "mixerReportServer",
    "mixer_address": "mixerAddress",
    "disable_policy_checks": "disablePolicyChecks",
    "disable_mixer_http_reports": "disableMixerHttpReports",
    "policy_check_fail_open": "policyCheckFailOpen",
    "sidecar_to_telemetry_session_affinity": "sidecarToTelemetrySessionAffinity",
    "auth_policy": "authPolicy",
    "rds_refresh_delay": "rdsRefreshDelay",
    "enable_client_side_policy_check": "enableClientSidePolicyCheck",
    "sds_uds_path": "sdsUdsPath",
    "sds_refresh_delay": "sdsRefreshDelay",
    "enable_sds_token_mount": "enableSdsTokenMount",
    "sds_use_k8s_sa_jwt": "sdsUseK8sSaJwt",
    "termination_drain_duration": "terminationDrainDuration",
}
"""Fields Istio removed from MeshConfig (python name -> wire name): accepted, warned, ignored."""


class MeshConfig(IstioModel):
    """Istio's MeshConfig with Istio's defaults. Unknown top-level fields are errors."""

    # Proxy ports and connections.
    proxy_listen_port: int = 15001
    proxy_inbound_listen_port: int = 15006
    proxy_http_port: int | None = None
    connect_timeout: Duration = 10.0
    protocol_detection_timeout: Duration = 0.0
    tcp_keepalive: TcpKeepalive | None = None
    dns_refresh_rate: Duration = 60.0
    h2_upgrade_policy: Literal["DO_NOT_UPGRADE", "UPGRADE"] | None = None
    inbound_cluster_stat_name: str | None = None
    outbound_cluster_stat_name: str | None = None
    path_normalization: ProxyPathNormalization | None = None
    # Ingress controller.
    ingress_class: str = "istio"
    ingress_service: str = "istio-ingressgateway"
    ingress_controller_mode: Literal["UNSPECIFIED", "OFF", "DEFAULT", "STRICT"] = "STRICT"
    ingress_selector: str | None = None
    # Telemetry.
    enable_tracing: bool = True
    access_log_file: str = ""
    access_log_format: str = ""
    access_log_encoding: Literal["TEXT", "JSON"] = "TEXT"
    enable_envoy_access_log_service: bool = False
    disable_envoy_listener_log: bool = False
    enable_prometheus_merge: bool = True
    extension_providers: list[ExtensionProvider] = Field(default_factory=list)
    default_providers: DefaultProviders = Field(default_factory=DefaultProviders)
    # Proxies.
    default_config: ProxyConfig = Field(default_factory=ProxyConfig)
    # Traffic.
    outbound_traffic_policy: OutboundTrafficPolicy = Field(
        default_factory=lambda: OutboundTrafficPolicy(mode="ALLOW_ANY"))
    inbound_traffic_policy: InboundTrafficPolicy | None = None
    default_http_retry_policy: MeshHttpRetry | None = None
    locality_lb_setting: LocalityLbSetting = Field(
        default_factory=lambda: LocalityLbSetting(enabled=True))
    default_service_export_to: list[str] = ["*"]
    default_virtual_service_export_to: list[str] = ["*"]
    default_destination_rule_export_to: list[str] = ["*"]
    service_settings: list[ServiceSettings] = Field(default_factory=list)
    service_scope_configs: list[ServiceScopeConfig] = Field(default_factory=list)
    discovery_selectors: list[KubernetesLabelSelector] = Field(default_factory=list)
    config_sources: list[ConfigSource] = Field(default_factory=list)
    root_namespace: str = "istio-system"
    # Security.
    enable_auto_mtls: bool = True
    trust_domain: str = "cluster.local"
    trust_domain_aliases: list[str] = Field(default_factory=list)
    ca_certificates: list[CertificateData] = Field(default_factory=list)
    ca: CaSettings | None = None
    certificates: list[Certificate] = []  # deprecated
    verify_certificate_at_client: bool | None = None  # deprecated
    mesh_mtls: TlsConfig | None = Field(default=None, alias="meshMTLS")
    tls_defaults: TlsConfig | None = None
    compliance_policy: str | None = None
    # Removed from Istio; accepted so old mesh configs load, warned about, ignored.
    thrift_config: Any = None
    mixer_check_server: Any = None
    mixer_report_server: Any = None
    mixer_address: Any = None
    disable_policy_checks: Any = None
    disable_mixer_http_reports: Any = None
    policy_check_fail_open: Any = None
    sidecar_to_telemetry_session_affinity: Any = None
    auth_policy: Any = None
    rds_refresh_delay: Any = None
    enable_client_side_policy_check: Any = None
    sds_uds_path: Any = None
    sds_refresh_delay: Any = None
    enable_sds_token_mount: Any = None
    sds_use_k8s_sa_jwt: Any = Field(default=None, alias="sdsUseK8sSaJwt")
    termination_drain_duration: Any = None

    def effective_extension_providers(self) -> list[ExtensionProvider]:
        """Istio's defaults (``prometheus``, ``envoy``) merged with the listed providers by name."""
        listed = {p.name: p for p in self.extension_providers}
        merged = [listed.pop(d.name, d) for d in DEFAULT_EXTENSION_PROVIDERS]
        merged.extend(p for p in self.extension_providers if p.name in listed)
        return merged

    def find_provider(self, name: str) -> ExtensionProvider | None:
        """The extension provider called ``name`` (defaults included), None if there is none."""
        return next((p for p in self.effective_extension_providers() if p.name == name), None)


# --- validation ----------------------------------------------------------------------------

# Envoy's retry_on / retry_grpc_on tokens, as Istio's validation lists them. A local list:
# the networking kinds validate VirtualService retries with their own; unify later.
RETRY_ON_TOKENS = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "envoy-ratelimited", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
KNOWN_ECDH_CURVES = frozenset({"P-224", "P-256", "P-521", "P-384", "X25519",
                               "X25519Kyber768Draft00", "X25519MLKEM768"})
CONNECT_TIMEOUT_MIN, CONNECT_TIMEOUT_MAX = 0.001, 3600.0
_NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _is_namespace_name(text: str) -> bool:
    """A Kubernetes namespace name: a lowercase DNS-1123 label."""
    return bool(_NAMESPACE_NAME.match(text))


def validate_mesh_config(cfg: MeshConfig) -> Iterator[Finding]:
    """Semantic checks of a mesh config; paths are relative to the mesh document root."""
    for name, wire in REMOVED_MESH_FIELDS.items():
        if name in cfg.model_fields_set:
            yield Finding((wire,), f"{wire} was removed from Istio's MeshConfig and is ignored",
                          severity="warning")
    yield from _check_trust_domains(cfg)
    if not cfg.root_namespace:
        yield Finding(("rootNamespace",), "rootNamespace must not be empty")
    elif not _is_namespace_name(cfg.root_namespace):
        yield Finding(("rootNamespace",), f"rootNamespace must be a namespace name (lowercase "
                                          f"DNS label), got {cfg.root_namespace!r}")
    for field, port in (("proxyListenPort", cfg.proxy_listen_port),
                        ("proxyInboundListenPort", cfg.proxy_inbound_listen_port)):
        yield from check_port(port, (field,))
    yield from check_port(cfg.proxy_http_port, ("proxyHttpPort",), allow_zero=True)
    if not CONNECT_TIMEOUT_MIN <= cfg.connect_timeout <= CONNECT_TIMEOUT_MAX:
        yield Finding(("connectTimeout",), f"connectTimeout must be between 1ms and 1h, got "
                                           f"{format_duration(cfg.connect_timeout)}")
    yield from check_positive_duration(cfg.protocol_detection_timeout,
                                       ("protocolDetectionTimeout",), allow_zero=True)
    yield from check_positive_duration(cfg.dns_refresh_rate, ("dnsRefreshRate",),
                                       minimum=0.001)
    if "mode" not in cfg.outbound_traffic_policy.model_fields_set \
            and "outbound_traffic_policy" in cfg.model_fields_set:
        yield Finding(("outboundTrafficPolicy",),
                      "outboundTrafficPolicy without mode means REGISTRY_ONLY (unknown hosts "
                      "are blocked), not the default ALLOW_ANY; set mode explicitly",
                      severity="warning")
    for field, values in (("defaultServiceExportTo", cfg.default_service_export_to),
                          ("defaultVirtualServiceExportTo", cfg.default_virtual_service_export_to),
                          ("defaultDestinationRuleExportTo",
                           cfg.default_destination_rule_export_to)):
        yield from check_export_to(values, (field,), allow_none=field == "defaultServiceExportTo")
    yield from _check_extension_providers(cfg)
    yield from _check_default_providers(cfg)
    yield from _check_proxy_config(cfg.default_config, ("defaultConfig",))
    if cfg.default_http_retry_policy is not None:
        yield from check_http_retry(cfg.default_http_retry_policy, ("defaultHttpRetryPolicy",))
    yield from _check_locality_lb(cfg.locality_lb_setting, ("localityLbSetting",))
    for i, settings in enumerate(cfg.service_settings):
        for k, host in enumerate(settings.hosts):
            yield from check_host(host, ("serviceSettings", i, "hosts", k), allow_ip=False)
    if cfg.mesh_mtls is not None and cfg.mesh_mtls.ecdh_curves:
        yield Finding(("meshMTLS", "ecdhCurves"), "meshMTLS does not support ecdhCurves; set "
                                                  "them in tlsDefaults")
    if cfg.tls_defaults is not None:
        for k, curve in enumerate(cfg.tls_defaults.ecdh_curves):
            if curve not in KNOWN_ECDH_CURVES:
                yield Finding(("tlsDefaults", "ecdhCurves", k), f"unknown ECDH curve {curve!r}",
                              severity="warning")
    if cfg.access_log_encoding == "JSON" and cfg.access_log_format:
        yield from _check_json_log_format(cfg.access_log_format, ("accessLogFormat",))
    for i, cert in enumerate(cfg.ca_certificates):
        if (cert.pem is None) == (cert.spiffe_bundle_url is None):
            yield Finding(("caCertificates", i), "set exactly one of pem or spiffeBundleUrl")


def _check_json_log_format(text: str, path: Path) -> Iterator[Finding]:
    """With JSON encoding the format is a JSON object of field name -> Envoy format string."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        yield Finding(path, f"with accessLogEncoding JSON, accessLogFormat must be a JSON "
                            f"object; it does not parse: {exc}")
        return
    if not isinstance(data, dict):
        yield Finding(path, f"with accessLogEncoding JSON, accessLogFormat must be a JSON "
                            f"object, got a JSON {type(data).__name__}")


def _check_trust_domains(cfg: MeshConfig) -> Iterator[Finding]:
    err = trust_domain_error(cfg.trust_domain)
    if err:
        yield Finding(("trustDomain",), err)
    for i, alias in enumerate(cfg.trust_domain_aliases):
        err = trust_domain_error(alias)
        if err:
            yield Finding(("trustDomainAliases", i), err)


def trust_domain_error(domain: str) -> str | None:
    """Istio's trust domain syntax: dot-separated DNS labels (a trailing dot is allowed).

    Istio's label check accepts upper case, so ``Example.COM`` is a valid trust domain.
    """
    if not domain:
        return "trust domain must not be empty"
    labels = domain.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]
    bad = [label for label in labels if not is_dns1123_label(label)]
    if bad:
        return (f"invalid trust domain {domain!r}: {bad[0]!r} is not a DNS label "
                f"(letters, digits and '-', at most 63)")
    return None


def _check_extension_providers(cfg: MeshConfig) -> Iterator[Finding]:
    seen: dict[str, int] = {}
    for i, provider in enumerate(cfg.extension_providers):
        path: Path = ("extensionProviders", i)
        if not provider.name:
            yield Finding((*path, "name"), "extension provider name must not be empty")
        elif provider.name in seen:
            yield Finding((*path, "name"), f"duplicate extension provider name "
                                           f"{provider.name!r} (first at "
                                           f"extensionProviders[{seen[provider.name]}])")
        else:
            seen[provider.name] = i
        types = provider.provider_types()
        if len(types) != 1:
            got = ", ".join(_wire_provider(t) for t in types) if types else "none"
            yield Finding(path, f"an extension provider must set exactly one provider type "
                                f"({', '.join(_wire_provider(t) for t in PROVIDER_TYPES)}), "
                                f"got {got}")
        for t in types:
            yield from _check_provider_settings(getattr(provider, t), (*path, _wire_provider(t)))


def _wire_provider(python_name: str) -> str:
    alias = ExtensionProvider.model_fields[python_name].alias
    return alias or python_name


def _check_provider_settings(settings: IstioModel, path: Path) -> Iterator[Finding]:
    service = getattr(settings, "service", None)
    if service is not None:
        yield from _check_provider_service(service, (*path, "service"))
    port = getattr(settings, "port", None)
    if port is not None:
        if port == 0:
            yield Finding((*path, "port"), "port is required (1-65535), got none")
        else:
            yield from check_port(port, (*path, "port"))
    yield from check_positive_duration(getattr(settings, "timeout", None), (*path, "timeout"),
                                       minimum=0.001)
    if isinstance(settings, (EnvoyExtAuthzHttpProvider, EnvoyExtAuthzGrpcProvider)) \
            and settings.status_on_error is not None:
        yield from _check_status_on_error(settings.status_on_error, (*path, "statusOnError"))
    if isinstance(settings, EnvoyExtAuthzHttpProvider) and settings.path_prefix \
            and not settings.path_prefix.startswith("/"):
        yield Finding((*path, "pathPrefix"), f"pathPrefix must start with '/', got "
                                             f"{settings.path_prefix!r}")
    if isinstance(settings, LightstepTracingProvider) and not settings.access_token:
        yield Finding((*path, "accessToken"), "lightstep needs an accessToken")
    if isinstance(settings, OpenTelemetryTracingProvider):
        if settings.http is not None and settings.grpc is not None:
            yield Finding((*path, "grpc"), "set only one of http and grpc")
        if settings.http is not None:
            yield from check_positive_duration(settings.http.timeout,
                                               (*path, "http", "timeout"), minimum=0.001)
            yield from _check_http_headers(settings.http.headers, (*path, "http", "headers"))
        if settings.grpc is not None:
            yield from check_positive_duration(settings.grpc.timeout,
                                               (*path, "grpc", "timeout"), minimum=0.001)
            yield from _check_http_headers(settings.grpc.initial_metadata,
                                           (*path, "grpc", "initialMetadata"))
    if isinstance(settings, ZipkinTracingProvider):
        yield from _check_http_headers(settings.headers, (*path, "headers"))
    if isinstance(settings, (EnvoyFileAccessLogProvider, EnvoyOpenTelemetryLogProvider)):
        fmt = settings.log_format
        if isinstance(settings, EnvoyFileAccessLogProvider) and fmt is not None \
                and (fmt.text is None) == (fmt.labels is None):
            yield Finding((*path, "logFormat"), "logFormat must set exactly one of text or "
                                                "labels")


def _check_provider_service(service: str, path: Path) -> Iterator[Finding]:
    """``[<namespace>/]<hostname>``: a service host, optionally qualified by namespace."""
    if not service:
        yield Finding(path, "service is required, got none")
        return
    ns, sep, host = service.rpartition("/")
    if sep and not _is_namespace_name(ns):
        yield Finding(path, f"service must be [<namespace>/]<hostname>, got namespace {ns!r} "
                            f"in {service!r}")
        return
    if sep and not host:
        yield Finding(path, f"service must be [<namespace>/]<hostname>, got {service!r}")
        return
    if is_ip(host):
        return
    for f in check_host(host, path, allow_wildcard=False, allow_ip=False):
        yield Finding(f.path, f"invalid service {service!r}: {f.message}")


def _check_status_on_error(status: str, path: Path) -> Iterator[Finding]:
    if not status.isdigit() or not 100 <= int(status) <= 599:
        yield Finding(path, f"statusOnError must be an HTTP status code such as \"403\", got "
                            f"{status!r}")


def _check_http_headers(headers: list[HttpHeader], path: Path) -> Iterator[Finding]:
    for k, header in enumerate(headers):
        where = (*path, k)
        if not header.name:
            yield Finding((*where, "name"), "header name must not be empty")
        else:
            yield from check_header_name(header.name, (*where, "name"))
        if header.value is not None and header.env_name is not None:
            yield Finding(where, "set only one of value and envName")


def _check_default_providers(cfg: MeshConfig) -> Iterator[Finding]:
    known = {p.name: p for p in cfg.effective_extension_providers() if p.name}
    for field, attr, wanted in (("tracing", "tracing", TRACING_PROVIDER_TYPES),
                                ("metrics", "metrics", METRICS_PROVIDER_TYPES),
                                ("accessLogging", "access_logging", ACCESS_LOG_PROVIDER_TYPES)):
        for k, name in enumerate(getattr(cfg.default_providers, attr)):
            where = ("defaultProviders", field, k)
            provider = known.get(name)
            if provider is None:
                yield Finding(where, f"no extension provider named {name!r}; known: "
                                     f"{', '.join(sorted(known)) or 'none'}")
            elif provider.provider_type is not None and provider.provider_type not in wanted:
                yield Finding(where, f"provider {name!r} has type "
                                     f"{_wire_provider(provider.provider_type)}, which does not "
                                     f"provide {field}", severity="warning")


def _check_proxy_config(pc: ProxyConfig, path: Path) -> Iterator[Finding]:
    if not pc.discovery_address:
        yield Finding((*path, "discoveryAddress"), "discoveryAddress must not be empty")
    else:
        yield from _check_address(pc.discovery_address, (*path, "discoveryAddress"))
    if pc.statsd_udp_address:
        yield from _check_address(pc.statsd_udp_address, (*path, "statsdUdpAddress"))
    for field, remote in (("envoyAccessLogService", pc.envoy_access_log_service),
                          ("envoyMetricsService", pc.envoy_metrics_service)):
        if remote is not None and remote.address:
            yield from _check_address(remote.address, (*path, field, "address"))
    yield from check_port(pc.proxy_admin_port, (*path, "proxyAdminPort"))
    yield from check_port(pc.status_port, (*path, "statusPort"))
    yield from check_positive_duration(pc.drain_duration, (*path, "drainDuration"),
                                       minimum=0.001)
    yield from check_positive_duration(pc.termination_drain_duration,
                                       (*path, "terminationDrainDuration"), allow_zero=True)
    if pc.control_plane_auth_policy == "INHERIT":
        yield Finding((*path, "controlPlaneAuthPolicy"), "controlPlaneAuthPolicy must be NONE "
                                                         "or MUTUAL_TLS, got INHERIT")
    if pc.concurrency is not None and pc.concurrency < 0:
        yield Finding((*path, "concurrency"), f"concurrency must be >= 0 (0 = all cores), got "
                                              f"{pc.concurrency}")
    if pc.tracing is not None:
        yield from _check_proxy_tracing(pc.tracing, (*path, "tracing"))


def _check_proxy_tracing(tracing: ProxyTracing, path: Path) -> Iterator[Finding]:
    yield from check_percent(tracing.sampling, (*path, "sampling"))
    tracers = [name for name in ("zipkin", "lightstep", "datadog", "stackdriver",
                                 "openCensusAgent")
               if getattr(tracing, "open_census_agent" if name == "openCensusAgent" else name)
               is not None]
    if len(tracers) > 1:
        yield Finding(path, f"set only one tracer, got {', '.join(tracers)}")
    for name, tracer in (("zipkin", tracing.zipkin), ("datadog", tracing.datadog),
                         ("lightstep", tracing.lightstep)):
        if tracer is not None:
            # Istio substitutes the node's IP for $(HOST_IP) at injection.
            address = tracer.address.replace("$(HOST_IP)", "127.0.0.1", 1)
            yield from _check_address(address, (*path, name, "address"), shown=tracer.address)
    if tracing.lightstep is not None and not tracing.lightstep.access_token:
        yield Finding((*path, "lightstep", "accessToken"), "lightstep needs an accessToken")
    for name, tag in tracing.custom_tags.items():
        set_ = [s for s in ("literal", "environment", "header") if getattr(tag, s) is not None]
        if len(set_) != 1:
            yield Finding((*path, "customTags", name),
                          f"a custom tag must set exactly one of literal, environment or header, "
                          f"got {', '.join(set_) or 'none'}")


def _check_address(address: str, path: Path, *, shown: str | None = None) -> Iterator[Finding]:
    """``host:port`` as Istio's ValidateProxyAddress wants it (FQDN or IP, port 1-65535)."""
    text = shown if shown is not None else address
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        yield Finding(path, f"must be host:port, got {text!r}")
        return
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        yield Finding(path, f"port must be a number in 1-65535, got {port!r} in {text!r}")
        return
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    for f in check_host(host, path, allow_wildcard=False, allow_ip=False):
        yield Finding(f.path, f"invalid address {text!r}: {f.message}")


def check_http_retry(retry: MeshHttpRetry, path: Path) -> Iterator[Finding]:
    """HTTPRetry checks as Istio's ``validateHTTPRetry`` makes them."""
    if retry.attempts < 0:
        yield Finding((*path, "attempts"), f"attempts must be >= 0, got {retry.attempts}")
    elif retry.attempts == 0 and (retry.per_try_timeout is not None or retry.retry_on
                                  or retry.retry_remote_localities is not None):
        yield Finding((*path, "attempts"), "attempts is 0 (retries disabled) but other retry "
                                           "settings are set; set attempts or remove them")
    yield from check_positive_duration(retry.per_try_timeout, (*path, "perTryTimeout"),
                                       minimum=0.001)
    if retry.per_try_timeout is not None:
        yield Finding((*path, "perTryTimeout"), "perTryTimeout is ignored in the mesh-wide "
                                                "retry policy; set it per route",
                      severity="warning")
    yield from check_positive_duration(retry.backoff, (*path, "backoff"), minimum=0.001)
    if retry.retry_on:
        for token in retry.retry_on.split(","):
            token = token.strip()
            if token in RETRY_ON_TOKENS or (token.isdigit() and 100 <= int(token) <= 599):
                continue
            yield Finding((*path, "retryOn"),
                          f"{token!r} is not a retryOn policy; use HTTP status codes or "
                          f"{', '.join(sorted(RETRY_ON_TOKENS))}")


def _check_locality_lb(lb: LocalityLbSetting, path: Path) -> Iterator[Finding]:
    if lb.distribute and lb.failover:
        yield Finding(path, "set only one of distribute and failover")
        return
    for i, dist in enumerate(lb.distribute):
        where = (*path, "distribute", i)
        for loc, weight in dist.to.items():
            if not 1 <= weight <= 100:
                yield Finding((*where, "to", loc), f"locality weight must be in 1-100, got "
                                                   f"{weight}")
        total = sum(dist.to.values())
        if total != 100:
            yield Finding((*where, "to"), f"locality weights must add up to 100, got {total}")
        for loc in (dist.from_, *dist.to):
            err = _locality_error(loc)
            if err:
                yield Finding(where, err)
    for i, fo in enumerate(lb.failover):
        where = (*path, "failover", i)
        if fo.from_ == fo.to:
            yield Finding(where, f"failover from and to must be different regions, got "
                                 f"{fo.from_!r} for both")
        for field, region in (("from", fo.from_), ("to", fo.to)):
            if "/" in region or "*" in region:
                yield Finding((*where, field), f"failover takes a region name only (no '/' or "
                                               f"'*'), got {region!r}")


def _locality_error(locality: str) -> str | None:
    stars = locality.count("*")
    if stars > 1 or (stars == 1 and not locality.endswith("*")):
        return f"locality {locality!r}: '*' may appear once, at the end"
    if any(part == "" for part in locality.split("/", 2)):
        return f"locality {locality!r} must not have an empty region, zone or subzone"
    return None
