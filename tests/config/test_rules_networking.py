"""Semantic rules of the networking kinds: VirtualService, DestinationRule,
ServiceEntry, WorkloadEntry, WorkloadGroup, Gateway and Sidecar.

Each invalid case is a whole YAML document loaded through the loader; the line the
error must point at is marked with ``#<`` in the text.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from meshsdk.config.diagnostics import Diagnostic, format_path
from meshsdk.config.kinds.service_entry import ServiceEntrySpec
from meshsdk.config.kinds.virtual_service import VirtualServiceSpec
from meshsdk.config.loader import load_string

NET = "networking.istio.io/v1"
VS, DR, SE, WE, WG, GW, SC = ("VirtualService", "DestinationRule", "ServiceEntry",
                              "WorkloadEntry", "WorkloadGroup", "Gateway", "Sidecar")


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    path: tuple[str | int, ...]
    message: str  # a fragment the message must contain


def doc(kind: str, spec: str, *, api: str = NET, mark_spec: bool = False) -> str:
    """A document of ``kind`` whose spec body is ``spec`` (indented two spaces).

    ``mark_spec`` marks the ``spec:`` line itself (for errors about a missing field).
    """
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    head = "spec:  #<" if mark_spec else "spec:"
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: t\n{head}\n{body}\n"


def vs_http(route: str) -> str:
    """A VirtualService for host ``reviews`` with one HTTP route whose body is ``route``."""
    body = textwrap.indent(textwrap.dedent(route).strip("\n"), "  ")
    return doc(VS, "hosts: [reviews]\nhttp:\n- name: r\n" + body)


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if "#<" in line]
    assert len(lines) == 1, f"case must mark exactly one line with #<, got {lines}"
    return lines[0]


def describe(diags: list[Diagnostic]) -> str:
    return "\n".join(f"  {d.line}: {format_path(d.path)}: {d.message}" for d in diags) or "  none"


ROUTE_V1 = """
        route:
        - destination: {host: reviews, subset: v1}
        """  # indented like the cases it is appended to

CASES = [
    # --- VirtualService: hosts, gateways, routes ------------------------------------------
    Case("vs-bare-star-for-sidecars", doc(VS, """
        hosts:
        - "*"  #<
        http:
        - route: [{destination: {host: reviews}}]
        """), ("spec", "hosts", 0), "'*' is not allowed"),
    Case("vs-invalid-host", doc(VS, """
        hosts:
        - reviews..default  #<
        http:
        - route: [{destination: {host: reviews}}]
        """), ("spec", "hosts", 0), "label '' is not a DNS-1123 label"),
    Case("vs-duplicate-host", doc(VS, """
        hosts:
        - "*.example.com"
        - a.example.com  #<
        gateways: [istio-system/gw]
        http:
        - route: [{destination: {host: reviews}}]
        """), ("spec", "hosts", 1), "duplicate host"),
    Case("vs-no-routes", doc(VS, """
        hosts: [reviews]
        """, mark_spec=True), ("spec",), "must have at least one of http, tls or tcp"),
    Case("vs-gateway-name", doc(VS, """
        hosts: [reviews]
        gateways:
        - istio-system/my_gateway  #<
        http:
        - route: [{destination: {host: reviews}}]
        """), ("spec", "gateways", 0), "invalid gateway name 'my_gateway'"),
    Case("vs-export-to-duplicate", doc(VS, """
        hosts: [reviews]
        http:
        - route: [{destination: {host: reviews}}]
        exportTo:
        - "."
        - "."  #<
        """), ("spec", "exportTo", 1), "duplicate exportTo entry '.'"),
    Case("vs-export-to-public-and-more", doc(VS, """
        hosts: [reviews]
        http:
        - route: [{destination: {host: reviews}}]
        exportTo:  #<
        - "*"
        - bookinfo
        """), ("spec", "exportTo"), "cannot export to public (*) and to other namespaces"),
    Case("vs-delegate-with-gateways", doc(VS, """
        gateways:  #<
        - istio-system/gw
        http:
        - route: [{destination: {host: reviews}}]
        """), ("spec", "gateways"), "a delegate VirtualService"),
    # --- VirtualService: destinations and weights -----------------------------------------
    Case("vs-negative-weight", vs_http("""
        route:
        - destination: {host: reviews, subset: v1}
          weight: 105
        - destination: {host: reviews, subset: v2}
          weight: -5  #<
        """), ("spec", "http", 0, "route", 1, "weight"), "must be >= 0, got -5"),
    Case("vs-total-weight-zero", vs_http("""
        route:  #<
        - destination: {host: reviews, subset: v1}
          weight: 0
        - destination: {host: reviews, subset: v2}
          weight: 0
        """), ("spec", "http", 0, "route"), "total destination weight = 0"),
    Case("vs-destination-host-required", vs_http("""
        route:
        - destination:  #<
            subset: v1
        """), ("spec", "http", 0, "route", 0, "destination", "host"), "host is required"),
    Case("vs-destination-host-star", vs_http("""
        route:
        - destination:
            host: "*"  #<
        """), ("spec", "http", 0, "route", 0, "destination", "host"), "got '*'"),
    Case("vs-subset-name", vs_http("""
        route:
        - destination:
            host: reviews
            subset: v1_beta  #<
        """), ("spec", "http", 0, "route", 0, "destination", "subset"), "DNS-1123 label"),
    Case("vs-destination-port", vs_http("""
        route:
        - destination:
            host: reviews
            port:
              number: 70000  #<
        """), ("spec", "http", 0, "route", 0, "destination", "port", "number"),
        "port must be in 1-65535, got 70000"),
    Case("vs-destination-missing", vs_http("""
        route:
        - weight: 100  #<
        """), ("spec", "http", 0, "route", 0), "destination is required"),
    Case("vs-route-required", vs_http("""
        timeout: 5s
        """).replace("- name: r", "- name: r  #<"), ("spec", "http", 0),
        "must set one of route, redirect, directResponse or delegate"),
    # --- VirtualService: matches ----------------------------------------------------------
    Case("vs-string-match-two-kinds", vs_http("""
        match:
        - uri:  #<
            exact: /a
            prefix: /b
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "uri"),
        "must set exactly one of exact, prefix or regex, got exact, prefix"),
    Case("vs-uri-regex-re2", vs_http("""
        match:
        - uri:
            regex: "/(?=admin)"  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "uri", "regex"), "invalid RE2 regex"),
    Case("vs-header-name", vs_http("""
        match:
        - headers:
            "end user": {exact: jason}  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "headers", "end user"),
        "invalid header name"),
    Case("vs-header-empty-prefix", vs_http("""
        match:
        - headers:
            x-version:
              prefix: ""  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "headers", "x-version", "prefix"),
        "prefix must not be empty"),
    Case("vs-query-param-two-kinds", vs_http("""
        match:
        - queryParams:
            debug: {exact: "1", regex: "1|true"}  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "queryParams", "debug"),
        "must set exactly one of exact, prefix or regex"),
    Case("vs-match-port", vs_http("""
        match:
        - port: 70000  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "port"), "port must be in 1-65535"),
    Case("vs-source-namespace", vs_http("""
        match:
        - sourceNamespace: Bad_Namespace  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "sourceNamespace"),
        "must be a namespace name"),
    Case("vs-source-labels", vs_http("""
        match:
        - sourceLabels:
            app: "not ok!"  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "sourceLabels", "app"),
        "invalid label value"),
    Case("vs-jwt-claim-on-sidecars", vs_http("""
        match:
        - headers:
            "@request.auth.claims.group": {exact: admin}  #<
        """ + ROUTE_V1), ("spec", "http", 0, "match", 0, "headers", "@request.auth.claims.group"),
        "only supported on gateways"),
    # --- VirtualService: redirect, direct response, rewrite --------------------------------
    Case("vs-route-and-redirect", vs_http("""
        redirect:  #<
          uri: /v2
        """ + ROUTE_V1), ("spec", "http", 0, "redirect"), "cannot be used with route"),
    Case("vs-direct-response-and-route", vs_http("""
        directResponse:  #<
          status: 503
        """ + ROUTE_V1), ("spec", "http", 0, "directResponse"), "cannot be used with route"),
    Case("vs-rewrite-with-redirect", vs_http("""
        redirect: {uri: /v2}
        rewrite:  #<
          uri: /v3
        """), ("spec", "http", 0, "rewrite"), "cannot be used with redirect"),
    Case("vs-redirect-code", vs_http("""
        redirect:
          uri: /v2
          redirectCode: 305  #<
        """), ("spec", "http", 0, "redirect", "redirectCode"),
        "must be one of 301, 302, 303, 307, 308, got 305"),
    Case("vs-redirect-port-and-derive-port", vs_http("""
        redirect:
          port: 8443
          derivePort: FROM_REQUEST_PORT  #<
        """), ("spec", "http", 0, "redirect", "derivePort"), "cannot be used with port"),
    Case("vs-redirect-empty", vs_http("""
        redirect:  #<
          redirectCode: 302
        """), ("spec", "http", 0, "redirect"), "must set at least one of uri, authority"),
    Case("vs-direct-response-status", vs_http("""
        directResponse:
          status: 600  #<
        """), ("spec", "http", 0, "directResponse", "status"),
        "must be an HTTP status in 200-599, got 600"),
    Case("vs-direct-response-bytes", vs_http("""
        directResponse:
          status: 200
          body:
            bytes: "not base64!"  #<
        """), ("spec", "http", 0, "directResponse", "body", "bytes"), "must be base64"),
    Case("vs-rewrite-uri-and-regex", vs_http("""
        rewrite:
          uri: /v2
          uriRegexRewrite:  #<
            match: ^/v1(.*)
            rewrite: /v2\\1
        """ + ROUTE_V1), ("spec", "http", 0, "rewrite", "uriRegexRewrite"),
        "cannot be used with uri"),
    Case("vs-rewrite-regex-rewrite-required", vs_http("""
        rewrite:
          uriRegexRewrite:  #<
            match: ^/v1(.*)
        """ + ROUTE_V1), ("spec", "http", 0, "rewrite", "uriRegexRewrite", "rewrite"),
        "rewrite is required"),
    Case("vs-authority-set-twice", vs_http("""
        rewrite: {authority: a.example.com}
        headers:
          request:
            set:
              host: b.example.com  #<
        """ + ROUTE_V1), ("spec", "http", 0, "headers", "request", "set", "host"),
        "the authority is already rewritten to 'a.example.com'"),
    Case("vs-header-op-pseudo", vs_http("""
        headers:
          request:
            set:
              ":path": /admin  #<
        """ + ROUTE_V1), ("spec", "http", 0, "headers", "request", "set", ":path"),
        "cannot change the pseudo-header ':path'"),
    Case("vs-header-op-value", vs_http("""
        headers:
          response:
            add:
              x-discount: "50%"  #<
        """ + ROUTE_V1), ("spec", "http", 0, "headers", "response", "add", "x-discount"),
        "unterminated '%'"),
    # --- VirtualService: timeouts, retries, fault, mirror, CORS ------------------------------
    Case("vs-timeout-zero", vs_http("""
        timeout: 0s  #<
        """ + ROUTE_V1), ("spec", "http", 0, "timeout"), "duration must be >= 1ms, got 0s"),
    Case("vs-timeout-not-a-duration", vs_http("""
        timeout: 5  #<
        """ + ROUTE_V1), ("spec", "http", 0, "timeout"), "must be a duration"),
    Case("vs-retries-negative-attempts", vs_http("""
        retries:
          attempts: -1  #<
        """ + ROUTE_V1), ("spec", "http", 0, "retries", "attempts"), "must be >= 0, got -1"),
    Case("vs-retries-per-try-timeout", vs_http("""
        retries:
          attempts: 3
          perTryTimeout: 500us  #<
        """ + ROUTE_V1), ("spec", "http", 0, "retries", "perTryTimeout"),
        "duration must be >= 1ms"),
    Case("vs-retry-on-token", vs_http("""
        retries:
          attempts: 3
          retryOn: 5xx,bogus  #<
        """ + ROUTE_V1), ("spec", "http", 0, "retries", "retryOn"),
        "'bogus' is not a retryOn policy"),
    Case("vs-retry-on-without-attempts", vs_http("""
        retries:  #<
          retryOn: connect-failure
        """ + ROUTE_V1), ("spec", "http", 0, "retries"),
        "attempts is 0 (retries disabled) but retryOn is set"),
    Case("vs-fault-delay-percentage", vs_http("""
        fault:
          delay:
            fixedDelay: 7s
            percentage:
              value: 150  #<
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "delay", "percentage", "value"),
        "must be in [0, 100], got 150"),
    Case("vs-fault-delay-needs-delay", vs_http("""
        fault:
          delay:  #<
            percentage: {value: 10}
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "delay"), "must set fixedDelay"),
    Case("vs-fault-delay-too-short", vs_http("""
        fault:
          delay:
            fixedDelay: 0.5ms  #<
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "delay", "fixedDelay"),
        "duration must be >= 1ms"),
    Case("vs-fault-abort-two-kinds", vs_http("""
        fault:
          abort:  #<
            httpStatus: 503
            grpcStatus: UNAVAILABLE
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "abort"),
        "must set exactly one of httpStatus, grpcStatus or http2Error, got httpStatus, "
        "grpcStatus"),
    Case("vs-fault-abort-status", vs_http("""
        fault:
          abort:
            httpStatus: 700  #<
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "abort", "httpStatus"),
        "must be an HTTP status in 200-599, got 700"),
    Case("vs-fault-abort-grpc-status", vs_http("""
        fault:
          abort:
            grpcStatus: NOPE  #<
        """ + ROUTE_V1), ("spec", "http", 0, "fault", "abort", "grpcStatus"),
        "must be a gRPC status name"),
    Case("vs-fault-empty", vs_http("""
        fault: {}  #<
        """ + ROUTE_V1), ("spec", "http", 0, "fault"), "must set delay and/or abort"),
    Case("vs-mirror-percentage", vs_http("""
        mirror: {host: reviews, subset: v2}
        mirrorPercentage:
          value: 101  #<
        """ + ROUTE_V1), ("spec", "http", 0, "mirrorPercentage", "value"),
        "must be in [0, 100], got 101"),
    Case("vs-mirror-percent-deprecated-range", vs_http("""
        mirror: {host: reviews, subset: v2}
        mirrorPercent: 120  #<
        """ + ROUTE_V1), ("spec", "http", 0, "mirrorPercent"), "must be in [0, 100], got 120"),
    Case("vs-mirror-and-mirrors", vs_http("""
        mirror: {host: reviews, subset: v2}
        mirrors:  #<
        - destination: {host: reviews, subset: v3}
        """ + ROUTE_V1), ("spec", "http", 0, "mirrors"), "cannot be used with mirror"),
    Case("vs-mirror-host-required", vs_http("""
        mirror:  #<
          subset: v2
        """ + ROUTE_V1), ("spec", "http", 0, "mirror", "host"), "host is required"),
    Case("vs-mirrors-percentage", vs_http("""
        mirrors:
        - destination: {host: reviews, subset: v2}
          percentage:
            value: -1  #<
        """ + ROUTE_V1), ("spec", "http", 0, "mirrors", 0, "percentage", "value"),
        "must be in [0, 100], got -1"),
    Case("vs-cors-max-age", vs_http("""
        corsPolicy:
          allowOrigins: [{exact: "https://example.com"}]
          maxAge: 0s  #<
        """ + ROUTE_V1), ("spec", "http", 0, "corsPolicy", "maxAge"),
        "duration must be >= 1ms"),
    Case("vs-cors-allow-origins", vs_http("""
        corsPolicy:
          allowOrigins:
          - exact: "https://a.example.com"  #<
            regex: ".*[.]example[.]com"
        """ + ROUTE_V1), ("spec", "http", 0, "corsPolicy", "allowOrigins", 0),
        "must set exactly one of exact, prefix or regex"),
    Case("vs-cors-method", vs_http("""
        corsPolicy:
          allowMethods:
          - GET
          - FETCH  #<
        """ + ROUTE_V1), ("spec", "http", 0, "corsPolicy", "allowMethods", 1),
        "'FETCH' is not a supported HTTP method"),
    # --- VirtualService: tls and tcp --------------------------------------------------------
    Case("vs-tls-sni-not-a-host", doc(VS, """
        hosts: [a.example.com]
        gateways: [istio-system/gw]
        tls:
        - match:
          - sniHosts:
            - b.example.com  #<
          route: [{destination: {host: a.example.com}}]
        """), ("spec", "tls", 0, "match", 0, "sniHosts", 0), "is not covered"),
    Case("vs-tls-match-required", doc(VS, """
        hosts: [a.example.com]
        tls:
        - route: [{destination: {host: a.example.com}}]  #<
        """), ("spec", "tls", 0), "needs at least one match"),
    Case("vs-tcp-route-required", doc(VS, """
        hosts: [mongo]
        tcp:
        - match:  #<
          - port: 27017
        """), ("spec", "tcp", 0), "route is required"),
    Case("vs-tcp-destination-subnet", doc(VS, """
        hosts: [mongo]
        tcp:
        - match:
          - destinationSubnets:
            - 10.0.0.0/33  #<
          route: [{destination: {host: mongo}}]
        """), ("spec", "tcp", 0, "match", 0, "destinationSubnets", 0),
        "invalid IP address or CIDR block"),
    # --- VirtualService: structure (pydantic) ------------------------------------------------
    Case("vs-unknown-field", vs_http("""
        route:
        - destination: {host: reviews}
          wieght: 50  #<
        """), ("spec", "http", 0, "route", 0, "wieght"), "did you mean 'weight'"),
    Case("vs-derive-port-enum", vs_http("""
        redirect:
          derivePort: FROM_SOMEWHERE  #<
        """), ("spec", "http", 0, "redirect", "derivePort"), "must be one of"),

    # --- DestinationRule ----------------------------------------------------------------------
    Case("dr-host-required", doc(DR, """
        subsets:
        - name: v1
          labels: {version: v1}
        """, mark_spec=True), ("spec", "host"), "host is required"),
    Case("dr-host-invalid", doc(DR, """
        host: reviews.*.svc  #<
        """), ("spec", "host"), "is not a DNS-1123 label"),
    Case("dr-subset-duplicate", doc(DR, """
        host: reviews
        subsets:
        - name: v1
          labels: {version: v1}
        - name: v1  #<
          labels: {version: v2}
        """), ("spec", "subsets", 1, "name"), "duplicate subset name 'v1' (also subsets[0])"),
    Case("dr-subset-name-required", doc(DR, """
        host: reviews
        subsets:
        - labels: {version: v1}  #<
        """), ("spec", "subsets", 0, "name"), "subset name is required"),
    Case("dr-subset-name-invalid", doc(DR, """
        host: reviews
        subsets:
        - name: v1.0  #<
        """), ("spec", "subsets", 0, "name"), "must be a DNS-1123 label"),
    Case("dr-subset-label-key", doc(DR, """
        host: reviews
        subsets:
        - name: v1
          labels:
            "bad key!": v1  #<
        """), ("spec", "subsets", 0, "labels", "bad key!"), "invalid label key"),
    Case("dr-empty-traffic-policy", doc(DR, """
        host: reviews
        trafficPolicy: {}  #<
        """), ("spec", "trafficPolicy"), "must set at least one field"),
    Case("dr-simple-and-consistent-hash", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            simple: ROUND_ROBIN
            consistentHash:  #<
              httpHeaderName: x-user
        """), ("spec", "trafficPolicy", "loadBalancer", "consistentHash"),
        "cannot be used with simple"),
    Case("dr-simple-enum", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            simple: FASTEST  #<
        """), ("spec", "trafficPolicy", "loadBalancer", "simple"), "must be one of"),
    Case("dr-consistent-hash-two-keys", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            consistentHash:  #<
              httpHeaderName: x-user
              useSourceIp: true
        """), ("spec", "trafficPolicy", "loadBalancer", "consistentHash"),
        "got httpHeaderName, useSourceIp"),
    Case("dr-ring-hash-and-maglev", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            consistentHash:
              useSourceIp: true
              ringHash: {minimumRingSize: 1024}
              maglev:  #<
                tableSize: 65537
        """), ("spec", "trafficPolicy", "loadBalancer", "consistentHash", "maglev"),
        "cannot be used with ringHash"),
    Case("dr-maglev-not-prime", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            consistentHash:
              useSourceIp: true
              maglev:
                tableSize: 1000  #<
        """), ("spec", "trafficPolicy", "loadBalancer", "consistentHash", "maglev", "tableSize"),
        "must be a prime number, got 1000"),
    Case("dr-cookie-name", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            consistentHash:
              httpCookie:  #<
                ttl: 0s
        """), ("spec", "trafficPolicy", "loadBalancer", "consistentHash", "httpCookie"),
        "cookie name is required"),
    Case("dr-locality-weights", doc(DR, """
        host: reviews
        trafficPolicy:
          outlierDetection: {consecutive5xxErrors: 5}
          loadBalancer:
            localityLbSetting:
              distribute:
              - from: us-west/zone1/*
                to:  #<
                  us-west/zone1/*: 60
                  us-west/zone2/*: 30
        """), ("spec", "trafficPolicy", "loadBalancer", "localityLbSetting", "distribute", 0,
               "to"), "must add up to 100, got 90"),
    Case("dr-warmup-aggression", doc(DR, """
        host: reviews
        trafficPolicy:
          loadBalancer:
            warmup:
              duration: 300s
              aggression: 0.3  #<
        """), ("spec", "trafficPolicy", "loadBalancer", "warmup", "aggression"),
        "must be >= 1, got 0.3"),
    Case("dr-tls-istio-mutual-with-cert", doc(DR, """
        host: reviews
        trafficPolicy:
          tls:
            mode: ISTIO_MUTUAL
            clientCertificate: /etc/certs/client.pem  #<
        """), ("spec", "trafficPolicy", "tls", "clientCertificate"),
        "must be empty with mode ISTIO_MUTUAL"),
    Case("dr-tls-mutual-needs-key", doc(DR, """
        host: reviews
        trafficPolicy:
          tls:  #<
            mode: MUTUAL
            clientCertificate: /etc/certs/client.pem
        """), ("spec", "trafficPolicy", "tls"), "privateKey is missing"),
    Case("dr-tls-credential-and-files", doc(DR, """
        host: reviews
        trafficPolicy:
          tls:
            mode: SIMPLE
            credentialName: client-secret
            caCertificates: /etc/certs/ca.pem  #<
        """), ("spec", "trafficPolicy", "tls", "caCertificates"),
        "cannot be used with credentialName"),
    Case("dr-tls-mode-enum", doc(DR, """
        host: reviews
        trafficPolicy:
          tls:
            mode: STRICT  #<
        """), ("spec", "trafficPolicy", "tls", "mode"), "must be one of"),
    Case("dr-outlier-percent", doc(DR, """
        host: reviews
        trafficPolicy:
          outlierDetection:
            maxEjectionPercent: 120  #<
        """), ("spec", "trafficPolicy", "outlierDetection", "maxEjectionPercent"),
        "must be in [0, 100], got 120"),
    Case("dr-outlier-interval", doc(DR, """
        host: reviews
        trafficPolicy:
          outlierDetection:
            interval: 0s  #<
        """), ("spec", "trafficPolicy", "outlierDetection", "interval"),
        "duration must be >= 1ms"),
    Case("dr-outlier-negative-count", doc(DR, """
        host: reviews
        trafficPolicy:
          outlierDetection:
            consecutive5xxErrors: -1  #<
        """), ("spec", "trafficPolicy", "outlierDetection", "consecutive5xxErrors"),
        "must be >= 0, got -1"),
    Case("dr-outlier-local-origin", doc(DR, """
        host: reviews
        trafficPolicy:
          outlierDetection:
            consecutiveLocalOriginFailures: 3  #<
        """), ("spec", "trafficPolicy", "outlierDetection", "consecutiveLocalOriginFailures"),
        "splitExternalLocalOriginErrors"),
    Case("dr-pool-negative", doc(DR, """
        host: reviews
        trafficPolicy:
          connectionPool:
            http:
              http1MaxPendingRequests: -1  #<
        """), ("spec", "trafficPolicy", "connectionPool", "http", "http1MaxPendingRequests"),
        "must be >= 0, got -1"),
    Case("dr-pool-connect-timeout", doc(DR, """
        host: reviews
        trafficPolicy:
          connectionPool:
            tcp:
              connectTimeout: 0.5ms  #<
        """), ("spec", "trafficPolicy", "connectionPool", "tcp", "connectTimeout"),
        "duration must be >= 1ms"),
    Case("dr-pool-upgrade-client-protocol", doc(DR, """
        host: reviews
        trafficPolicy:
          connectionPool:
            http:
              h2UpgradePolicy: UPGRADE
              useClientProtocol: true  #<
        """), ("spec", "trafficPolicy", "connectionPool", "http", "useClientProtocol"),
        "must not be true when h2UpgradePolicy is UPGRADE"),
    Case("dr-port-level-needs-port", doc(DR, """
        host: reviews
        trafficPolicy:
          portLevelSettings:
          - tls: {mode: SIMPLE}  #<
        """), ("spec", "trafficPolicy", "portLevelSettings", 0), "port is required"),
    Case("dr-subset-policy", doc(DR, """
        host: reviews
        subsets:
        - name: v1
          trafficPolicy:
            connectionPool:
              tcp:
                maxConnections: -3  #<
        """), ("spec", "subsets", 0, "trafficPolicy", "connectionPool", "tcp", "maxConnections"),
        "must be >= 0, got -3"),
    Case("dr-retry-budget-percent", doc(DR, """
        host: reviews
        trafficPolicy:
          retryBudget:
            percent: 120  #<
        """), ("spec", "trafficPolicy", "retryBudget", "percent"),
        "must be in [0, 100], got 120"),
    Case("dr-tunnel-target-port", doc(DR, """
        host: reviews
        trafficPolicy:
          tunnel:
            targetHost: proxy.example.com
            targetPort: 0  #<
        """), ("spec", "trafficPolicy", "tunnel", "targetPort"), "port must be in 1-65535"),
    Case("dr-selector-exported", doc(DR, """
        host: reviews
        workloadSelector:
          matchLabels: {app: ratings}
        trafficPolicy: {loadBalancer: {simple: RANDOM}}
        exportTo:  #<
        - "*"
        """), ("spec", "exportTo"), "can only be exported to its own namespace"),

    # --- ServiceEntry -------------------------------------------------------------------------
    Case("se-hosts-required", doc(SE, """
        ports: [{number: 80, name: http, protocol: HTTP}]
        """, mark_spec=True), ("spec", "hosts"), "at least one host is required"),
    Case("se-bare-star", doc(SE, """
        hosts:
        - "*"  #<
        """), ("spec", "hosts", 0), "'*' is not allowed"),
    Case("se-wildcard-with-dns", doc(SE, """
        hosts:
        - "*.example.com"  #<
        ports: [{number: 443, name: tls, protocol: TLS}]
        resolution: DNS
        """), ("spec", "hosts", 0), "must be a DNS name (no wildcard) with resolution DNS"),
    Case("se-endpoints-and-selector", doc(SE, """
        hosts: [db.example.com]
        resolution: STATIC
        workloadSelector:
          labels: {app: db}
        endpoints:  #<
        - address: 10.0.0.1
        """), ("spec", "endpoints"), "cannot be used with workloadSelector"),
    Case("se-static-needs-endpoints", doc(SE, """
        hosts: [db.example.com]
        resolution: STATIC  #<
        """), ("spec", "resolution"), "needs endpoints or a workloadSelector"),
    Case("se-static-endpoint-not-ip", doc(SE, """
        hosts: [db.example.com]
        ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
        resolution: STATIC
        endpoints:
        - address: db1.example.com  #<
        """), ("spec", "endpoints", 0, "address"), "must be an IP address"),
    Case("se-dns-endpoint-address", doc(SE, """
        hosts: [db.example.com]
        resolution: DNS
        endpoints:
        - address: "db one"  #<
        """), ("spec", "endpoints", 0, "address"), "must be an IP address, a DNS name"),
    Case("se-none-with-endpoints", doc(SE, """
        hosts: [db.example.com]
        endpoints:  #<
        - address: 10.0.0.1
        """), ("spec", "endpoints"), "resolution NONE (the default) takes no endpoints"),
    Case("se-dns-round-robin-endpoints", doc(SE, """
        hosts: [db.example.com]
        resolution: DNS_ROUND_ROBIN
        endpoints:  #<
        - address: a.example.com
        - address: b.example.com
        """), ("spec", "endpoints"), "takes at most one endpoint, got 2"),
    Case("se-duplicate-port-number", doc(SE, """
        hosts: [api.example.com]
        ports:
        - {number: 80, name: http, protocol: HTTP}
        - number: 80  #<
          name: http-alt
          protocol: HTTP
        """), ("spec", "ports", 1, "number"), "duplicate port number 80 (also ports[0])"),
    Case("se-duplicate-port-name", doc(SE, """
        hosts: [api.example.com]
        ports:
        - {number: 80, name: http, protocol: HTTP}
        - number: 8080
          name: http  #<
          protocol: HTTP
        """), ("spec", "ports", 1, "name"), "duplicate port name 'http'"),
    Case("se-port-name-required", doc(SE, """
        hosts: [api.example.com]
        ports:
        - number: 80  #<
          protocol: HTTP
        """), ("spec", "ports", 0), "port name is required"),
    Case("se-port-range", doc(SE, """
        hosts: [api.example.com]
        ports:
        - name: http
          number: 99999  #<
        """), ("spec", "ports", 0, "number"), "port must be in 1-65535, got 99999"),
    Case("se-target-port-range", doc(SE, """
        hosts: [api.example.com]
        ports:
        - name: http
          number: 80
          targetPort: 70000  #<
        """), ("spec", "ports", 0, "targetPort"), "port must be in 1-65535, got 70000"),
    Case("se-protocol", doc(SE, """
        hosts: [mail.example.com]
        ports:
        - name: smtp
          number: 25
          protocol: SMTP  #<
        """), ("spec", "ports", 0, "protocol"), "unsupported protocol 'SMTP'"),
    Case("se-address-invalid", doc(SE, """
        hosts: [api.example.com]
        addresses:
        - 300.1.1.1  #<
        """), ("spec", "addresses", 0), "invalid IP address or CIDR block"),
    Case("se-cidr-with-dns", doc(SE, """
        hosts: [api.example.com]
        addresses:  #<
        - 10.0.0.0/16
        resolution: DNS
        """), ("spec", "addresses"), "CIDR addresses are only allowed with resolution NONE"),
    Case("se-endpoint-port-undeclared", doc(SE, """
        hosts: [api.example.com]
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: STATIC
        endpoints:
        - address: 10.0.0.1
          ports:
            https: 8443  #<
        """), ("spec", "endpoints", 0, "ports", "https"), "is not one of the ServiceEntry's"),
    Case("se-multiple-hosts-tcp", doc(SE, """
        hosts: [a.example.com, b.example.com]
        ports:
        - name: tcp
          number: 9000
          protocol: TCP  #<
        resolution: DNS
        """), ("spec", "ports", 0, "protocol"), "several hosts need HTTP or TLS ports"),
    Case("se-selector-wildcard", doc(SE, """
        hosts: [api.example.com]
        resolution: STATIC
        workloadSelector:
          labels:
            app: "*"  #<
        """), ("spec", "workloadSelector", "labels", "app"), "wildcards are not allowed"),
    Case("se-location-enum", doc(SE, """
        hosts: [api.example.com]
        location: OUTSIDE  #<
        """), ("spec", "location"), "must be one of"),

    # --- WorkloadEntry --------------------------------------------------------------------------
    Case("we-address-required", doc(WE, """
        labels: {app: vm}
        """, mark_spec=True), ("spec", "address"), "address is required"),
    Case("we-address-invalid", doc(WE, """
        address: "10.0.0.1:8080"  #<
        """), ("spec", "address"), "must be an IP address, a DNS name or unix://path"),
    Case("we-unix-relative", doc(WE, """
        address: unix://relative  #<
        """), ("spec", "address"), "unix address must be an absolute path"),
    Case("we-unix-with-ports", doc(WE, """
        address: unix://@foo
        ports:  #<
          http: 80
        """), ("spec", "ports"), "must not have ports"),
    Case("we-port-range", doc(WE, """
        address: 10.0.0.1
        ports:
          http: 99999  #<
        """), ("spec", "ports", "http"), "port must be in 1-65535, got 99999"),
    Case("we-port-name", doc(WE, """
        address: 10.0.0.1
        ports:
          "@": 80  #<
        """), ("spec", "ports", "@"), "port name must be a DNS-1123 label"),
    Case("we-weight", doc(WE, """
        address: 10.0.0.1
        weight: -1  #<
        """), ("spec", "weight"), "must be >= 0, got -1"),
    Case("we-service-account", doc(WE, """
        address: 10.0.0.1
        serviceAccount: Bad_SA  #<
        """), ("spec", "serviceAccount"), "must be a service account name"),
    Case("we-labels", doc(WE, """
        address: 10.0.0.1
        labels:
          app: "vm one"  #<
        """), ("spec", "labels", "app"), "invalid label value"),

    # --- WorkloadGroup --------------------------------------------------------------------------
    Case("wg-template-required", doc(WG, """
        metadata:
          labels: {app: vm}
        """, mark_spec=True), ("spec", "template"), "template is required"),
    Case("wg-probe-port", doc(WG, """
        template: {serviceAccount: sa}
        probe:
          tcpSocket:
            port: 65536  #<
        """), ("spec", "probe", "tcpSocket", "port"), "port must be in 1-65535, got 65536"),
    Case("wg-probe-header", doc(WG, """
        template: {}
        probe:
          httpGet:
            port: 80
            httpHeaders:
            - name: "**"  #<
        """), ("spec", "probe", "httpGet", "httpHeaders", 0, "name"),
        "must be letters, digits and '-'"),
    Case("wg-probe-two-methods", doc(WG, """
        template: {}
        probe:  #<
          httpGet: {port: 80}
          tcpSocket: {port: 80}
        """), ("spec", "probe"), "got httpGet, tcpSocket"),
    Case("wg-probe-negative", doc(WG, """
        template: {}
        probe:
          periodSeconds: -5  #<
          tcpSocket: {port: 80}
        """), ("spec", "probe", "periodSeconds"), "must be >= 0, got -5"),
    Case("wg-template-port-name", doc(WG, """
        template:
          ports:
            grpc_port: 3550  #<
        """), ("spec", "template", "ports", "grpc_port"), "port name must be a DNS-1123 label"),
    Case("wg-metadata-labels", doc(WG, """
        metadata:
          labels:
            "-app": reviews  #<
        template: {}
        """), ("spec", "metadata", "labels", "-app"), "invalid label key"),

    # --- Gateway --------------------------------------------------------------------------------
    Case("gw-servers-required", doc(GW, """
        selector: {istio: ingressgateway}
        """, mark_spec=True), ("spec", "servers"), "at least one server is required"),
    Case("gw-port-required", doc(GW, """
        servers:
        - hosts: ["*"]  #<
        """), ("spec", "servers", 0), "port is required"),
    Case("gw-port-protocol", doc(GW, """
        servers:
        - hosts: ["*"]
          port:
            number: 80
            name: http
            protocol: FTP  #<
        """), ("spec", "servers", 0, "port", "protocol"), "unsupported protocol 'FTP'"),
    Case("gw-port-number", doc(GW, """
        servers:
        - hosts: ["*"]
          port:
            number: 0  #<
            name: http
            protocol: HTTP
        """), ("spec", "servers", 0, "port", "number"), "port must be in 1-65535, got 0"),
    Case("gw-port-name-required", doc(GW, """
        servers:
        - hosts: ["*"]
          port:  #<
            number: 80
            protocol: HTTP
        """), ("spec", "servers", 0, "port"), "port name is required"),
    Case("gw-target-port", doc(GW, """
        servers:
        - hosts: ["*"]
          port:
            number: 80
            name: http
            protocol: HTTP
            targetPort: 8080  #<
        """), ("spec", "servers", 0, "port", "targetPort"), "has no effect on Gateways"),
    Case("gw-hosts-required", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}  #<
        """), ("spec", "servers", 0, "hosts"), "at least one host is required"),
    Case("gw-host-namespace", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts:
          - Bad_NS/bookinfo.example.com  #<
        """), ("spec", "servers", 0, "hosts", 0), "invalid namespace 'Bad_NS'"),
    Case("gw-host-short-name", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts:
          - bookinfo/productpage  #<
        """), ("spec", "servers", 0, "hosts", 0), "short name 'productpage'"),
    Case("gw-host-partial-wildcard", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts:
          - "*/*app.example.com"  #<
        """), ("spec", "servers", 0, "hosts", 0), "partial wildcard"),
    Case("gw-https-needs-tls", doc(GW, """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}  #<
          hosts: ["*"]
        """), ("spec", "servers", 0, "tls"), "a HTTPS server needs tls settings"),
    Case("gw-simple-needs-certificate", doc(GW, """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: ["*"]
          tls:  #<
            mode: SIMPLE
        """), ("spec", "servers", 0, "tls"),
        "needs serverCertificate and privateKey, or credentialName"),
    Case("gw-mutual-needs-ca", doc(GW, """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: ["*"]
          tls:  #<
            mode: MUTUAL
            serverCertificate: /etc/certs/server.pem
            privateKey: /etc/certs/key.pem
        """), ("spec", "servers", 0, "tls"), "needs caCertificates"),
    Case("gw-istio-mutual-with-certificate", doc(GW, """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: ["*"]
          tls:
            mode: ISTIO_MUTUAL
            serverCertificate: /etc/certs/server.pem  #<
        """), ("spec", "servers", 0, "tls", "serverCertificate"),
        "must be empty with mode ISTIO_MUTUAL"),
    Case("gw-http-with-tls-termination", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ["*"]
          tls:  #<
            mode: SIMPLE
            credentialName: cert
        """), ("spec", "servers", 0, "tls"), "can only use tls.httpsRedirect"),
    Case("gw-duplicate-port-name", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ["*"]
        - port:
            number: 8080
            name: http  #<
            protocol: HTTP
          hosts: ["*"]
        """), ("spec", "servers", 1, "port", "name"), "duplicate port name 'http'"),
    Case("gw-bind", doc(GW, """
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ["*"]
          bind: localhost  #<
        """), ("spec", "servers", 0, "bind"), "must be an IP address or unix://path"),

    # --- Sidecar --------------------------------------------------------------------------------
    Case("sc-empty", f"apiVersion: {NET}\nkind: Sidecar\nmetadata:\n  name: t\nspec: {{}}  #<\n",
         ("spec",), "empty Sidecar"),
    Case("sc-egress-host-format", doc(SC, """
        egress:
        - hosts:
          - reviews.bookinfo.svc.cluster.local  #<
        """), ("spec", "egress", 0, "hosts", 0), "must be <namespace>/<host>"),
    Case("sc-egress-host-namespace", doc(SC, """
        egress:
        - hosts:
          - "Bad_NS/*"  #<
        """), ("spec", "egress", 0, "hosts", 0), "invalid namespace 'Bad_NS'"),
    Case("sc-egress-hosts-required", doc(SC, """
        egress:
        - port: {number: 9080, name: http, protocol: HTTP}  #<
        """), ("spec", "egress", 0, "hosts"), "at least one host is required"),
    Case("sc-catch-all-not-last", doc(SC, """
        egress:
        - hosts: ["./*"]  #<
        - port: {number: 9080, name: http, protocol: HTTP}
          hosts: ["istio-system/*"]
        """), ("spec", "egress", 0), "must be the last one"),
    Case("sc-egress-port-zero-needs-uds", doc(SC, """
        egress:
        - port: {number: 0, name: http, protocol: HTTP}
          bind: 127.0.0.1  #<
          hosts: ["./*"]
        """), ("spec", "egress", 0, "bind"), "must bind a unix domain socket"),
    Case("sc-ingress-port-required", doc(SC, """
        ingress:
        - defaultEndpoint: 127.0.0.1:8080  #<
        """), ("spec", "ingress", 0), "port is required"),
    Case("sc-ingress-duplicate-port", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 127.0.0.1:8080
        - port:
            number: 9080  #<
            name: http-2
            protocol: HTTP
          defaultEndpoint: 127.0.0.1:8081
        """), ("spec", "ingress", 1, "port", "number"), "duplicate port 9080"),
    Case("sc-default-endpoint-host", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 10.0.0.1:8080  #<
        """), ("spec", "ingress", 0, "defaultEndpoint"), "must be 127.0.0.1:<port>"),
    Case("sc-default-endpoint-port", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: "127.0.0.1:http"  #<
        """), ("spec", "ingress", 0, "defaultEndpoint"), "is not a number"),
    Case("sc-ingress-tls-plain-port", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 127.0.0.1:8080
          tls:  #<
            mode: SIMPLE
            serverCertificate: /etc/certs/cert.pem
            privateKey: /etc/certs/key.pem
        """), ("spec", "ingress", 0, "tls"), "need an HTTPS or TLS port"),
    Case("sc-egress-proxy-mode", doc(SC, """
        outboundTrafficPolicy:
          mode: REGISTRY_ONLY
          egressProxy:  #<
            host: proxy.example.com
            port: {number: 3128}
        """), ("spec", "outboundTrafficPolicy", "egressProxy"), "needs mode ALLOW_ANY"),
    Case("sc-selector-wildcard", doc(SC, """
        workloadSelector:
          labels:
            app: "*"  #<
        egress:
        - hosts: ["./*"]
        """), ("spec", "workloadSelector", "labels", "app"), "wildcards are not allowed"),
    Case("sc-inbound-pool", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 127.0.0.1:8080
        inboundConnectionPool:
          http:
            http2MaxRequests: -1  #<
        """), ("spec", "inboundConnectionPool", "http", "http2MaxRequests"),
        "must be >= 0, got -1"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
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


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_weight_message_reads_as_documented() -> None:
    result = load_string(vs_http("""
        route:
        - destination: {host: reviews, subset: v1}
        - destination: {host: reviews, subset: v2}
          weight: -5
        """), source="t.yaml")
    [err] = [d for d in result.errors if d.path[-1] == "weight"]
    assert format_path(err.path) == "spec.http[0].route[1].weight"
    assert err.message == "must be >= 0, got -5"


# --- valid documents -----------------------------------------------------------------------

VALID = [
    ("vs-full", doc(VS, """
        hosts: [reviews, reviews.bookinfo.svc.cluster.local]
        gateways: [mesh, istio-system/ingress]
        http:
        - name: jason
          match:
          - headers:
              end-user: {exact: jason}
              x-present: {}
            uri: {prefix: /api}
            ignoreUriCase: true
          - queryParams:
              debug: {regex: "^(1|true)$"}
            withoutHeaders:
              x-canary: {regex: "*"}
          route:
          - destination: {host: reviews, subset: v2, port: {number: 9080}}
            weight: 80
            headers:
              request: {set: {x-route: v2}}
              response: {remove: [x-internal]}
          - destination: {host: reviews, subset: v3}
            weight: 20
          timeout: 2.5s
          retries:
            attempts: 3
            perTryTimeout: 500ms
            retryOn: gateway-error,connect-failure,refused-stream,503
            retryRemoteLocalities: true
          fault:
            delay: {fixedDelay: 100ms, percentage: {value: 0.5}}
            abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}
          mirrors:
          - destination: {host: reviews, subset: shadow}
            percentage: {value: 10}
          corsPolicy:
            allowOrigins: [{exact: "https://example.com"}, {regex: "https://.*[.]example[.]org"}]
            allowMethods: [GET, POST]
            allowHeaders: [authorization, "*"]
            maxAge: 24h
            allowCredentials: true
            unmatchedPreflights: IGNORE
          headers:
            request: {add: {x-b3-sampled: "1"}, set: {x-rate: "100%%"}}
        - name: redirect-old
          match: [{uri: {exact: /old}}]
          redirect: {uri: /new, redirectCode: 308, derivePort: FROM_REQUEST_PORT}
        - name: teapot
          match: [{uri: {exact: /teapot}}]
          directResponse: {status: 418, body: {string: "I'm a teapot"}}
        - name: rewrite
          match: [{uri: {prefix: /v1}}]
          rewrite: {uriRegexRewrite: {match: "^/v1/(.*)", rewrite: "/v2/\\\\1"}}
          route: [{destination: {host: reviews}}]
        - route: [{destination: {host: reviews, subset: v1}}]
        tcp:
        - match: [{port: 27017, destinationSubnets: [10.0.0.0/8]}]
          route: [{destination: {host: mongo.backup.svc.cluster.local, port: {number: 5555}}}]
        exportTo: [".", istio-system]
        """)),
    ("vs-gateway-star", doc(VS, """
        hosts: ["*"]
        gateways: [bookinfo-gateway]
        http:
        - match: [{uri: {prefix: /productpage}}, {uri: {prefix: /static/}}]
          route: [{destination: {host: productpage, port: {number: 9080}}}]
        """)),
    ("vs-delegate", doc(VS, """
        hosts: [bookinfo.example.com]
        gateways: [istio-system/gw]
        http:
        - match: [{uri: {prefix: /reviews}}]
          delegate: {name: reviews, namespace: bookinfo}
        """)),
    ("vs-tls-passthrough", doc(VS, """
        hosts: ["*.example.com"]
        gateways: [istio-system/gw]
        tls:
        - match: [{sniHosts: [a.example.com], port: 443}]
          route: [{destination: {host: a.example.com}}]
        """)),
    ("dr-full", doc(DR, """
        host: reviews.bookinfo.svc.cluster.local
        trafficPolicy:
          loadBalancer:
            consistentHash:
              httpCookie:
                name: user
                ttl: 0s
                path: /
                attributes: [{name: SameSite, value: Strict}]
              maglev: {tableSize: 65537}
            localityLbSetting:
              enabled: true
              failover: [{from: us-east, to: us-west}]
          connectionPool:
            tcp:
              maxConnections: 100
              connectTimeout: 30ms
              idleTimeout: 0s
              tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}
            http:
              http1MaxPendingRequests: 1024
              http2MaxRequests: 1024
              maxRequestsPerConnection: 10
              maxRetries: 3
              idleTimeout: 1h
              h2UpgradePolicy: UPGRADE
              maxConcurrentStreams: 100
              http2KeepAlive: {interval: 15s, timeout: 5s}
          outlierDetection:
            consecutive5xxErrors: 7
            consecutiveGatewayErrors: 5
            splitExternalLocalOriginErrors: true
            consecutiveLocalOriginFailures: 3
            interval: 5m
            baseEjectionTime: 15m
            maxEjectionPercent: 50
            minHealthPercent: 10
          tls: {mode: ISTIO_MUTUAL, sni: reviews.bookinfo, subjectAltNames: [spiffe://x/y]}
          portLevelSettings:
          - port: {number: 9443}
            tls:
              mode: MUTUAL
              clientCertificate: /c.pem
              privateKey: /k.pem
              caCertificates: /ca.pem
          retryBudget: {percent: 20, minRetryConcurrency: 3}
        subsets:
        - name: v1
          labels: {version: v1}
          trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 30s}}}
        - name: v2
          labels: {version: v2}
        exportTo: ["*"]
        """)),
    ("dr-workload-selector", doc(DR, """
        host: example.com
        workloadSelector:
          matchLabels: {app: ratings}
        trafficPolicy:
          portLevelSettings:
          - port: {number: 31443}
            tls: {mode: MUTUAL, credentialName: client-credential}
        exportTo: ["."]
        """)),
    ("se-static", doc(SE, """
        hosts: [db.internal.example.com]
        addresses: [10.10.0.0/16]
        ports:
        - {number: 5432, name: tcp-postgres, protocol: TCP, targetPort: 15432}
        location: MESH_INTERNAL
        resolution: STATIC
        endpoints:
        - address: 10.10.0.11
          ports: {tcp-postgres: 5433}
          labels: {role: primary}
          locality: us-east1/us-east1-b
          weight: 2
          serviceAccount: postgres
        - address: unix:///var/run/pg.sock
        exportTo: ["~"]
        """)),
    ("se-dns-wildcard-with-endpoint", doc(SE, """
        hosts: ["*.googleapis.com"]
        ports: [{number: 443, name: https, protocol: https}]
        resolution: DNS
        endpoints: [{address: private.googleapis.com}]
        """)),
    ("we-vm", doc(WE, """
        address: vm1.example.com
        ports: {http: 8080, grpc: 9090}
        labels: {app: ratings, version: v3}
        network: vm-net
        locality: us-west/zone1
        weight: 5
        serviceAccount: ratings
        """)),
    ("wg-grpc-probe", doc(WG, """
        metadata:
          labels: {app: ratings}
          annotations: {owner: team-a}
        template:
          ports: {grpc: 9090}
          serviceAccount: ratings
          network: vm-net
        probe:
          initialDelaySeconds: 5
          periodSeconds: 10
          grpc: {port: 9090, service: ratings.v1.Ratings}
        """)),
    ("gw-https-redirect-and-sds", doc(GW, """
        selector: {istio: ingressgateway}
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ["bookinfo/*.example.com"]
          tls: {httpsRedirect: true}
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: ["./bookinfo.example.com"]
          tls:
            mode: SIMPLE
            credentialName: bookinfo-cert
            minProtocolVersion: TLSV1_2
            cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
        - port: {number: 15443, name: tls, protocol: TLS}
          hosts: ["*.local"]
          tls: {mode: AUTO_PASSTHROUGH}
        """)),
    ("sc-ingress-egress", doc(SC, """
        workloadSelector:
          labels: {app: ratings}
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 127.0.0.1:8080
          connectionPool: {http: {http1MaxPendingRequests: 100}}
        - port: {number: 9443, name: https, protocol: HTTPS}
          defaultEndpoint: "[::1]:8443"
          tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
        egress:
        - port: {number: 0, name: http, protocol: HTTP}
          bind: unix:///var/run/egress.sock
          hosts: ["./*"]
        - hosts: ["./*", "istio-system/*", "~/*"]
        outboundTrafficPolicy:
          mode: ALLOW_ANY
          egressProxy: {host: proxy.egress.svc.cluster.local, port: {number: 3128}}
        inboundConnectionPool:
          tcp: {maxConnections: 500}
        """)),
    ("sc-ingress-only", doc(SC, """
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: ":8080"
        """)),
]


@pytest.mark.parametrize(("name", "text"), VALID, ids=[v[0] for v in VALID])
def test_valid_resource_loads_without_diagnostics(name: str, text: str) -> None:
    result = load_string(text, source="t.yaml", namespace="bookinfo")
    assert result.diagnostics == [], describe(result.diagnostics)
    assert len(result.resources) == 1


def test_deprecated_spellings_are_accepted() -> None:
    text = doc(VS, """
        hosts: [ratings]
        http:
        - fault:
            delay:
              percent: 50
              fixedDelay: 7s
          mirror: {host: ratings, subset: v2}
          mirrorPercent: 25
          corsPolicy:
            allowOrigin: ["https://example.com"]
          route: [{destination: {host: ratings, subset: v1}}]
        tcp:
        - match: [{sourceSubnet: 10.0.0.0/8}]
          route: [{destination: {host: ratings}}]
        """) + "---\n" + doc(DR, """
        host: ratings
        trafficPolicy:
          outlierDetection: {consecutiveErrors: 7}
          loadBalancer:
            consistentHash: {httpHeaderName: x-user, minimumRingSize: 1024}
            warmupDurationSecs: 60s
        """)
    result = load_string(text, source="t.yaml")
    assert result.errors == [], describe(result.errors)
    vs, dr = result.resources
    route = vs.spec.http[0]
    assert route.fault.delay.percent == 50
    assert route.fault.delay.fixed_delay == 7.0
    assert route.mirror_percent == 25
    assert route.cors_policy.allow_origin == ["https://example.com"]
    assert vs.spec.tcp[0].match[0].source_subnet == "10.0.0.0/8"
    assert dr.spec.traffic_policy.outlier_detection.consecutive_errors == 7
    assert dr.spec.traffic_policy.load_balancer.consistent_hash.minimum_ring_size == 1024
    # Istio warns about these deprecations; so do we, without rejecting anything.
    warned = {d.path[-1] for d in result.warnings}
    assert {"mirrorPercent", "consecutiveErrors", "minimumRingSize",
            "warmupDurationSecs", "sourceSubnet"} <= warned


def test_durations_are_parsed_to_seconds() -> None:
    text = vs_http("""
        timeout: 1m30s
        retries: {attempts: 2, perTryTimeout: 250ms, backoff: 25ms}
        fault:
          delay: {fixedDelay: 1.5s, percentage: {value: 100}}
        corsPolicy:
          allowOrigins: [{prefix: "https://"}]
          maxAge: 24h
        """ + ROUTE_V1) + "---\n" + doc(DR, """
        host: reviews
        trafficPolicy:
          connectionPool:
            tcp: {connectTimeout: 30ms, maxConnectionDuration: 1h, idleTimeout: 0s}
            http: {idleTimeout: 90s}
          outlierDetection: {interval: 1m, baseEjectionTime: 0.5s}
        """)
    result = load_string(text, source="t.yaml")
    assert result.errors == [], describe(result.errors)
    vs, dr = result.resources
    route = vs.spec.http[0]
    assert route.timeout == 90.0
    assert route.retries.per_try_timeout == pytest.approx(0.25)
    assert route.retries.backoff == pytest.approx(0.025)
    assert route.fault.delay.fixed_delay == 1.5
    assert route.cors_policy.max_age == 86400.0
    policy = dr.spec.traffic_policy
    assert policy.connection_pool.tcp.connect_timeout == pytest.approx(0.03)
    assert policy.connection_pool.tcp.max_connection_duration == 3600.0
    assert policy.connection_pool.tcp.idle_timeout == 0.0
    assert policy.connection_pool.http.idle_timeout == 90.0
    assert policy.outlier_detection.interval == 60.0
    assert policy.outlier_detection.base_ejection_time == 0.5


def test_wire_names_round_trip() -> None:
    spec = VirtualServiceSpec.model_validate({
        "hosts": ["r"],
        "http": [{"route": [{"destination": {"host": "r"}}],
                  "directResponse": {"status": 200, "body": {"bytes": "aGk="}},
                  "headers": {"request": {"set": {"x": "1"}}}}],
        "exportTo": ["."],
    })
    dumped = spec.model_dump(by_alias=True, exclude_defaults=True)
    assert dumped["exportTo"] == ["."]
    assert dumped["http"][0]["directResponse"]["body"] == {"bytes": "aGk="}
    assert dumped["http"][0]["headers"]["request"] == {"set": {"x": "1"}}


def test_ipv6_address_split_by_flow_yaml_is_rejoined() -> None:
    # PyYAML reads the flow list item `2001:db8::` as {'2001:db8:': None}; Kubernetes
    # reads a string. The model undoes the split.
    spec = ServiceEntrySpec.model_validate({"hosts": ["a.example.com"],
                                            "addresses": ["10.0.0.1", {"2001:db8:": None}]})
    assert spec.addresses == ["10.0.0.1", "2001:db8::"]


def test_warnings_do_not_reject() -> None:
    text = doc(SE, """
        hosts: ["*x.example.com"]
        workloadSelector: {labels: {app: db}}
        """)
    result = load_string(text, source="t.yaml")
    assert result.errors == []
    assert len(result.resources) == 1
    messages = [d.message for d in result.warnings]
    assert any("partial wildcard" in m for m in messages)
    assert any("no effect with resolution NONE" in m for m in messages)


def test_source_match_on_gateway_only_route_is_a_warning() -> None:
    text = doc(VS, """
        hosts: ["*"]
        gateways: [bookinfo-gateway]
        http:
        - match:
          - sourceLabels: {app: curl}
          route: [{destination: {host: productpage}}]
        """)
    result = load_string(text, source="t.yaml")
    assert result.errors == []
    [warning] = result.warnings
    assert warning.path == ("spec", "http", 0, "match", 0, "sourceLabels")
    assert "only to gateways" in warning.message
