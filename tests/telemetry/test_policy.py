"""Resolving Telemetry resources for one workload: Istio's hierarchy, modes and defaults.

Every case loads real YAML through the project's loader (resources and mesh config),
so what is asserted is what a user's files would produce.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping

import pytest

from meshsdk.config.loader import config_from_result, load_mesh_config_string, load_string
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import PolicyScopes, policies_for
from meshsdk.telemetry.policy import (
    DEFAULT_POLICY,
    DEFAULT_SAMPLING,
    MESH_ACCESS_LOG,
    STANDARD_METRICS,
    TelemetryPolicy,
    resolve_telemetry,
)

TEL = "telemetry.istio.io/v1"

ZIPKIN_MESH = """
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
defaultProviders:
  tracing: [zipkin]
"""


def telemetry(name: str, namespace: str, spec: str, *, created: str | None = None) -> str:
    """A Telemetry document; ``spec`` is the YAML body under ``spec:``."""
    stamp = f"\n  creationTimestamp: '{created}'" if created else ""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: {TEL}\nkind: Telemetry\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}{stamp}\nspec:\n{body}\n")


def load(*docs: str, mesh: str = "") -> tuple[Config, MeshConfig]:
    result = load_string("---\n".join(docs))
    assert not result.errors, [d.message for d in result.errors]
    parsed, diagnostics = load_mesh_config_string(textwrap.dedent(mesh))
    assert parsed is not None, [d.message for d in diagnostics]
    return config_from_result(result, mesh=parsed), parsed


def resolve(*docs: str, mesh: str = "", namespace: str = "default",
            labels: Mapping[str, str] | None = None, **workload: str) -> TelemetryPolicy:
    config, parsed = load(*docs, mesh=mesh)
    return resolve_telemetry(config, parsed, namespace, labels or {}, **workload)


# --- defaults ------------------------------------------------------------------------------


def test_defaults_metrics_on_tracing_one_percent_logs_off() -> None:
    policy = resolve()
    assert policy == DEFAULT_POLICY
    for side in (policy.client, policy.server):
        assert side.metrics.enabled
        assert side.metrics.providers == ("prometheus",)
        assert side.metrics.disabled_metrics == frozenset()
        assert dict(side.metrics.tag_overrides) == {}
        assert side.tracing.enabled
        assert side.tracing.sampling_percentage == DEFAULT_SAMPLING == 1.0
        assert side.tracing.provider is None  # the legacy defaultConfig.tracing tracer
        assert not side.tracing.disable_span_reporting
        assert not side.access_log.enabled
        assert side.access_log.providers == ()
    assert policy.source == () and policy.warnings == ()


def test_mesh_sampling_and_enable_tracing_without_telemetry() -> None:
    policy = resolve(mesh="defaultConfig:\n  tracing:\n    sampling: 25\n")
    assert policy.client.tracing.sampling_percentage == 25.0
    # proto3 cannot tell 0 from unset: Istio falls back to its 1% default.
    assert resolve(mesh="defaultConfig:\n  tracing:\n    sampling: 0\n"
                   ).server.tracing.sampling_percentage == 1.0
    off = resolve(mesh="enableTracing: false\n")
    assert not off.client.tracing.enabled and not off.server.tracing.enabled


def test_legacy_custom_tags_are_used_when_telemetry_sets_none() -> None:
    mesh = ZIPKIN_MESH + "defaultConfig:\n  tracing:\n    customTags:\n      env:\n" \
                         "        literal: {value: prod}\n"
    policy = resolve(telemetry("mesh", "istio-system", "tracing:\n- randomSamplingPercentage: 5"),
                     mesh=mesh)
    tag = policy.client.tracing.custom_tags["env"]
    assert tag.literal is not None and tag.literal.value == "prod"


# --- mesh access log -----------------------------------------------------------------------


def test_mesh_access_log_file_text() -> None:
    policy = resolve(mesh="accessLogFile: /dev/stdout\naccessLogFormat: '%REQ(:PATH)%'\n")
    for side in (policy.client, policy.server):
        assert side.access_log.enabled
        (sink,) = side.access_log.providers
        assert (sink.name, sink.path, sink.encoding) == (MESH_ACCESS_LOG, "/dev/stdout", "TEXT")
        assert sink.text_format == "%REQ(:PATH)%"
        assert sink.json_labels is None


def test_mesh_access_log_file_json() -> None:
    policy = resolve(mesh="accessLogFile: /var/log/access.log\naccessLogEncoding: JSON\n"
                          "accessLogFormat: '{\"path\": \"%REQ(:PATH)%\", \"code\": "
                          "\"%RESPONSE_CODE%\"}'\n")
    (sink,) = policy.server.access_log.providers
    assert (sink.path, sink.encoding, sink.text_format) == ("/var/log/access.log", "JSON", None)
    assert dict(sink.json_labels or {}) == {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}
    default = resolve(mesh="accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n")
    (sink,) = default.client.access_log.providers
    assert sink.encoding == "JSON" and sink.json_labels is None  # Istio's default labels


# --- hierarchy -----------------------------------------------------------------------------


SAMPLING_LEVELS = (
    telemetry("mesh", "istio-system", "tracing:\n- randomSamplingPercentage: 10"),
    telemetry("ns", "shop", "tracing:\n- randomSamplingPercentage: 50"),
    telemetry("reviews", "shop", """
        selector:
          matchLabels: {app: reviews}
        tracing:
        - randomSamplingPercentage: 100
        """),
)


def test_sampling_root_then_namespace_then_workload() -> None:
    workload = resolve(*SAMPLING_LEVELS, mesh=ZIPKIN_MESH, namespace="shop",
                       labels={"app": "reviews", "version": "v1"})
    assert workload.client.tracing.sampling_percentage == 100.0
    assert workload.server.tracing.sampling_percentage == 100.0
    assert workload.client.tracing.enabled and workload.client.tracing.provider == "zipkin"
    assert workload.source == ("Telemetry istio-system/mesh", "Telemetry shop/ns",
                               "Telemetry shop/reviews")
    other_ns = resolve(*SAMPLING_LEVELS, mesh=ZIPKIN_MESH, namespace="web",
                       labels={"app": "reviews"})
    assert other_ns.client.tracing.sampling_percentage == 10.0
    assert other_ns.source == ("Telemetry istio-system/mesh",)


def test_selector_that_does_not_match_leaves_the_namespace_value() -> None:
    policy = resolve(*SAMPLING_LEVELS, mesh=ZIPKIN_MESH, namespace="shop",
                     labels={"app": "ratings"})
    assert policy.client.tracing.sampling_percentage == 50.0
    assert policy.source == ("Telemetry istio-system/mesh", "Telemetry shop/ns")


def test_two_namespace_level_resources_oldest_wins() -> None:
    # The younger one is loaded first, so load order alone would pick the wrong one.
    newer = telemetry("newer", "shop", "tracing:\n- randomSamplingPercentage: 70",
                      created="2024-06-01T00:00:00Z")
    older = telemetry("older", "shop", "tracing:\n- randomSamplingPercentage: 30",
                      created="2024-01-01T00:00:00Z")
    policy = resolve(newer, older, mesh=ZIPKIN_MESH, namespace="shop")
    assert policy.client.tracing.sampling_percentage == 30.0
    assert policy.source == ("Telemetry shop/older",)
    assert any("Telemetry shop/newer" in w and "older" in w for w in policy.warnings)


def test_all_matching_workload_resources_apply_youngest_last() -> None:
    # Current Istio applies every matching workload-level Telemetry, oldest first.
    young = telemetry("young", "shop", """
        selector:
          matchLabels: {app: reviews}
        tracing:
        - randomSamplingPercentage: 90
        """, created="2024-06-01T00:00:00Z")
    old = telemetry("old", "shop", """
        selector:
          matchLabels: {version: v1}
        tracing:
        - randomSamplingPercentage: 60
          disableSpanReporting: true
        """, created="2024-01-01T00:00:00Z")
    policy = resolve(young, old, mesh=ZIPKIN_MESH, namespace="shop",
                     labels={"app": "reviews", "version": "v1"})
    assert policy.source == ("Telemetry shop/old", "Telemetry shop/young")
    assert policy.client.tracing.sampling_percentage == 90.0
    assert policy.client.tracing.disable_span_reporting  # only the older one sets it


def test_namespace_wide_resources_of_the_root_namespace_are_the_root_level() -> None:
    policy = resolve(telemetry("mesh", "istio-system", "tracing:\n- randomSamplingPercentage: 10"),
                     mesh=ZIPKIN_MESH, namespace="istio-system")
    assert policy.client.tracing.sampling_percentage == 10.0
    assert policy.source == ("Telemetry istio-system/mesh",)


def test_target_refs_select_by_kind_and_name() -> None:
    doc = telemetry("gw", "shop", """
        targetRefs:
        - kind: Service
          group: ""
          name: reviews
        tracing:
        - randomSamplingPercentage: 42
        """)
    named = resolve(doc, mesh=ZIPKIN_MESH, namespace="shop", workload_kind="Service",
                    workload_name="reviews")
    assert named.client.tracing.sampling_percentage == 42.0
    other = resolve(doc, mesh=ZIPKIN_MESH, namespace="shop", workload_kind="Service",
                    workload_name="ratings")
    assert other.client.tracing.sampling_percentage == 1.0
    assert other.source == ()
    other_kind = resolve(doc, mesh=ZIPKIN_MESH, namespace="shop", workload_kind="ServiceEntry",
                         workload_name="reviews")
    assert other_kind.source == ()


def test_gateway_target_ref_matches_the_gateway_name_label() -> None:
    doc = telemetry("gw", "shop", """
        targetRef:
          kind: Gateway
          group: gateway.networking.k8s.io
          name: ingress
        tracing:
        - randomSamplingPercentage: 7
        """)
    policy = resolve(doc, mesh=ZIPKIN_MESH, namespace="shop",
                     labels={"gateway.networking.k8s.io/gateway-name": "ingress"})
    assert policy.server.tracing.sampling_percentage == 7.0


# --- tracing -------------------------------------------------------------------------------


def test_client_and_server_modes_are_split() -> None:
    policy = resolve(telemetry("ns", "shop", """
        tracing:
        - match: {mode: CLIENT}
          randomSamplingPercentage: 20
        """), telemetry("reviews", "shop", """
        selector:
          matchLabels: {app: reviews}
        tracing:
        - match: {mode: SERVER}
          randomSamplingPercentage: 80
          disableSpanReporting: true
        """), mesh=ZIPKIN_MESH, namespace="shop", labels={"app": "reviews"})
    assert policy.client.tracing.sampling_percentage == 20.0
    assert not policy.client.tracing.disable_span_reporting
    assert policy.server.tracing.sampling_percentage == 80.0
    assert policy.server.tracing.disable_span_reporting


def test_telemetry_tracing_without_any_provider_uses_the_apps_sdk() -> None:
    """Istio turns tracing off here (its proxy has nowhere to send spans); the
    embedded mesh's spans go to the application's OTel SDK, so it stays on."""
    policy = resolve(telemetry("mesh", "istio-system", "tracing:\n- randomSamplingPercentage: 10"))
    assert policy.client.tracing.enabled and policy.server.tracing.enabled
    assert policy.client.tracing.provider is None
    assert policy.client.tracing.sampling_percentage == 10.0
    off = resolve(telemetry("mesh", "istio-system", "tracing:\n- randomSamplingPercentage: 10"),
                  mesh="enableTracing: false\n")
    assert not off.client.tracing.enabled


def test_telemetry_tracing_ignores_enable_tracing_false() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        tracing:
        - providers: [{name: zipkin}]
        """), mesh=ZIPKIN_MESH + "enableTracing: false\n")
    assert policy.client.tracing.enabled and policy.client.tracing.provider == "zipkin"


def test_custom_tags_of_a_narrower_level_replace_the_broader_ones() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        tracing:
        - customTags:
            team: {literal: {value: core}}
            user: {header: {name: x-user}}
        """), telemetry("ns", "shop", """
        tracing:
        - customTags:
            team: {literal: {value: shop}}
        """), mesh=ZIPKIN_MESH, namespace="shop")
    tags = policy.client.tracing.custom_tags
    assert set(tags) == {"team"}  # Istio replaces the whole map
    assert tags["team"].literal is not None and tags["team"].literal.value == "shop"


def test_unknown_tracing_provider_warns_and_turns_tracing_off() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        tracing:
        - providers: [{name: jaeger}]
        """), mesh=ZIPKIN_MESH)
    assert not policy.client.tracing.enabled and policy.client.tracing.provider is None
    assert any(w.startswith("Telemetry istio-system/mesh:") and "'jaeger'" in w
               for w in policy.warnings)


def test_provider_of_the_wrong_type_for_tracing_is_ignored() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        tracing:
        - providers: [{name: prometheus}]
        """))
    assert not policy.server.tracing.enabled
    assert any("'prometheus'" in w and "does not provide tracing" in w for w in policy.warnings)


# --- metrics -------------------------------------------------------------------------------


def test_disabling_request_count_for_client_only() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        metrics:
        - providers: [{name: prometheus}]
          overrides:
          - match: {metric: REQUEST_COUNT, mode: CLIENT}
            disabled: true
        """))
    assert policy.client.metrics.disabled_metrics == {"REQUEST_COUNT"}
    assert policy.client.metrics.enabled
    assert policy.server.metrics.disabled_metrics == frozenset()


def test_all_metrics_disabled_then_reenabled_by_a_narrower_override() -> None:
    root = telemetry("mesh", "istio-system", """
        metrics:
        - overrides:
          - match: {metric: ALL_METRICS}
            disabled: true
        """)
    policy = resolve(root, namespace="shop")
    for side in (policy.client, policy.server):
        assert not side.metrics.enabled
        assert side.metrics.disabled_metrics == frozenset(STANDARD_METRICS)
    # Istio: a narrower override that names a metric for the side re-enables the side.
    ns = telemetry("ns", "shop", """
        metrics:
        - overrides:
          - match: {metric: REQUEST_COUNT, mode: SERVER}
            tagOverrides:
              request_protocol: {operation: REMOVE}
        """)
    policy = resolve(root, ns, namespace="shop")
    assert policy.server.metrics.enabled and policy.server.metrics.disabled_metrics == frozenset()
    assert not policy.client.metrics.enabled


def test_override_without_a_metric_means_all_metrics() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        metrics:
        - overrides:
          - match: {mode: SERVER}
            disabled: true
        """))
    assert not policy.server.metrics.enabled
    assert policy.client.metrics.enabled


def test_tag_overrides_remove_and_upsert_accumulate_narrowest_last() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        metrics:
        - overrides:
          - match: {metric: ALL_METRICS}
            tagOverrides:
              request_protocol: {operation: REMOVE}
              team: {value: "'core'"}
        """), telemetry("reviews", "shop", """
        selector:
          matchLabels: {app: reviews}
        metrics:
        - overrides:
          - match: {metric: REQUEST_COUNT, mode: CLIENT}
            tagOverrides:
              team: {operation: UPSERT, value: "'reviews'"}
              response_flags: {operation: REMOVE}
        """), namespace="shop", labels={"app": "reviews"})
    client = policy.client.metrics.tag_overrides
    assert set(client) == set(STANDARD_METRICS)
    assert client["REQUEST_COUNT"]["team"].value == "'reviews'"
    assert client["REQUEST_COUNT"]["response_flags"].operation == "REMOVE"
    assert client["REQUEST_COUNT"]["request_protocol"].operation == "REMOVE"
    assert client["REQUEST_DURATION"]["team"].value == "'core'"
    server = policy.server.metrics.tag_overrides
    assert server["REQUEST_COUNT"]["team"].value == "'core'"
    assert "response_flags" not in server["REQUEST_COUNT"]


def test_narrower_metrics_providers_drop_the_broader_providers_overrides() -> None:
    mesh = "extensionProviders:\n- name: sd\n  stackdriver: {}\n"
    policy = resolve(telemetry("mesh", "istio-system", """
        metrics:
        - providers: [{name: prometheus}]
          overrides:
          - match: {metric: REQUEST_SIZE}
            disabled: true
        """), telemetry("ns", "shop", """
        metrics:
        - providers: [{name: sd}]
        """), mesh=mesh, namespace="shop")
    assert policy.client.metrics.providers == ("sd",)
    assert policy.client.metrics.disabled_metrics == frozenset()


def test_unknown_metrics_provider_is_ignored_with_a_warning() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        metrics:
        - providers: [{name: prometheus}, {name: statsd}]
        """))
    assert policy.client.metrics.providers == ("prometheus",)
    assert any(w.startswith("Telemetry istio-system/mesh:") and "'statsd'" in w
               for w in policy.warnings)


# --- access logs ---------------------------------------------------------------------------


def test_telemetry_envoy_provider_turns_access_logs_on() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        accessLogging:
        - providers: [{name: envoy}]
          filter: {expression: "response.code >= 400"}
        """))
    log = policy.client.access_log
    assert log.enabled and log.filter_expression == "response.code >= 400"
    (sink,) = log.providers
    assert (sink.name, sink.path, sink.encoding, sink.text_format, sink.json_labels) == (
        "envoy", "/dev/stdout", "TEXT", None, None)
    assert sink.filter_expression == "response.code >= 400"


def test_workload_disabled_access_logging_beats_root_enabled() -> None:
    docs = (telemetry("mesh", "istio-system", "accessLogging:\n- providers: [{name: envoy}]"),
            telemetry("reviews", "shop", """
                selector:
                  matchLabels: {app: reviews}
                accessLogging:
                - disabled: true
                """))
    off = resolve(*docs, namespace="shop", labels={"app": "reviews"})
    assert not off.client.access_log.enabled and not off.server.access_log.enabled
    assert off.client.access_log.providers == ()
    on = resolve(*docs, namespace="shop", labels={"app": "ratings"})
    assert on.client.access_log.enabled


def test_narrower_access_log_providers_replace_the_broader_ones() -> None:
    mesh = "extensionProviders:\n- name: audit\n  envoyFileAccessLog: {path: /tmp/audit.log}\n"
    root = telemetry("mesh", "istio-system", "accessLogging:\n- providers: [{name: envoy}]")
    ns = telemetry("ns", "shop", "accessLogging:\n- providers: [{name: audit}]")
    policy = resolve(root, ns, mesh=mesh, namespace="shop")
    assert [(s.name, s.path) for s in policy.client.access_log.providers] == [
        ("audit", "/tmp/audit.log")]


def test_disabled_provider_also_overrides_the_mesh_access_log_file() -> None:
    policy = resolve(telemetry("ns", "shop", """
        accessLogging:
        - providers: [{name: envoy}]
          disabled: true
        """), mesh="accessLogFile: /dev/stdout\n", namespace="shop")
    assert not policy.server.access_log.enabled


def test_disabled_without_providers_leaves_the_mesh_log_on_as_in_istio() -> None:
    policy = resolve(telemetry("ns", "shop", "accessLogging:\n- disabled: true"),
                     mesh="accessLogFile: /dev/stdout\n", namespace="shop")
    assert policy.server.access_log.enabled
    assert policy.server.access_log.providers[0].name == MESH_ACCESS_LOG
    assert any("Telemetry shop/ns" in w and "disables nothing" in w for w in policy.warnings)


def test_access_log_mode_split() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        accessLogging:
        - match: {mode: SERVER}
          providers: [{name: envoy}]
        """))
    assert policy.server.access_log.enabled
    assert not policy.client.access_log.enabled


def test_file_provider_formats_text_and_json() -> None:
    mesh = """
        extensionProviders:
        - name: text-log
          envoyFileAccessLog:
            path: /tmp/text.log
            logFormat: {text: "%REQ(:METHOD)% %RESPONSE_CODE%"}
        - name: json-default
          envoyFileAccessLog:
            logFormat: {labels: {}}
        - name: json-custom
          envoyFileAccessLog:
            path: /tmp/json.log
            logFormat:
              labels: {method: "%REQ(:METHOD)%"}
        """
    policy = resolve(telemetry("mesh", "istio-system", """
        accessLogging:
        - providers: [{name: text-log}, {name: json-default}, {name: json-custom}]
        """), mesh=mesh)
    sinks = {s.name: s for s in policy.client.access_log.providers}
    assert [s.name for s in policy.client.access_log.providers] == sorted(sinks)
    assert (sinks["text-log"].encoding, sinks["text-log"].path) == ("TEXT", "/tmp/text.log")
    assert sinks["text-log"].text_format == "%REQ(:METHOD)% %RESPONSE_CODE%"
    assert sinks["json-default"].encoding == "JSON"
    assert sinks["json-default"].path == "/dev/stdout"
    assert sinks["json-default"].json_labels is None
    assert dict(sinks["json-custom"].json_labels or {}) == {"method": "%REQ(:METHOD)%"}


def test_unknown_access_log_provider_is_ignored_with_a_warning() -> None:
    policy = resolve(telemetry("mesh", "istio-system", """
        accessLogging:
        - providers: [{name: envoy}, {name: fluentd}]
        """))
    assert [s.name for s in policy.client.access_log.providers] == ["envoy"]
    assert any(w.startswith("Telemetry istio-system/mesh:") and "'fluentd'" in w
               for w in policy.warnings)


def test_default_access_log_provider_applies_without_telemetry() -> None:
    policy = resolve(mesh="defaultProviders:\n  accessLogging: [envoy]\n")
    assert [s.name for s in policy.server.access_log.providers] == ["envoy"]


# --- selection -----------------------------------------------------------------------------


def names(resources: Iterable[Resource]) -> list[str]:
    return [r.name for r in resources]


def test_selection_levels_and_empty_selector() -> None:
    config, _ = load(
        telemetry("mesh", "istio-system", "tracing: []"),
        telemetry("root-sel", "istio-system", "selector:\n  matchLabels: {app: a}"),
        telemetry("ns-empty-selector", "shop", "selector: {}"),
        telemetry("a", "shop", "selector:\n  matchLabels: {app: a}"),
        telemetry("b", "shop", "selector:\n  matchLabels: {app: b}"),
        telemetry("elsewhere", "web", ""),
    )
    items = config.of_kind("Telemetry")
    scopes = policies_for(items, "shop", {"app": "a"}, root_namespace="istio-system")
    assert names(scopes.root) == ["mesh"]
    assert names(scopes.namespace) == ["ns-empty-selector"]  # selector: {} is namespace-wide
    assert names(scopes.workload) == ["a"]
    assert names(scopes) == ["mesh", "ns-empty-selector", "a"]
    # Root-namespace selector policies reach other namespaces only when asked to.
    wide = policies_for(items, "shop", {"app": "a"}, root_namespace="istio-system",
                        root_selectors=True)
    assert names(wide.workload) == ["root-sel", "a"]
    # A workload of the root namespace: its namespace-wide policies are the root level.
    in_root = policies_for(items, "istio-system", {"app": "a"}, root_namespace="istio-system")
    assert (names(in_root.root), in_root.namespace, names(in_root.workload)) == (
        ["mesh"], (), ["root-sel"])
    # No root namespace: no mesh level, istio-system is an ordinary namespace.
    no_root = policies_for(items, "istio-system", {}, root_namespace="")
    assert no_root.root == () and names(no_root.namespace) == ["mesh"]
    assert policies_for(items, "other", {}, root_namespace="") == PolicyScopes()


@pytest.mark.parametrize("created, expected", [
    (("2024-02-01T00:00:00Z", "2024-01-01T00:00:00Z"), ["second", "first"]),
    ((None, None), ["first", "second"]),
])
def test_selection_orders_oldest_first(created: tuple[str | None, str | None],
                                       expected: list[str]) -> None:
    config, _ = load(telemetry("first", "shop", "", created=created[0]),
                     telemetry("second", "shop", "", created=created[1]))
    scopes = policies_for(config.of_kind("Telemetry"), "shop", {}, root_namespace="istio-system")
    assert [r.name for r in scopes.namespace] == expected
