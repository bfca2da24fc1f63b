"""Semantic rules of the security and telemetry kinds and of MeshConfig.

Each invalid case is a whole YAML document; the line the error must point at is
marked with ``#<`` in the text, so the expected line is part of the case itself.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from meshsdk.config.diagnostics import Diagnostic, format_path
from meshsdk.config.loader import load_mesh_config_string, load_string
from meshsdk.config.mesh import MeshConfig

SEC = "security.istio.io/v1"
TEL = "telemetry.istio.io/v1"


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    path: tuple[str | int, ...]
    message: str  # a fragment the message must contain


def doc(kind: str, spec: str, api: str = SEC) -> str:
    """A document of ``kind`` whose spec body is ``spec`` (indented two spaces)."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: t\nspec:\n{body}\n"


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if "#<" in line]
    assert len(lines) == 1, f"case must mark exactly one line with #<, got {lines}"
    return lines[0]


def describe(diags: list[Diagnostic]) -> str:
    return "\n".join(f"  {d.line}: {format_path(d.path)}: {d.message}" for d in diags) or "  none"


PA, AP, RA, TM = "PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication", "Telemetry"

KIND_CASES = [
    # --- PeerAuthentication -------------------------------------------------------------
    Case("pa-mode-enum", doc(PA, """
        mtls:
          mode: STRICTER  #<
        """), ("spec", "mtls", "mode"), "must be one of"),
    Case("pa-port-level-needs-selector", doc(PA, """
        mtls: {mode: PERMISSIVE}
        portLevelMtls:  #<
          "8080": {mode: STRICT}
        """), ("spec", "portLevelMtls"), "needs a selector"),
    Case("pa-port-level-port-range", doc(PA, """
        selector: {matchLabels: {app: web}}
        portLevelMtls:
          70000:  #<
            mode: STRICT
        """), ("spec", "portLevelMtls", 70000), "1-65535, got 70000"),
    Case("pa-port-level-empty", doc(PA, """
        selector: {matchLabels: {app: web}}
        portLevelMtls: {}  #<
        """), ("spec", "portLevelMtls"), "at least one port"),
    Case("pa-selector-wildcard", doc(PA, """
        selector:
          matchLabels:
            app: "*"  #<
        """), ("spec", "selector", "matchLabels", "app"), "wildcards are not allowed"),
    # --- AuthorizationPolicy: action, provider, attachment ----------------------------------
    Case("ap-action-enum", doc(AP, """
        action: REJECT  #<
        """), ("spec", "action"), "must be one of"),
    Case("ap-custom-needs-provider", doc(AP, """
        action: CUSTOM
        rules:
        - {}
        """).replace("spec:", "spec:  #<"), ("spec", "provider"), "provider.name"),
    Case("ap-custom-provider-name-empty", doc(AP, """
        action: CUSTOM
        provider:
          name: ""  #<
        rules:
        - {}
        """), ("spec", "provider", "name"), "must not be empty"),
    Case("ap-provider-only-with-custom", doc(AP, """
        action: DENY
        provider:  #<
          name: ext-authz
        rules:
        - {}
        """), ("spec", "provider"), "only allowed with action CUSTOM, got action DENY"),
    Case("ap-deny-without-rules", doc(AP, """
        action: DENY
        """).replace("spec:", "spec:  #<"), ("spec", "rules"), "DENY without rules"),
    Case("ap-selector-and-target-refs", doc(AP, """
        selector: {matchLabels: {app: web}}
        targetRefs:  #<
        - {kind: Gateway, group: gateway.networking.k8s.io, name: gw}
        """), ("spec", "targetRefs"), "only one of selector, targetRef or targetRefs"),
    Case("ap-target-ref-cross-namespace", doc(AP, """
        targetRefs:
        - kind: Service
          name: web
          namespace: other  #<
        """), ("spec", "targetRefs", 0, "namespace"), "got 'other'"),
    Case("ap-target-ref-kind", doc(AP, """
        targetRef:
          kind: Deployment  #<
          name: web
        """), ("spec", "targetRef", "kind"), "kind 'Deployment'"),
    Case("ap-custom-principals-unsupported", doc(AP, """
        action: CUSTOM
        provider: {name: ext-authz}
        rules:
        - from:
          - source:
              principals: [cluster.local/ns/a/sa/b]  #<
        """), ("spec", "rules", 0, "from", 0, "source", "principals"),
        "not supported with action CUSTOM"),
    # --- AuthorizationPolicy: sources ---------------------------------------------------------
    Case("ap-service-accounts-with-namespaces", doc(AP, """
        rules:
        - from:
          - source:
              namespaces: [prod]
              serviceAccounts: [prod/web]  #<
        """), ("spec", "rules", 0, "from", 0, "source", "serviceAccounts"),
        "cannot be combined with namespaces or principals in one source, found namespaces"),
    Case("ap-not-service-accounts-with-principals", doc(AP, """
        rules:
        - from:
          - source:
              principals: [cluster.local/ns/a/sa/b]
              notServiceAccounts: [a/c]  #<
        """), ("spec", "rules", 0, "from", 0, "source", "notServiceAccounts"),
        "found principals"),
    Case("ap-service-account-wildcard", doc(AP, """
        rules:
        - from:
          - source:
              serviceAccounts:
              - prod/*  #<
        """), ("spec", "rules", 0, "from", 0, "source", "serviceAccounts", 0),
        "wildcards are not allowed in service accounts, got 'prod/*'"),
    Case("ap-service-account-shape", doc(AP, """
        rules:
        - from:
          - source:
              serviceAccounts:
              - prod/web
              - a/b/c  #<
        """), ("spec", "rules", 0, "from", 0, "source", "serviceAccounts", 1),
        "'namespace/serviceAccount', got 'a/b/c'"),
    Case("ap-from-entry-without-source", doc(AP, """
        rules:
        - from:
          - {}  #<
        """), ("spec", "rules", 0, "from", 0), "needs a `source`"),
    Case("ap-empty-source", doc(AP, """
        rules:
        - from:
          - source: {}  #<
        """), ("spec", "rules", 0, "from", 0, "source"), "`source` must not be empty"),
    Case("ap-empty-from-list", doc(AP, """
        rules:
        - from: []  #<
        """), ("spec", "rules", 0, "from"), "must not be an empty list"),
    Case("ap-empty-value", doc(AP, """
        rules:
        - from:
          - source:
              principals:
              - ""  #<
        """), ("spec", "rules", 0, "from", 0, "source", "principals", 0),
        "empty value is not allowed"),
    Case("ap-ip-block-cidr", doc(AP, """
        rules:
        - from:
          - source:
              ipBlocks:
              - 10.0.0.0/8
              - 10.0.0.0/33  #<
        """), ("spec", "rules", 0, "from", 0, "source", "ipBlocks", 1), "'10.0.0.0/33'"),
    Case("ap-remote-ip-block", doc(AP, """
        rules:
        - from:
          - source:
              notRemoteIpBlocks:
              - not-an-ip  #<
        """), ("spec", "rules", 0, "from", 0, "source", "notRemoteIpBlocks", 0), "'not-an-ip'"),
    # --- AuthorizationPolicy: operations ------------------------------------------------------
    Case("ap-to-entry-without-operation", doc(AP, """
        rules:
        - to:
          - {}  #<
        """), ("spec", "rules", 0, "to", 0), "needs an `operation`"),
    Case("ap-empty-to-list", doc(AP, """
        rules:
        - to: []  #<
        """), ("spec", "rules", 0, "to"), "must not be an empty list"),
    Case("ap-port-not-numeric", doc(AP, """
        rules:
        - to:
          - operation:
              ports:
              - http  #<
        """), ("spec", "rules", 0, "to", 0, "operation", "ports", 0),
        "1-65535, got 'http'"),
    Case("ap-not-port-range", doc(AP, """
        rules:
        - to:
          - operation:
              notPorts: ["70000"]  #<
        """), ("spec", "rules", 0, "to", 0, "operation", "notPorts", 0), "got '70000'"),
    Case("ap-path-any-not-last", doc(AP, """
        rules:
        - to:
          - operation:
              paths:
              - /api/{**}/items/{*}  #<
        """), ("spec", "rules", 0, "to", 0, "operation", "paths", 0),
        "{**} must be the last template operator"),
    Case("ap-path-glob-with-template", doc(AP, """
        rules:
        - to:
          - operation:
              paths:
              - /api/*/{*}  #<
        """), ("spec", "rules", 0, "to", 0, "operation", "paths", 0), "segment '*'"),
    Case("ap-path-named-variable", doc(AP, """
        rules:
        - to:
          - operation:
              notPaths:
              - /users/{id}  #<
        """), ("spec", "rules", 0, "to", 0, "operation", "notPaths", 0), "segment '{id}'"),
    # --- AuthorizationPolicy: conditions ---------------------------------------------------------
    Case("ap-when-unknown-key", doc(AP, """
        rules:
        - when:
          - key: source.name  #<
            values: [web]
        """), ("spec", "rules", 0, "when", 0, "key"), "unknown key 'source.name'"),
    Case("ap-when-replaced-key", doc(AP, """
        rules:
        - when:
          - key: destination.namespace  #<
            values: [prod]
        """), ("spec", "rules", 0, "when", 0, "key"), "replaced by the policy's metadata"),
    Case("ap-when-needs-values", doc(AP, """
        rules:
        - when:
          - key: request.auth.principal  #<
        """), ("spec", "rules", 0, "when", 0), "at least one of `values` or `notValues`"),
    Case("ap-when-bad-map-key", doc(AP, """
        rules:
        - when:
          - key: request.headers[]  #<
            values: [x]
        """), ("spec", "rules", 0, "when", 0, "key"), "must have the form name[item]"),
    Case("ap-when-ip-value", doc(AP, """
        rules:
        - when:
          - key: source.ip
            values:
            - 300.1.1.1  #<
        """), ("spec", "rules", 0, "when", 0, "values", 0), "'300.1.1.1'"),
    Case("ap-when-port-value", doc(AP, """
        rules:
        - when:
          - key: destination.port
            notValues:
            - https  #<
        """), ("spec", "rules", 0, "when", 0, "notValues", 0), "got 'https'"),
    # --- RequestAuthentication -----------------------------------------------------------------
    Case("ra-issuer-required", doc(RA, """
        jwtRules:
        - audiences: [web]  #<
        """), ("spec", "jwtRules", 0, "issuer"), "issuer must be set"),
    Case("ra-jwks-and-jwks-uri", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          jwksUri: https://idp.example.com/keys
          jwks: '{"keys": []}'  #<
        """), ("spec", "jwtRules", 0, "jwks"), "only one of jwks and jwksUri"),
    Case("ra-jwks-uri-scheme", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          jwksUri: ftp://idp.example.com/keys  #<
        """), ("spec", "jwtRules", 0, "jwksUri"), "http:// or https://"),
    Case("ra-jwks-not-json", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          jwks: not json  #<
        """), ("spec", "jwtRules", 0, "jwks"), "not valid JSON"),
    Case("ra-from-header-name", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          fromHeaders:
          - prefix: "Bearer "  #<
        """), ("spec", "jwtRules", 0, "fromHeaders", 0, "name"), "header name must not be empty"),
    Case("ra-claim-to-header-name", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          outputClaimToHeaders:
          - header: x user  #<
            claim: sub
        """), ("spec", "jwtRules", 0, "outputClaimToHeaders", 0, "header"),
        "invalid header name 'x user'"),
    Case("ra-claim-empty", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          outputClaimToHeaders:
          - header: x-user
            claim: ""  #<
        """), ("spec", "jwtRules", 0, "outputClaimToHeaders", 0, "claim"),
        "claim must not be empty"),
    Case("ra-timeout-positive", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          timeout: 0s  #<
        """), ("spec", "jwtRules", 0, "timeout"), ">= 1ms, got 0s"),
    Case("ra-timeout-not-duration", doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          timeout: 5  #<
        """), ("spec", "jwtRules", 0, "timeout"), "duration"),
    Case("ra-selector-and-target-ref", doc(RA, """
        selector: {matchLabels: {app: web}}
        targetRef: {kind: Service, name: web}  #<
        jwtRules:
        - issuer: https://idp.example.com
        """), ("spec", "targetRef"), "only one of selector, targetRef or targetRefs"),
    # --- Telemetry -----------------------------------------------------------------------------
    Case("tm-sampling-range", doc(TM, """
        tracing:
        - randomSamplingPercentage: 150  #<
        """, TEL), ("spec", "tracing", 0, "randomSamplingPercentage"), "[0, 100], got 150"),
    Case("tm-provider-name", doc(TM, """
        metrics:
        - providers:
          - name: ""  #<
        """, TEL), ("spec", "metrics", 0, "providers", 0, "name"), "must not be empty"),
    Case("tm-remove-with-value", doc(TM, """
        metrics:
        - overrides:
          - tagOverrides:
              request_host:
                operation: REMOVE
                value: request.host  #<
        """, TEL), ("spec", "metrics", 0, "overrides", 0, "tagOverrides", "request_host", "value"),
        "only allowed with operation UPSERT"),
    Case("tm-upsert-needs-value", doc(TM, """
        metrics:
        - overrides:
          - tagOverrides:
              request_host:  #<
                operation: UPSERT
        """, TEL), ("spec", "metrics", 0, "overrides", 0, "tagOverrides", "request_host"),
        "UPSERT needs a value"),
    Case("tm-metric-enum", doc(TM, """
        metrics:
        - overrides:
          - match:
              metric: REQUEST_COUNTS  #<
            disabled: true
        """, TEL), ("spec", "metrics", 0, "overrides", 0, "match", "metric"), "must be one of"),
    Case("tm-metric-and-custom-metric", doc(TM, """
        metrics:
        - overrides:
          - match:  #<
              metric: REQUEST_COUNT
              customMetric: my_metric
        """, TEL), ("spec", "metrics", 0, "overrides", 0, "match"),
        "only one of metric and customMetric"),
    Case("tm-reporting-interval", doc(TM, """
        metrics:
        - reportingInterval: 0s  #<
        """, TEL), ("spec", "metrics", 0, "reportingInterval"), "> 0"),
    Case("tm-custom-tag-one-source", doc(TM, """
        tracing:
        - customTags:
            env:  #<
              literal: {value: prod}
              environment: {name: ENV}
        """, TEL), ("spec", "tracing", 0, "customTags", "env"), "exactly one of literal"),
    Case("tm-mode-enum", doc(TM, """
        accessLogging:
        - match:
            mode: BOTH  #<
        """, TEL), ("spec", "accessLogging", 0, "match", "mode"), "must be one of"),
]


@pytest.mark.parametrize("case", KIND_CASES, ids=[c.id for c in KIND_CASES])
def test_invalid_resource_is_reported_at_path_and_line(case: Case) -> None:
    result = load_string(case.text, source="t.yaml", namespace="default")
    at_path = [d for d in result.errors if d.path == case.path]
    assert at_path, f"no error at {format_path(case.path)}; errors:\n{describe(result.errors)}"
    line = marked_line(case.text)
    assert any(d.line == line for d in at_path), (
        f"error at {format_path(case.path)} not on line {line}:\n{describe(at_path)}")
    assert any(case.message in d.message for d in at_path), describe(at_path)
    assert all(d.file == "t.yaml" for d in at_path)
    assert result.resources == [], "an invalid document must not be loaded"


MESH_CASES = [
    Case("mesh-trust-domain", """
        trustDomain: Cluster_Local  #<
        """, ("trustDomain",), "invalid trust domain 'Cluster_Local'"),
    Case("mesh-trust-domain-alias", """
        trustDomainAliases:
        - old.local
        - bad..domain  #<
        """, ("trustDomainAliases", 1), "invalid trust domain"),
    Case("mesh-root-namespace", """
        rootNamespace: ""  #<
        """, ("rootNamespace",), "must not be empty"),
    Case("mesh-root-namespace-label", """
        rootNamespace: Istio_System  #<
        """, ("rootNamespace",), "got 'Istio_System'"),
    Case("mesh-provider-name-empty", """
        extensionProviders:
        - name: ""  #<
          prometheus: {}
        """, ("extensionProviders", 0, "name"), "must not be empty"),
    Case("mesh-provider-name-duplicate", """
        extensionProviders:
        - name: authz
          envoyExtAuthzGrpc: {service: authz.auth.svc.cluster.local, port: 9000}
        - name: authz  #<
          envoyExtAuthzGrpc: {service: authz2.auth.svc.cluster.local, port: 9000}
        """, ("extensionProviders", 1, "name"), "duplicate extension provider name 'authz'"),
    Case("mesh-provider-two-types", """
        extensionProviders:
        - name: tracing  #<
          zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
          datadog: {service: datadog.dd.svc.cluster.local, port: 8126}
        """, ("extensionProviders", 0), "exactly one provider type"),
    Case("mesh-provider-no-type", """
        extensionProviders:
        - name: nothing  #<
        """, ("extensionProviders", 0), "got none"),
    Case("mesh-provider-port", """
        extensionProviders:
        - name: authz
          envoyExtAuthzHttp:
            service: authz.auth.svc.cluster.local
            port: 70000  #<
        """, ("extensionProviders", 0, "envoyExtAuthzHttp", "port"), "1-65535, got 70000"),
    Case("mesh-provider-port-missing", """
        extensionProviders:
        - name: otel
          opentelemetry:  #<
            service: otel.observability.svc.cluster.local
        """, ("extensionProviders", 0, "opentelemetry", "port"), "port is required"),
    Case("mesh-provider-timeout", """
        extensionProviders:
        - name: authz
          envoyExtAuthzGrpc:
            service: authz.auth.svc.cluster.local
            port: 9000
            timeout: 0s  #<
        """, ("extensionProviders", 0, "envoyExtAuthzGrpc", "timeout"), "> 0"),
    Case("mesh-provider-status-on-error", """
        extensionProviders:
        - name: authz
          envoyExtAuthzHttp:
            service: authz.auth.svc.cluster.local
            port: 8000
            statusOnError: forbidden  #<
        """, ("extensionProviders", 0, "envoyExtAuthzHttp", "statusOnError"),
        "got 'forbidden'"),
    Case("mesh-provider-service", """
        extensionProviders:
        - name: zipkin
          zipkin:
            service: ""  #<
            port: 9411
        """, ("extensionProviders", 0, "zipkin", "service"), "service is required"),
    Case("mesh-provider-unknown-field", """
        extensionProviders:
        - name: zipkin
          zipkin:
            service: zipkin.istio-system.svc.cluster.local
            prot: 9411  #<
        """, ("extensionProviders", 0, "zipkin", "prot"), "unknown field 'prot'"),
    Case("mesh-access-log-encoding", """
        accessLogFile: /dev/stdout
        accessLogEncoding: YAML  #<
        """, ("accessLogEncoding",), "must be one of"),
    Case("mesh-json-access-log-format", """
        accessLogEncoding: JSON
        accessLogFormat: "[%START_TIME%] %RESPONSE_CODE%"  #<
        """, ("accessLogFormat",), "must be a JSON object"),
    Case("mesh-sampling-range", """
        defaultConfig:
          tracing:
            sampling: 120  #<
        """, ("defaultConfig", "tracing", "sampling"), "[0, 100], got 120"),
    Case("mesh-retry-attempts", """
        defaultHttpRetryPolicy:
          attempts: -1  #<
        """, ("defaultHttpRetryPolicy", "attempts"), "attempts must be >= 0, got -1"),
    Case("mesh-retry-on-token", """
        defaultHttpRetryPolicy:
          attempts: 2
          retryOn: connect-failure,retry-everything  #<
        """, ("defaultHttpRetryPolicy", "retryOn"), "'retry-everything' is not a retryOn"),
    Case("mesh-connect-timeout", """
        connectTimeout: 2h  #<
        """, ("connectTimeout",), "between 1ms and 1h, got 2h"),
    Case("mesh-unknown-top-level-field", """
        enableTracing: true
        enableTracng: false  #<
        """, ("enableTracng",), "unknown field 'enableTracng'"),
    Case("mesh-discovery-address", """
        defaultConfig:
          discoveryAddress: istiod  #<
        """, ("defaultConfig", "discoveryAddress"), "must be host:port, got 'istiod'"),
]


@pytest.mark.parametrize("case", MESH_CASES, ids=[c.id for c in MESH_CASES])
def test_invalid_mesh_config_is_reported_at_path_and_line(case: Case) -> None:
    text = textwrap.dedent(case.text).lstrip("\n")
    cfg, diagnostics = load_mesh_config_string(text, source="mesh.yaml")
    errors = [d for d in diagnostics if d.is_error]
    at_path = [d for d in errors if d.path == case.path]
    assert at_path, f"no error at {format_path(case.path)}; errors:\n{describe(errors)}"
    line = marked_line(text)
    assert any(d.line == line for d in at_path), (
        f"error at {format_path(case.path)} not on line {line}:\n{describe(at_path)}")
    assert any(case.message in d.message for d in at_path), describe(at_path)
    assert cfg is None, "an invalid mesh config must not be returned"


# --- valid configurations and defaults --------------------------------------------------------


def test_mesh_defaults_are_istios() -> None:
    cfg, diagnostics = load_mesh_config_string("", source="mesh.yaml")
    assert diagnostics == []
    assert cfg == MeshConfig()
    assert cfg is not None
    assert cfg.trust_domain == "cluster.local"
    assert cfg.trust_domain_aliases == []
    assert cfg.root_namespace == "istio-system"
    assert cfg.outbound_traffic_policy.mode == "ALLOW_ANY"
    assert cfg.enable_auto_mtls is True
    assert cfg.connect_timeout == 10.0
    assert cfg.access_log_file == ""
    assert cfg.access_log_encoding == "TEXT"
    assert cfg.access_log_format == ""
    assert cfg.enable_tracing is True
    assert cfg.default_http_retry_policy is None
    assert cfg.default_service_export_to == ["*"]
    assert cfg.default_virtual_service_export_to == ["*"]
    assert cfg.default_destination_rule_export_to == ["*"]
    assert cfg.locality_lb_setting.enabled is True
    assert cfg.proxy_listen_port == 15001 and cfg.proxy_inbound_listen_port == 15006
    assert cfg.default_config.discovery_address == "istiod.istio-system.svc:15012"
    assert cfg.default_config.tracing is not None
    assert cfg.default_config.tracing.sampling == 1.0
    assert cfg.default_config.hold_application_until_proxy_starts is False
    assert [p.name for p in cfg.effective_extension_providers()] == ["prometheus", "envoy"]


def test_full_mesh_config_validates() -> None:
    text = textwrap.dedent("""
        trustDomain: example.org
        trustDomainAliases: [old.example.org]
        rootNamespace: mesh-root
        outboundTrafficPolicy: {mode: REGISTRY_ONLY}
        enableAutoMtls: false
        connectTimeout: 2s
        accessLogFile: /dev/stdout
        accessLogEncoding: JSON
        enableTracing: true
        defaultProviders:
          tracing: [otel]
          accessLogging: [envoy]
        extensionProviders:
        - name: ext-authz
          envoyExtAuthzHttp:
            service: ext-authz.auth.svc.cluster.local
            port: 8000
            timeout: 500ms
            pathPrefix: /check
            statusOnError: "503"
            includeRequestHeadersInCheck: [x-user]
            headersToUpstreamOnAllow: [x-auth-*]
        - name: otel
          opentelemetry:
            service: observability/otel-collector.observability.svc.cluster.local
            port: 4318
            http: {path: /v1/traces, timeout: 3s, headers: [{name: x-tenant, value: a}]}
            resourceDetectors: {environment: {}}
        - name: json-log
          envoyFileAccessLog:
            path: /dev/stdout
            logFormat: {labels: {status: "%RESPONSE_CODE%"}}
        defaultHttpRetryPolicy:
          attempts: 3
          retryOn: connect-failure,refused-stream,503
        defaultConfig:
          holdApplicationUntilProxyStarts: true
          proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}
          tracing: {sampling: 10, zipkin: {address: "$(HOST_IP):9411"}}
          envoyOnlyKnob: 7
        """)
    cfg, diagnostics = load_mesh_config_string(text, source="mesh.yaml")
    assert diagnostics == [], describe(diagnostics)
    assert cfg is not None
    assert cfg.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert cfg.connect_timeout == 2.0
    assert cfg.default_config.model_extra == {"envoyOnlyKnob": 7}
    provider = cfg.find_provider("ext-authz")
    assert provider is not None and provider.provider_type == "envoy_ext_authz_http"
    assert provider.envoy_ext_authz_http is not None
    assert provider.envoy_ext_authz_http.timeout == 0.5
    assert cfg.find_provider("prometheus") is not None  # an Istio default provider


def test_outbound_policy_without_mode_is_registry_only_with_a_warning() -> None:
    cfg, diagnostics = load_mesh_config_string("outboundTrafficPolicy: {}\n", source="mesh.yaml")
    assert cfg is not None and cfg.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert [(d.severity, d.path, d.line) for d in diagnostics] == [
        ("warning", ("outboundTrafficPolicy",), 1)]


def test_custom_policy_with_provider_validates() -> None:
    text = doc(AP, """
        selector: {matchLabels: {istio: ingressgateway}}
        action: CUSTOM
        provider:
          name: ext-authz
        rules:
        - to:
          - operation:
              paths: [/admin/*]
        """)
    result = load_string(text, source="t.yaml", namespace="istio-system")
    assert result.diagnostics == [], describe(result.diagnostics)
    [resource] = result.resources
    assert resource.spec.action == "CUSTOM"
    assert resource.spec.provider.name == "ext-authz"


def test_authorization_policy_from_alias_and_templates() -> None:
    text = doc(AP, """
        rules:
        - from:
          - source:
              serviceAccounts: [prod/web, web]
          to:
          - operation:
              ports: ["8080"]
              paths: ["/api/{*}/items", "/static/{**}"]
          when:
          - key: request.auth.claims[groups][admin]
            values: [ "true" ]
          - key: source.serviceAccount
            notValues: [prod/batch]
        """)
    result = load_string(text, source="t.yaml", namespace="prod")
    assert result.diagnostics == [], describe(result.diagnostics)
    [resource] = result.resources
    rule = resource.spec.rules[0]
    assert rule.from_[0].source.service_accounts == ["prod/web", "web"]


def test_empty_selector_is_only_a_warning() -> None:
    result = load_string(doc(PA, "selector: {}\nmtls: {mode: STRICT}\n"), source="t.yaml")
    assert result.errors == []
    assert [(d.severity, d.path) for d in result.warnings] == [("warning", ("spec", "selector"))]
    assert len(result.resources) == 1


def test_deny_rule_with_http_attributes_only_warns_about_tcp() -> None:
    text = doc(AP, """
        action: DENY
        rules:
        - to:
          - operation:
              methods: [DELETE]
        """)
    result = load_string(text, source="t.yaml")
    assert result.errors == []
    assert [d.path for d in result.warnings] == [("spec", "rules", 0)]


def test_port_level_mtls_accepts_numeric_and_string_keys() -> None:
    text = doc(PA, """
        selector: {matchLabels: {app: db}}
        mtls: {mode: STRICT}
        portLevelMtls:
          5432: {mode: DISABLE}
          "9090": {mode: PERMISSIVE}
        """)
    result = load_string(text, source="t.yaml")
    assert result.diagnostics == [], describe(result.diagnostics)
    spec = result.resources[0].spec
    assert {p: m.mode for p, m in spec.port_level_mtls.items()} == {5432: "DISABLE",
                                                                     9090: "PERMISSIVE"}


def test_telemetry_and_request_authentication_valid() -> None:
    text = doc(TM, """
        targetRefs:
        - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
        tracing:
        - providers: [{name: otel}]
          randomSamplingPercentage: 0.5
          customTags:
            cluster: {environment: {name: CLUSTER_ID, defaultValue: unknown}}
        metrics:
        - reportingInterval: 15s
          overrides:
          - match: {metric: ALL_METRICS, mode: CLIENT}
            tagOverrides:
              request_protocol: {operation: REMOVE}
        accessLogging:
        - providers: [{name: envoy}]
          filter: {expression: "response.code >= 500"}
        """, TEL) + "---\n" + doc(RA, """
        jwtRules:
        - issuer: https://idp.example.com
          jwksUri: https://idp.example.com:8443/.well-known/jwks.json
          fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
          outputClaimToHeaders: [{header: x-user, claim: sub}]
          timeout: 2s
          presence: REQUIRED
        """).replace("name: t", "name: jwt")
    result = load_string(text, source="t.yaml")
    assert result.diagnostics == [], describe(result.diagnostics)
    assert sorted(r.kind for r in result.resources) == [RA, TM]
