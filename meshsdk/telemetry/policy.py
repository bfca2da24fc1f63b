"""Resolve Istio ``Telemetry`` resources for one workload into tracing, metrics and access logs.

Pure and deterministic: :func:`resolve_telemetry` reads a validated :class:`Config`
and a :class:`MeshConfig` and returns frozen values; it does no I/O and logs nothing.
What Istio would only log (an unknown provider, a provider of the wrong type) is
returned in :attr:`TelemetryPolicy.warnings`, each naming the resource it came from.

Which resources apply (Istio's ``Telemetries.applicableTelemetries``):

* the oldest namespace-wide Telemetry of the root namespace (mesh level), then the
  oldest namespace-wide one of the workload's namespace (namespace level); younger
  namespace-wide ones are ignored, with a warning;
* then every Telemetry of the workload's namespace whose selector matches its labels
  or whose targetRefs name it, oldest first. As in current Istio they are all
  applied, in that order, so on a conflicting field the youngest one wins.

Narrower levels override broader ones field by field; what each signal does with
the levels is documented on :func:`resolve_telemetry`. ``CLIENT`` is the outbound
side (reporter=source), ``SERVER`` the inbound side (reporter=destination).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from meshsdk.config.kinds.telemetry import (
    CustomTag,
    EnvironmentTag,
    LiteralTag,
    MetricSelector,
    MetricsOverrides,
    RequestHeaderTag,
    TagOverride,
    TelemetrySpec,
    WorkloadMode,
)
from meshsdk.config.mesh import (
    ACCESS_LOG_PROVIDER_TYPES,
    METRICS_PROVIDER_TYPES,
    TRACING_PROVIDER_TYPES,
    ExtensionProvider,
    MeshConfig,
)
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import policies_for

Side = Literal["CLIENT", "SERVER"]

STANDARD_METRICS: tuple[str, ...] = (
    "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
)
"""Istio's standard metrics: what ``ALL_METRICS`` (or an override without a metric) means."""

DEFAULT_METRICS_PROVIDER = "prometheus"
"""Metrics provider used when ``defaultProviders.metrics`` is empty (Istio installs set it)."""

DEFAULT_LOG_PATH = "/dev/stdout"
"""Where a file access log goes when its provider sets no path."""

DEFAULT_SAMPLING = 1.0
"""Istio's trace sampling percentage when nothing sets one (``PILOT_TRACE_SAMPLING``)."""

MESH_ACCESS_LOG = "meshConfig.accessLogFile"
"""Provider name given to the access log that ``meshConfig.accessLogFile`` turns on."""

_TELEMETRY = "Telemetry"
_EMPTY: Mapping[Any, Any] = MappingProxyType({})
# Provider types Istio turns into an Envoy access log (``telemetryAccessLog``); when none
# of the resolved providers is one of these, Istio falls back to meshConfig.accessLogFile.
_ISTIO_ACCESS_LOG_TYPES = frozenset({"envoy_file_access_log", "envoy_http_als",
                                     "envoy_tcp_als", "envoy_otel_als"})


# --- the resolved policy ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TracingPolicy:
    """Tracing for one side of a workload."""

    enabled: bool
    """False when tracing is off for this side: no (usable) provider when Telemetry
    configures tracing, or ``enableTracing: false`` when none does."""
    sampling_percentage: float
    """Random sampling of new traces, 0..100."""
    disable_span_reporting: bool
    """Sample and propagate, but report no spans."""
    disable_context_propagation: bool
    """Do not inject trace headers into outgoing requests."""
    custom_tags: Mapping[str, CustomTag]
    """Span tags to add, by tag name."""
    provider: str | None
    """Name of the tracing extension provider; None when tracing comes from the legacy
    ``defaultConfig.tracing`` (no Telemetry tracing, no default provider) or is off."""


@dataclass(frozen=True, slots=True)
class AccessLogProvider:
    """One access log sink: an ``envoyFileAccessLog`` provider (or meshConfig.accessLogFile)."""

    name: str
    path: str
    """File to append to; ``/dev/stdout`` when the provider sets none."""
    encoding: Literal["TEXT", "JSON"]
    text_format: str | None
    """Envoy format string (TEXT); None = Istio's default format."""
    json_labels: Mapping[str, str] | None
    """JSON key -> Envoy format expression (JSON); None = Istio's default JSON labels."""
    filter_expression: str | None = None
    """CEL expression: log only the requests it accepts; None = log every request."""


@dataclass(frozen=True, slots=True)
class AccessLogPolicy:
    """Access logging for one side of a workload."""

    enabled: bool
    providers: tuple[AccessLogProvider, ...]
    """The sinks, sorted by name (Istio's order)."""
    filter_expression: str | None
    """The filter every sink shares; None when there is none or the sinks' filters differ
    (each :attr:`AccessLogProvider.filter_expression` is authoritative)."""


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    """Istio standard metrics for one side of a workload."""

    enabled: bool
    """False when every metric is disabled or no metrics provider resolves."""
    disabled_metrics: frozenset[str]
    """Metric names turned off (``REQUEST_COUNT`` ...; custom metric names as written).
    Holds every standard metric when ``ALL_METRICS`` is disabled."""
    tag_overrides: Mapping[str, Mapping[str, TagOverride]]
    """Metric name -> tag (label) -> override: UPSERT sets it to ``value``, REMOVE drops it."""
    providers: tuple[str, ...]
    """Metrics extension providers that receive the metrics."""


@dataclass(frozen=True, slots=True)
class SidePolicy:
    """Everything telemetry does on one side (client/outbound or server/inbound)."""

    tracing: TracingPolicy
    metrics: MetricsPolicy
    access_log: AccessLogPolicy


@dataclass(frozen=True, slots=True)
class TelemetryPolicy:
    """The telemetry a workload produces, per side, with what it was resolved from."""

    client: SidePolicy
    """Outbound calls, reported with ``reporter=source`` (mode CLIENT)."""
    server: SidePolicy
    """Inbound calls, reported with ``reporter=destination`` (mode SERVER)."""
    source: tuple[str, ...] = ()
    """Refs (``Telemetry ns/name``) of the applied resources, broadest first."""
    warnings: tuple[str, ...] = ()
    """Configuration Istio would ignore (and only log), each with its resource ref."""

    def side(self, mode: Side) -> SidePolicy:
        """:attr:`client` for ``"CLIENT"``, :attr:`server` for ``"SERVER"``."""
        return self.client if mode == "CLIENT" else self.server


# --- entry point ------------------------------------------------------------------------


def resolve_telemetry(config: Config, mesh: MeshConfig, namespace: str,
                      labels: Mapping[str, str], *, workload_kind: str = "",
                      workload_name: str = "") -> TelemetryPolicy:
    """Resolve the Telemetry resources of ``config`` for a workload (namespace + labels).

    ``workload_kind``/``workload_name`` identify the workload for ``targetRefs``
    (``"Service"``/``"reviews"``, ``"Gateway"``/``"ingress"``).

    Tracing (Istio's ``Telemetries.Tracing``; only the first ``tracing[]`` entry of a
    resource counts, matching the validator's warning):

    * No Telemetry tracing and no ``defaultProviders.tracing``: the legacy tracer of
      ``defaultConfig.tracing``, on when ``enableTracing`` (provider None).
    * Otherwise ``enableTracing`` is not read. The provider is the first of the
      narrowest entry naming providers, else ``defaultProviders.tracing[0]``. An
      unknown provider or one that cannot trace turns tracing off for that side
      (warned), as in Istio. No provider at all keeps tracing on (``enableTracing``)
      where Istio turns it off: the application's OpenTelemetry SDK is the provider.
    * ``randomSamplingPercentage``, ``disableSpanReporting``,
      ``disableContextPropagation`` and ``customTags``: the narrowest entry setting
      one wins; ``customTags`` replaces the whole map, as in Istio.
    * Sampling with nothing set is ``defaultConfig.tracing.sampling`` (0 or above 100
      means Istio's default 1%); no Telemetry custom tags means
      ``defaultConfig.tracing.customTags``.

    Metrics (Istio's ``mergeMetrics``): the providers are those of the narrowest
    entry naming some, else ``defaultProviders.metrics``, else ``prometheus``.
    Overrides of every entry whose providers (own or inherited from the previous
    entry) include one of those accumulate broadest first, the later winning per
    (metric, side, tag). ``disabled: true`` for ALL_METRICS (or no metric) turns the
    side's metrics off until a later override for that side names a metric.

    Access logs (Istio's ``mergeLogs``): no Telemetry ``accessLogging`` and no
    ``defaultProviders.accessLogging`` means ``meshConfig.accessLogFile`` (off when
    empty). Otherwise the providers are those the narrowest level names for the side
    (else the defaults), and for each the narrowest matching entry decides
    ``disabled`` and ``filter`` (an entry without providers acts on the inherited
    ones). Only ``envoyFileAccessLog`` providers are supported; others are warned
    and skipped. When no provider resolves to an access log type, Istio falls back
    to ``meshConfig.accessLogFile`` too.
    """
    warnings = _Warnings()
    applied = _applicable(config, mesh, namespace, labels, workload_kind, workload_name,
                          warnings)
    providers = _ProviderIndex(mesh, warnings)
    metrics = _resolve_metrics(applied, mesh, providers)
    sides = {
        side: SidePolicy(
            tracing=_resolve_tracing(applied, mesh, side, providers, warnings),
            metrics=metrics[side],
            access_log=_resolve_access_log(applied, mesh, side, providers, warnings),
        )
        for side in ("CLIENT", "SERVER")
    }
    return TelemetryPolicy(client=sides["CLIENT"], server=sides["SERVER"],
                           source=tuple(r.ref for r in applied),
                           warnings=warnings.as_tuple())


# --- selection --------------------------------------------------------------------------


def _applicable(config: Config, mesh: MeshConfig, namespace: str, labels: Mapping[str, str],
                workload_kind: str, workload_name: str,
                warnings: _Warnings) -> tuple[Resource, ...]:
    """The Telemetry resources in force, broadest first (see the module docstring)."""
    scopes = policies_for(config.of_kind(_TELEMETRY), namespace, labels,
                          root_namespace=mesh.root_namespace, workload_kind=workload_kind,
                          workload_name=workload_name)
    for level in (scopes.root, scopes.namespace):
        for ignored in level[1:]:
            warnings.add(f"{ignored.ref}: ignored; {level[0].ref} is older and also covers "
                         f"the whole namespace (Istio uses only the oldest)")
    return (*scopes.root[:1], *scopes.namespace[:1], *scopes.workload)


def _spec(resource: Resource) -> TelemetrySpec:
    spec: TelemetrySpec = resource.spec
    return spec


def _applies(mode: WorkloadMode | None, side: Side) -> bool:
    """Whether a ``match.mode`` covers ``side`` (no match = both sides)."""
    return mode is None or mode == "CLIENT_AND_SERVER" or mode == side


def _sides(mode: WorkloadMode | None) -> tuple[Side, ...]:
    if mode == "CLIENT" or mode == "SERVER":
        return (mode,)
    return ("CLIENT", "SERVER")


# --- providers --------------------------------------------------------------------------


class _Warnings:
    """Ordered, de-duplicated warning texts (both sides resolve the same providers)."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def add(self, text: str) -> None:
        self._seen.setdefault(text, None)

    def as_tuple(self) -> tuple[str, ...]:
        return tuple(self._seen)


class _ProviderIndex:
    """``extensionProviders`` plus Istio's defaults, looked up case-insensitively like Istio."""

    def __init__(self, mesh: MeshConfig, warnings: _Warnings) -> None:
        self._by_name: dict[str, ExtensionProvider] = {}
        for provider in mesh.effective_extension_providers():
            self._by_name.setdefault(provider.name.lower(), provider)
        self._warnings = warnings

    def get(self, name: str, wanted: frozenset[str], signal: str,
            where: str) -> ExtensionProvider | None:
        """The provider called ``name`` if it provides ``signal``; else None, warned."""
        provider = self._by_name.get(name.lower())
        if provider is None:
            known = ", ".join(sorted(p.name for p in self._by_name.values()))
            self._warnings.add(f"{where}: {signal} provider {name!r} is not defined in "
                               f"meshConfig.extensionProviders (known: {known}); ignored")
            return None
        kind = provider.provider_type
        if kind not in wanted:
            self._warnings.add(f"{where}: provider {name!r} is a {_wire(kind)} provider, "
                               f"which does not provide {signal}; ignored")
            return None
        return provider


def _wire(provider_type: str | None) -> str:
    """``envoy_file_access_log`` -> ``envoyFileAccessLog`` (the YAML spelling)."""
    if provider_type is None:
        return "typeless"
    head, *rest = provider_type.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _dedupe(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


# --- tracing ----------------------------------------------------------------------------


def _resolve_tracing(applied: Sequence[Resource], mesh: MeshConfig, side: Side,
                     providers: _ProviderIndex, warnings: _Warnings) -> TracingPolicy:
    """One side's tracing; the rules are on :func:`resolve_telemetry`."""
    entries = [(r, _spec(r).tracing[0]) for r in applied if _spec(r).tracing]
    defaults = mesh.default_providers.tracing
    legacy_tags = _legacy_custom_tags(mesh)
    if not entries and not defaults:
        return TracingPolicy(enabled=mesh.enable_tracing,
                             sampling_percentage=_proxy_sampling(mesh),
                             disable_span_reporting=False, disable_context_propagation=False,
                             custom_tags=legacy_tags, provider=None)
    name: str | None = defaults[0] if defaults else None
    where = "meshConfig.defaultProviders.tracing"
    sampling: float | None = None
    span_off = False
    propagation_off = False
    tags: Mapping[str, CustomTag] = _EMPTY
    for resource, tracing in entries:
        if not _applies(tracing.match.mode if tracing.match else None, side):
            continue
        if tracing.providers:
            name, where = tracing.providers[0].name, resource.ref
        if tracing.random_sampling_percentage is not None:
            sampling = tracing.random_sampling_percentage
        if tracing.disable_span_reporting is not None:
            span_off = tracing.disable_span_reporting
        if tracing.disable_context_propagation is not None:
            propagation_off = tracing.disable_context_propagation
        if tracing.custom_tags:
            tags = MappingProxyType(dict(tracing.custom_tags))
    provider = None
    if name is not None:
        provider = providers.get(name, TRACING_PROVIDER_TYPES, "tracing", where)
    return TracingPolicy(
        # No provider named at all: Istio turns tracing off, since its proxy would have
        # nowhere to send spans. Here spans go to the application's own OpenTelemetry
        # SDK, which is the provider, so tracing follows ``enableTracing`` instead. A
        # provider that is named but unknown still turns it off (warned), as in Istio.
        enabled=provider is not None if name is not None else mesh.enable_tracing,
        sampling_percentage=sampling if sampling is not None else _proxy_sampling(mesh),
        disable_span_reporting=span_off,
        disable_context_propagation=propagation_off,
        custom_tags=tags or legacy_tags,
        provider=provider.name if provider is not None else None,
    )


def _proxy_sampling(mesh: MeshConfig) -> float:
    """``defaultConfig.tracing.sampling``; 0 (proto3's unset) or > 100 means 1%, as in Istio."""
    tracing = mesh.default_config.tracing
    if tracing is None or tracing.sampling == 0 or tracing.sampling > 100:
        return DEFAULT_SAMPLING
    return tracing.sampling


def _legacy_custom_tags(mesh: MeshConfig) -> Mapping[str, CustomTag]:
    """``defaultConfig.tracing.customTags`` in the Telemetry API's shape."""
    tracing = mesh.default_config.tracing
    if tracing is None or not tracing.custom_tags:
        return _EMPTY
    tags: dict[str, CustomTag] = {}
    for name, tag in tracing.custom_tags.items():
        if tag.literal is not None:
            tags[name] = CustomTag(literal=LiteralTag(value=tag.literal.value))
        elif tag.environment is not None:
            tags[name] = CustomTag(environment=EnvironmentTag(
                name=tag.environment.name, default_value=tag.environment.default_value))
        elif tag.header is not None:
            tags[name] = CustomTag(header=RequestHeaderTag(
                name=tag.header.name, default_value=tag.header.default_value))
    return MappingProxyType(tags)


# --- metrics ----------------------------------------------------------------------------


@dataclass(slots=True)
class _SideMetrics:
    """Metric overrides accumulated for one side."""

    all_disabled: bool = False
    disabled: dict[str, bool] = field(default_factory=dict)
    tags: dict[str, dict[str, TagOverride]] = field(default_factory=dict)

    def policy(self, providers: tuple[str, ...]) -> MetricsPolicy:
        off = {name for name, value in self.disabled.items() if value}
        if self.all_disabled:
            off.update(STANDARD_METRICS)
        return MetricsPolicy(
            enabled=bool(providers) and not self.all_disabled,
            disabled_metrics=frozenset(off),
            tag_overrides=MappingProxyType({
                metric: MappingProxyType(dict(sorted(tags.items())))
                for metric, tags in sorted(self.tags.items())
            }),
            providers=providers,
        )


def _resolve_metrics(applied: Sequence[Resource], mesh: MeshConfig,
                     providers: _ProviderIndex) -> dict[Side, MetricsPolicy]:
    """Both sides' metrics; the rules are on :func:`resolve_telemetry`."""
    defaults = _dedupe(mesh.default_providers.metrics) or [DEFAULT_METRICS_PROVIDER]
    where = ("meshConfig.defaultProviders.metrics" if mesh.default_providers.metrics
             else "default metrics provider")
    entries = [(r, m) for r in applied for m in _spec(r).metrics]
    in_scope = defaults
    for resource, metrics in entries:
        if metrics.providers:
            in_scope, where = _dedupe(p.name for p in metrics.providers), resource.ref
    scope = set(in_scope)
    state: dict[Side, _SideMetrics] = {"CLIENT": _SideMetrics(), "SERVER": _SideMetrics()}
    parent = defaults
    for _, metrics in entries:
        names = [p.name for p in metrics.providers] or parent
        parent = names
        if scope.isdisjoint(names):
            continue  # configures a provider a narrower level replaced
        for override in metrics.overrides:
            _apply_override(override, state)
    found = (providers.get(name, METRICS_PROVIDER_TYPES, "metrics", where) for name in in_scope)
    resolved = tuple(_dedupe(p.name for p in found if p is not None))
    return {side: state[side].policy(resolved) for side in state}


def _apply_override(override: MetricsOverrides, state: Mapping[Side, _SideMetrics]) -> None:
    match = override.match
    sides = _sides(match.mode if match is not None else None)
    if override.disabled and _is_all_metrics(match):
        for side in sides:
            state[side].all_disabled = True
        return
    metrics = _metric_names(match)
    for side in sides:
        current = state[side]
        current.all_disabled = False  # Istio: a narrower override re-enables the side
        for metric in metrics:
            if override.disabled is not None:
                current.disabled[metric] = override.disabled
            if override.tag_overrides:
                current.tags.setdefault(metric, {}).update(override.tag_overrides)


def _is_all_metrics(match: MetricSelector | None) -> bool:
    """ALL_METRICS, or no metric at all (Istio's ``isAllMetrics``)."""
    if match is None or (match.custom_metric is None and match.metric is None):
        return True
    return match.custom_metric is None and match.metric == "ALL_METRICS"


def _metric_names(match: MetricSelector | None) -> tuple[str, ...]:
    if match is not None and match.custom_metric is not None:
        return (match.custom_metric,)
    if match is None or match.metric is None or match.metric == "ALL_METRICS":
        return STANDARD_METRICS
    return (match.metric,)


# --- access logs ------------------------------------------------------------------------


def _resolve_access_log(applied: Sequence[Resource], mesh: MeshConfig, side: Side,
                        providers: _ProviderIndex, warnings: _Warnings) -> AccessLogPolicy:
    """One side's access logs; the rules are on :func:`resolve_telemetry`."""
    defaults = _dedupe(mesh.default_providers.access_logging)
    levels = [r for r in applied if _spec(r).access_logging]
    if not levels and not defaults:
        return _mesh_access_log(mesh)
    default_where = "meshConfig.defaultProviders.accessLogging"
    # name -> (disabled, filter, where it was decided)
    chosen: dict[str, tuple[bool, str | None, str]] = {
        name: (False, None, default_where) for name in defaults}
    if levels:
        chosen = _merge_logs(levels, defaults, side, warnings)
    built: list[AccessLogProvider] = []
    istio_built = False
    for name in sorted(chosen):
        disabled, expression, where = chosen[name]
        provider = providers.get(name, ACCESS_LOG_PROVIDER_TYPES, "access logging", where)
        if provider is None:
            continue
        istio_built = istio_built or provider.provider_type in _ISTIO_ACCESS_LOG_TYPES
        if disabled:
            continue
        if provider.envoy_file_access_log is None:
            warnings.add(f"{where}: access log provider {name!r} "
                         f"({_wire(provider.provider_type)}) is not supported; only "
                         f"envoyFileAccessLog providers are; ignored")
            continue
        built.append(_file_provider(provider, expression))
    if not istio_built:
        return _mesh_access_log(mesh)
    filters = {p.filter_expression for p in built}
    return AccessLogPolicy(enabled=bool(built), providers=tuple(built),
                           filter_expression=filters.pop() if len(filters) == 1 else None)


def _merge_logs(levels: Sequence[Resource], defaults: list[str], side: Side,
                warnings: _Warnings) -> dict[str, tuple[bool, str | None, str]]:
    """Provider name -> (disabled, filter expression, deciding resource) for one side."""
    in_scope = defaults
    for resource in levels:
        named = _dedupe(p.name for entry in _spec(resource).access_logging
                        if _applies(entry.match.mode if entry.match else None, side)
                        for p in entry.providers)
        if named:
            in_scope = named
    scope = set(in_scope)
    chosen: dict[str, tuple[bool, str | None, str]] = {}
    parent = defaults
    for resource in levels:
        for entry in _spec(resource).access_logging:
            names = [p.name for p in entry.providers] or parent
            parent = names
            if not _applies(entry.match.mode if entry.match else None, side):
                continue
            if entry.disabled and not names:
                warnings.add(f"{resource.ref}: accessLogging disabled: true names no provider "
                             f"and inherits none, so it disables nothing (as in Istio: "
                             f"meshConfig.accessLogFile logging stays on); name the provider, "
                             f"e.g. providers: [{{name: envoy}}]")
            expression = entry.filter.expression if entry.filter is not None else None
            for name in names:
                if name in scope:
                    chosen[name] = (bool(entry.disabled), expression or None, resource.ref)
    return chosen


def _file_provider(provider: ExtensionProvider, expression: str | None) -> AccessLogProvider:
    """An ``envoyFileAccessLog`` provider as a sink; ``labels: {}`` means default JSON."""
    settings = provider.envoy_file_access_log
    assert settings is not None
    path = settings.path or DEFAULT_LOG_PATH
    fmt = settings.log_format
    if fmt is not None and fmt.labels is not None:
        return AccessLogProvider(provider.name, path, "JSON", None, _json_labels(fmt.labels),
                                 expression)
    text = fmt.text if fmt is not None and fmt.text else None
    return AccessLogProvider(provider.name, path, "TEXT", text, None, expression)


def _mesh_access_log(mesh: MeshConfig) -> AccessLogPolicy:
    """The legacy access log of ``meshConfig.accessLogFile`` (off when it is empty).

    With JSON encoding ``accessLogFormat`` is a JSON object of labels; Istio uses the
    default labels when it is empty or not an object.
    """
    if not mesh.access_log_file:
        return AccessLogPolicy(enabled=False, providers=(), filter_expression=None)
    if mesh.access_log_encoding == "JSON":
        labels: Mapping[str, str] | None = None
        if mesh.access_log_format:
            try:
                data = json.loads(mesh.access_log_format)
            except ValueError:
                data = None
            if isinstance(data, dict):
                labels = _json_labels(data)
        sink = AccessLogProvider(MESH_ACCESS_LOG, mesh.access_log_file, "JSON", None, labels)
    else:
        sink = AccessLogProvider(MESH_ACCESS_LOG, mesh.access_log_file, "TEXT",
                                 mesh.access_log_format or None, None)
    return AccessLogPolicy(enabled=True, providers=(sink,), filter_expression=None)


def _json_labels(labels: Mapping[str, Any]) -> Mapping[str, str] | None:
    """JSON log labels; non-string values (nested objects) kept as their JSON text."""
    if not labels:
        return None
    return MappingProxyType({
        str(key): value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for key, value in labels.items()
    })


DEFAULT_POLICY: TelemetryPolicy = resolve_telemetry(Config(()), MeshConfig(), "default", {})
"""What a workload gets with no Telemetry resources and Istio's default mesh config:
metrics on (prometheus), tracing on at 1% (legacy tracer), access logs off."""
