"""Telemetry (telemetry.istio.io): how a workload reports metrics, traces and access logs.

Hierarchy: workload (selector or targetRefs), then namespace, then root namespace;
the most specific wins. Providers are named ``extensionProviders`` of the mesh
config (``prometheus`` and ``envoy`` exist by default); no provider means the
mesh's ``defaultProviders``.

Validation follows Istio's ``ValidateTelemetry``. ``reportingInterval > 0`` and the
"one source per custom tag" rule are checks Istio leaves to Envoy (a tag without a
source is dropped, a zero interval is rejected by the proxy); they are errors here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import TELEMETRY, TELEMETRY_VERSIONS, KindInfo
from meshsdk.config.types import (
    Duration,
    IstioModel,
    PolicyTargetReference,
    WorkloadSelector,
    check_percent,
    check_policy_selection,
    check_positive_duration,
)

WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
MetricName = Literal[
    "ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
]


class ProviderRef(IstioModel):
    """``providers[]``: the name of an ``extensionProviders`` entry of the mesh config."""

    name: str = ""


# --- tracing ---------------------------------------------------------------------------


class TracingSelector(IstioModel):
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class LiteralTag(IstioModel):
    value: str = ""


class EnvironmentTag(IstioModel):
    """The tag's value is the proxy's environment variable ``name`` (else ``defaultValue``)."""

    name: str = ""
    default_value: str | None = None


class RequestHeaderTag(IstioModel):
    """The tag's value is the request header ``name`` (else ``defaultValue``)."""

    name: str = ""
    default_value: str | None = None


class FormatterTag(IstioModel):
    """Istio 1.30: the tag's value is an access-log formatter expression (``%REQ(x-id)%``)."""

    value: str = ""


class CustomTag(IstioModel):
    """Exactly one of ``literal``, ``environment``, ``header`` or ``formatter``."""

    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: RequestHeaderTag | None = None
    formatter: FormatterTag | None = None


class Tracing(IstioModel):
    """``tracing[]``. ``randomSamplingPercentage`` is a bare number in [0, 100]."""

    match: TracingSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None
    disable_context_propagation: bool | None = None
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict)
    use_request_id_for_trace_sampling: bool | None = None
    enable_istio_tags: bool | None = None


# --- metrics ---------------------------------------------------------------------------


class MetricSelector(IstioModel):
    """``match`` of an override: one of ``metric`` / ``customMetric``, and the side."""

    metric: MetricName | None = None
    custom_metric: str | None = None
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class TagOverride(IstioModel):
    """``tagOverrides.<tag>``: UPSERT (default) sets the tag to the ``value`` expression."""

    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str | None = None


class MetricsOverrides(IstioModel):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)


class Metrics(IstioModel):
    providers: list[ProviderRef] = Field(default_factory=list)
    overrides: list[MetricsOverrides] = Field(default_factory=list)
    reporting_interval: Duration | None = None


# --- access logging ---------------------------------------------------------------------


class AccessLogSelector(IstioModel):
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class AccessLogFilter(IstioModel):
    """``filter.expression``: a CEL expression; only matching requests are logged."""

    expression: str = ""


class AccessLogging(IstioModel):
    match: AccessLogSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    disabled: bool | None = None
    filter: AccessLogFilter | None = None


class TelemetrySpec(IstioModel):
    """``spec`` of a Telemetry resource."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list)
    tracing: list[Tracing] = Field(default_factory=list)
    metrics: list[Metrics] = Field(default_factory=list)
    access_logging: list[AccessLogging] = Field(default_factory=list)


# --- rules -------------------------------------------------------------------------------


def validate_telemetry(spec: TelemetrySpec) -> Iterator[Finding]:
    """Istio's Telemetry validation, with paths relative to ``spec``."""
    yield from check_policy_selection(spec.selector, spec.target_ref, spec.target_refs)
    if len(spec.tracing) > 1:
        yield Finding(("tracing", 1), "only the first tracing entry is used; Istio does not "
                                      "support several", severity="warning")
    for i, tracing in enumerate(spec.tracing):
        yield from _check_tracing(tracing, ("tracing", i))
    for i, metrics in enumerate(spec.metrics):
        yield from _check_metrics(metrics, ("metrics", i))
    for i, logging in enumerate(spec.access_logging):
        path = ("accessLogging", i)
        yield from _check_providers(logging.providers, path)
        if logging.filter is not None and not logging.filter.expression.strip():
            yield Finding((*path, "filter", "expression"), "filter expression must not be "
                                                           "empty; remove `filter` to log "
                                                           "every request")


def _check_providers(providers: list[ProviderRef], path: Path) -> Iterator[Finding]:
    for j, provider in enumerate(providers):
        if not provider.name:
            yield Finding((*path, "providers", j, "name"), "provider name must not be empty")


def _check_tracing(tracing: Tracing, path: Path) -> Iterator[Finding]:
    yield from _check_providers(tracing.providers, path)
    if len(tracing.providers) > 1:
        yield Finding((*path, "providers"), "only one tracing provider is supported; the "
                                            "others are ignored", severity="warning")
    yield from check_percent(tracing.random_sampling_percentage,
                             (*path, "randomSamplingPercentage"))
    for name, tag in tracing.custom_tags.items():
        where = (*path, "customTags", name)
        if not name:
            yield Finding(where, "tag name must not be empty")
        sources = [s for s in ("literal", "environment", "header", "formatter")
                   if getattr(tag, s) is not None]
        if len(sources) != 1:
            got = ", ".join(sources) if sources else "none"
            yield Finding(where, f"a custom tag must set exactly one of literal, environment, "
                                 f"header or formatter, got {got}")
        if tag.literal is not None and not tag.literal.value:
            yield Finding((*where, "literal", "value"), "literal tag value must not be empty")
        if tag.environment is not None and not tag.environment.name:
            yield Finding((*where, "environment", "name"), "environment variable name must "
                                                           "not be empty")
        if tag.header is not None and not tag.header.name:
            yield Finding((*where, "header", "name"), "header name must not be empty")
        if tag.formatter is not None and not tag.formatter.value:
            yield Finding((*where, "formatter", "value"), "formatter value must not be empty")


def _check_metrics(metrics: Metrics, path: Path) -> Iterator[Finding]:
    yield from _check_providers(metrics.providers, path)
    yield from check_positive_duration(metrics.reporting_interval, (*path, "reportingInterval"))
    for k, override in enumerate(metrics.overrides):
        where = (*path, "overrides", k)
        match = override.match
        if match is not None:
            if match.metric is not None and match.custom_metric is not None:
                yield Finding((*where, "match"), "set only one of metric and customMetric, "
                                                 f"got metric {match.metric} and customMetric "
                                                 f"{match.custom_metric!r}")
            elif match.custom_metric is not None and not match.custom_metric:
                yield Finding((*where, "match", "customMetric"), "customMetric must not be empty")
        for tag, op in override.tag_overrides.items():
            tag_path = (*where, "tagOverrides", tag)
            if not tag:
                yield Finding(tag_path, "tag name must not be empty", severity="warning")
            if op.operation == "UPSERT" and not op.value:
                yield Finding(tag_path, f"tag {tag!r}: operation UPSERT needs a value "
                                        f"expression, got none")
            elif op.operation == "REMOVE" and op.value:
                yield Finding((*tag_path, "value"), f"tag {tag!r}: a value is only allowed with "
                                                    f"operation UPSERT, got REMOVE with value "
                                                    f"{op.value!r}")


KIND = KindInfo("Telemetry", TELEMETRY, TELEMETRY_VERSIONS, TelemetrySpec,
                rules=validate_telemetry)
