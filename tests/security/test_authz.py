"""AuthorizationPolicy decisions, table-driven, from YAML through the real loader.

Each case is a set of policies (YAML documents), one request to the workload
``foo/httpbin`` (labels ``app: httpbin``) and the expected outcome: allowed or not,
which action decided and which ``ns/name`` policy (and rule) did it. The semantics are
Istio's (see ``meshsdk/security/authz.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshsdk.config import Resource, config_from_result, load_mesh_config_string, load_string
from meshsdk.config.kinds.authorization_policy import AuthorizationPolicySpec
from meshsdk.security.audit import AUDIT_LOGGER, AuditLog, audit_fields
from meshsdk.security.authz import (
    DENIED_BODY,
    DENIED_GRPC_STATUS,
    DENIED_STATUS,
    Authorizer,
    AuthzRequest,
    CustomResult,
    Decision,
    ProviderRef,
    compile_policies,
    path_template_regex,
)

ROOT = "istio-system"
NS = "foo"
LABELS = {"app": "httpbin", "version": "v1"}

ISS = "https://issuer.example.com"
CLAIMS: dict[str, Any] = {
    "iss": ISS, "sub": "alice", "aud": ["orders", "billing"], "azp": "web-app",
    "groups": ["dev", "admins"], "org": {"team": "blue", "tags": ["a", "b"]}, "admin": True,
}


def ap(name: str, spec: str, ns: str = NS, annotations: Mapping[str, str] | None = None) -> str:
    """An AuthorizationPolicy document whose spec body is ``spec``."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") if spec.strip() else "  {}"
    meta = f"  name: {name}\n  namespace: {ns}\n"
    if annotations:
        meta += "  annotations:\n" + "".join(f"    {k}: {v!r}\n" for k, v in annotations.items())
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n{meta}"
            f"spec:\n{body}\n")


def rq(**kw: Any) -> AuthzRequest:
    """A request from ``client/sleep`` over mTLS to httpbin, unless overridden."""
    base: dict[str, Any] = dict(
        principal="cluster.local/ns/client/sa/sleep", source_ip="10.1.2.3",
        destination_ip="10.0.0.10", destination_port=8000, host="httpbin.foo:8000",
        method="GET", path="/ip")
    base.update(kw)
    return AuthzRequest(**base)


def jwt(**kw: Any) -> AuthzRequest:
    """A request carrying a validated JWT of alice."""
    return rq(request_principal=f"{ISS}/alice", claims=CLAIMS, **kw)


def plain(**kw: Any) -> AuthzRequest:
    """A plaintext request (no peer identity)."""
    return rq(principal=None, **kw)


MESH_EXT = """
extensionProviders:
- name: ext
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
- name: ext2
  envoyExtAuthzHttp:
    service: ext-authz2.foo.svc.cluster.local
    port: 8000
- name: grpc-ext
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9000
"""
MESH_TD = """
trustDomain: new-td
trustDomainAliases: [old-td]
"""


def ext_allows_header(req: AuthzRequest, provider: ProviderRef) -> CustomResult:
    """A CUSTOM provider that allows requests carrying ``x-ext-authz: allow``."""
    if req.headers.get("x-ext-authz") == "allow":
        return CustomResult(True, 200, headers_to_upstream=(("x-user", "alice"),))
    return CustomResult(False, 401, body=b"denied by ext")


def ext_raises(req: AuthzRequest, provider: ProviderRef) -> CustomResult:
    raise RuntimeError("authorizer exploded")


@dataclass(frozen=True)
class Case:
    id: str
    policies: list[str]
    req: AuthzRequest
    allowed: bool
    action: str
    policy: str | None = None
    rule: int | None = None
    audit: tuple[str, ...] = ()
    mesh: str = ""
    custom: Callable[[AuthzRequest, ProviderRef], CustomResult] | None = ext_allows_header
    workload: tuple[str, Mapping[str, str], str, str] = (NS, LABELS, "", "")
    extra: Mapping[str, Any] = field(default_factory=dict)


def C(id: str, policies: str | list[str], req: AuthzRequest, allowed: bool, action: str,
      policy: str | None = None, rule: int | None = 0, **kw: Any) -> Case:
    docs = [policies] if isinstance(policies, str) else policies
    if policy is None:
        rule = None
    return Case(id, docs, req, allowed, action, policy, rule, **kw)


ALLOW_ALL = ap("allow-all", "rules: [{}]")
CUSTOM_EXT = ap("ext", """
action: CUSTOM
provider: {name: ext}
rules:
- to: [{operation: {paths: ["/ext/*"]}}]
""")


def allow(name: str, rule: str, ns: str = NS) -> str:
    """An ALLOW policy with one rule (YAML of the rule's body)."""
    return ap(name, "rules:\n- " + textwrap.indent(textwrap.dedent(rule).strip(), "  ")[2:], ns)


def deny(name: str, rule: str, ns: str = NS) -> str:
    return ap(name, "action: DENY\nrules:\n- "
              + textwrap.indent(textwrap.dedent(rule).strip(), "  ")[2:], ns)


def src(**fields: Any) -> str:
    return f"from: [{{source: {_flow(fields)}}}]"


def op(**fields: Any) -> str:
    return f"to: [{{operation: {_flow(fields)}}}]"


def cond(key: str, values: list[str] | None = None,
         not_values: list[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"key": key}
    if values is not None:
        found["values"] = values
    if not_values is not None:
        found["notValues"] = not_values
    return found


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> str:
    return f"when: {_flow([cond(key, values, not_values)])}"


def _flow(value: Any) -> str:
    """YAML flow style (JSON is YAML)."""
    import json

    return json.dumps(value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def S(**fields: Any) -> str:
    return src(**{_camel(k): v for k, v in fields.items()})


def O(**fields: Any) -> str:  # noqa: E743 - reads like the YAML key
    return op(**{_camel(k): v for k, v in fields.items()})


P = "foo/p"  # the single policy most cases use


CASES = [
    # --- actions and their precedence ------------------------------------------------------
    C("no-policy-allows", [], rq(), True, "DEFAULT"),
    C("spec-empty-denies-all", ap("deny-all", ""), rq(), False, "DEFAULT"),
    C("rules-empty-rule-allows-all", ALLOW_ALL, rq(), True, "ALLOW", "foo/allow-all"),
    C("allow-present-none-matching-denies", allow("p", O(paths=["/admin"])), rq(),
      False, "DEFAULT"),
    C("allow-matching-allows", allow("p", O(paths=["/ip"])), rq(), True, "ALLOW", P),
    C("deny-only-not-matching-allows", deny("p", O(paths=["/admin"])), rq(), True, "DEFAULT"),
    C("deny-matching-denies", deny("p", O(paths=["/ip"])), rq(), False, "DENY", P),
    C("deny-beats-allow", [ALLOW_ALL, deny("d", O(paths=["/ip"]))], rq(), False, "DENY",
      "foo/d"),
    C("deny-no-match-then-allow", [ALLOW_ALL, deny("d", O(paths=["/x"]))], rq(), True,
      "ALLOW", "foo/allow-all"),
    C("second-rule-matches", ap("p", """
        rules:
        - to: [{operation: {paths: ["/a"]}}]
        - to: [{operation: {paths: ["/ip"]}}]
        """), rq(), True, "ALLOW", P, 1),
    C("allow-spec-empty-with-other-allow", [ap("none", ""), ALLOW_ALL], rq(), True, "ALLOW",
      "foo/allow-all"),
    C("audit-never-decides", ap("a", "action: AUDIT\nrules: [{}]"), rq(), True, "DEFAULT",
      audit=("foo/a",)),
    C("audit-recorded-on-deny", [ap("a", "action: AUDIT\nrules: [{}]"),
                                 deny("d", O(methods=["GET"]))], rq(), False, "DENY",
      "foo/d", audit=("foo/a",)),
    C("audit-not-matching", ap("a", "action: AUDIT\nrules:\n- to: [{operation: "
                                    "{methods: [POST]}}]"), rq(), True, "DEFAULT"),
    C("audit-with-allow-policy", [ap("a", "action: AUDIT\nrules: [{}]"),
                                  allow("p", O(paths=["/nope"]))], rq(), False, "DEFAULT",
      audit=("foo/a",)),
    # --- CUSTOM ------------------------------------------------------------------------------
    C("custom-allows-then-allow-decides", [CUSTOM_EXT, ALLOW_ALL],
      rq(path="/ext/x", headers={"x-ext-authz": "allow"}), True, "ALLOW", "foo/allow-all",
      mesh=MESH_EXT),
    C("custom-denies", [CUSTOM_EXT, ALLOW_ALL], rq(path="/ext/x"), False, "CUSTOM", "foo/ext",
      mesh=MESH_EXT),
    C("custom-beats-deny", [CUSTOM_EXT, deny("d", O(paths=["/ext/*"]))], rq(path="/ext/x"),
      False, "CUSTOM", "foo/ext", mesh=MESH_EXT),
    C("custom-allows-deny-still-denies", [CUSTOM_EXT, deny("d", O(paths=["/ext/*"]))],
      rq(path="/ext/x", headers={"x-ext-authz": "allow"}), False, "DENY", "foo/d",
      mesh=MESH_EXT),
    C("custom-not-matching-skips-provider", [CUSTOM_EXT], rq(path="/other"), True, "DEFAULT",
      mesh=MESH_EXT, custom=ext_raises),
    C("custom-no-handler-denies", [CUSTOM_EXT], rq(path="/ext/x"), False, "CUSTOM", "foo/ext",
      mesh=MESH_EXT, custom=None),
    C("custom-handler-error-denies", [CUSTOM_EXT], rq(path="/ext/x"), False, "CUSTOM",
      "foo/ext", mesh=MESH_EXT, custom=ext_raises),
    C("custom-handler-error-fail-open", [CUSTOM_EXT], rq(path="/ext/x"), True, "DEFAULT",
      mesh=MESH_EXT.replace("    port: 8000\n- name: ext2", "    port: 8000\n    failOpen: true"
                                                             "\n- name: ext2"),
      custom=ext_raises),
    C("custom-unknown-provider-denies-all", [CUSTOM_EXT, ALLOW_ALL], rq(path="/other"), False,
      "CUSTOM", None, mesh=""),
    C("custom-two-providers-deny-all", [CUSTOM_EXT, ap("ext2", """
        action: CUSTOM
        provider: {name: ext2}
        rules: [{to: [{operation: {paths: ["/ext2"]}}]}]
        """), ALLOW_ALL], rq(path="/other"), False, "CUSTOM", None, mesh=MESH_EXT),
    C("custom-not-an-authz-provider", [ap("ext", """
        action: CUSTOM
        provider: {name: prometheus}
        rules: [{}]
        """)], rq(), False, "CUSTOM", None, mesh=MESH_EXT),
    # --- source: principals, request principals ----------------------------------------------
    C("principals-exact", allow("p", S(principals=["cluster.local/ns/client/sa/sleep"])), rq(),
      True, "ALLOW", P),
    C("principals-exact-other", allow("p", S(principals=["cluster.local/ns/client/sa/other"])),
      rq(), False, "DEFAULT"),
    C("principals-prefix", allow("p", S(principals=["cluster.local/ns/client/*"])), rq(),
      True, "ALLOW", P),
    C("principals-suffix", allow("p", S(principals=["*/sa/sleep"])), rq(), True, "ALLOW", P),
    C("principals-any-mtls", allow("p", S(principals=["*"])), rq(), True, "ALLOW", P),
    C("principals-any-plaintext", allow("p", S(principals=["*"])), plain(), False, "DEFAULT"),
    C("principals-spiffe-scheme-stripped", allow("p", S(principals=[
        "cluster.local/ns/client/sa/sleep"])), rq(principal="spiffe://cluster.local/ns/client"
                                                            "/sa/sleep"), True, "ALLOW", P),
    C("not-principals-listed", allow("p", S(not_principals=["cluster.local/ns/client/sa/sleep"])),
      rq(), False, "DEFAULT"),
    C("deny-plaintext-with-not-principals", deny("p", S(not_principals=["*"])), plain(),
      False, "DENY", P),
    C("deny-plaintext-lets-mtls-through", deny("p", S(not_principals=["*"])), rq(), True,
      "DEFAULT"),
    C("request-principals-exact", allow("p", S(request_principals=[f"{ISS}/alice"])), jwt(),
      True, "ALLOW", P),
    C("request-principals-any-without-jwt", allow("p", S(request_principals=["*"])), rq(),
      False, "DEFAULT"),
    C("request-principals-any-with-jwt", allow("p", S(request_principals=["*"])), jwt(),
      True, "ALLOW", P),
    C("request-principals-subject-prefix", allow("p", S(request_principals=[f"{ISS}/ali*"])),
      jwt(), True, "ALLOW", P),
    C("request-principals-any-subject", allow("p", S(request_principals=[f"{ISS}/*"])), jwt(),
      True, "ALLOW", P),
    C("request-principals-split-at-last-slash", allow("p", S(
        request_principals=["https://issuer.example.*"])), jwt(), False, "DEFAULT"),
    C("request-principals-issuer-is-exact", allow("p", S(
        request_principals=["https://issuer.example/*"])), jwt(), False, "DEFAULT"),
    C("request-principals-issuer-suffix", allow("p", S(request_principals=["*.example.com/alice"])),
      jwt(), True, "ALLOW", P),
    C("deny-without-jwt", deny("p", S(not_request_principals=["*"])), rq(), False, "DENY", P),
    C("deny-without-jwt-passes-jwt", deny("p", S(not_request_principals=["*"])), jwt(), True,
      "DEFAULT"),
    # --- source: namespaces, service accounts, trust domains -----------------------------------
    C("namespaces-exact", allow("p", S(namespaces=["client"])), rq(), True, "ALLOW", P),
    C("namespaces-other", allow("p", S(namespaces=["prod"])), rq(), False, "DEFAULT"),
    C("namespaces-need-mtls", allow("p", S(namespaces=["client"])), plain(), False, "DEFAULT"),
    C("namespaces-prefix", allow("p", S(namespaces=["cli*"])), rq(), True, "ALLOW", P),
    C("namespaces-glob-inside", allow("p", S(namespaces=["c*t"])), rq(), True, "ALLOW", P),
    C("not-namespaces", allow("p", S(not_namespaces=["client"])), rq(), False, "DEFAULT"),
    C("not-namespaces-plaintext-matches", allow("p", S(not_namespaces=["client"])), plain(),
      True, "ALLOW", P),
    C("service-accounts-ns-sa", allow("p", S(service_accounts=["client/sleep"])), rq(), True,
      "ALLOW", P),
    C("service-accounts-bare-is-policy-namespace", allow("p", S(service_accounts=["sleep"])),
      rq(), False, "DEFAULT"),
    C("service-accounts-bare-same-namespace", allow("p", S(service_accounts=["sleep"])),
      rq(principal="cluster.local/ns/foo/sa/sleep"), True, "ALLOW", P),
    C("service-accounts-any-trust-domain", allow("p", S(service_accounts=["client/sleep"])),
      rq(principal="other.td/ns/client/sa/sleep"), True, "ALLOW", P),
    C("not-service-accounts", deny("p", S(not_service_accounts=["client/sleep"])), rq(
        principal="cluster.local/ns/client/sa/intruder"), False, "DENY", P),
    C("trust-domains", allow("p", S(trust_domains=["cluster.local"])), rq(), True, "ALLOW", P),
    C("trust-domain-alias-in-policy", allow("p", S(principals=["old-td/ns/client/sa/sleep"])),
      rq(principal="new-td/ns/client/sa/sleep"), True, "ALLOW", P, mesh=MESH_TD),
    C("cluster-local-means-local-domain", allow("p", S(principals=[
        "cluster.local/ns/client/sa/sleep"])), rq(principal="old-td/ns/client/sa/sleep"), True,
      "ALLOW", P, mesh=MESH_TD),
    C("foreign-trust-domain-kept", allow("p", S(principals=["other/ns/client/sa/sleep"])),
      rq(principal="new-td/ns/client/sa/sleep"), False, "DEFAULT", mesh=MESH_TD),
    # --- source: addresses ----------------------------------------------------------------------
    C("ip-blocks-cidr", allow("p", S(ip_blocks=["10.1.0.0/16"])), rq(), True, "ALLOW", P),
    C("ip-blocks-single-ip", allow("p", S(ip_blocks=["10.1.2.3"])), rq(), True, "ALLOW", P),
    C("ip-blocks-miss", allow("p", S(ip_blocks=["10.2.0.0/16"])), rq(), False, "DEFAULT"),
    C("ip-blocks-v6", allow("p", S(ip_blocks=["fd00::/8"])), rq(source_ip="fd00::1:2"), True,
      "ALLOW", P),
    C("ip-blocks-v6-vs-v4", allow("p", S(ip_blocks=["::/0"])), rq(), False, "DEFAULT"),
    C("not-ip-blocks", deny("p", S(not_ip_blocks=["10.0.0.0/8"])), rq(source_ip="192.0.2.1"),
      False, "DENY", P),
    C("remote-ip-blocks-use-original-client", allow("p", S(remote_ip_blocks=["203.0.113.0/24"])),
      rq(source_ip="10.1.2.3", remote_ip="203.0.113.9"), True, "ALLOW", P),
    C("ip-blocks-use-direct-peer", allow("p", S(ip_blocks=["203.0.113.0/24"])),
      rq(source_ip="10.1.2.3", remote_ip="203.0.113.9"), False, "DEFAULT"),
    C("remote-ip-defaults-to-source", allow("p", S(remote_ip_blocks=["10.1.2.0/24"])), rq(),
      True, "ALLOW", P),
    C("not-remote-ip-blocks", deny("p", S(not_remote_ip_blocks=["203.0.113.0/24"])),
      rq(remote_ip="198.51.100.1"), False, "DENY", P),
    # --- operation -----------------------------------------------------------------------------
    C("hosts-ignore-case", allow("p", O(hosts=["HTTPBIN.foo:8000"])), rq(), True, "ALLOW", P),
    C("hosts-port-not-ignored", allow("p", O(hosts=["httpbin.foo"])), rq(), False, "DEFAULT"),
    C("hosts-any-port", allow("p", O(hosts=["httpbin.foo:*"])), rq(), True, "ALLOW", P),
    C("hosts-suffix", allow("p", O(hosts=["*.example.com"])), rq(host="API.Example.com"),
      True, "ALLOW", P),
    C("hosts-leading-star-wins", allow("p", O(hosts=["*.example.com:*"])),
      rq(host="api.example.com:443"), False, "DEFAULT"),
    C("not-hosts", allow("p", O(not_hosts=["httpbin.foo:8000"])), rq(), False, "DEFAULT"),
    C("ports", allow("p", O(ports=["8000"])), rq(), True, "ALLOW", P),
    C("ports-miss", allow("p", O(ports=["9000"])), rq(), False, "DEFAULT"),
    C("not-ports", allow("p", O(not_ports=["9000"])), rq(), True, "ALLOW", P),
    C("methods", allow("p", O(methods=["GET", "HEAD"])), rq(), True, "ALLOW", P),
    C("methods-miss", allow("p", O(methods=["POST"])), rq(), False, "DEFAULT"),
    C("not-methods", deny("p", O(not_methods=["GET"])), rq(method="DELETE"), False, "DENY", P),
    C("grpc-is-post-with-service-path", allow("p", O(methods=["POST"], paths=[
        "/helloworld.Greeter/SayHello"])), rq(method="POST", grpc=True,
                                              path="/helloworld.Greeter/SayHello"),
      True, "ALLOW", P),
    C("grpc-service-prefix", allow("p", O(paths=["/helloworld.Greeter/*"])),
      rq(method="POST", grpc=True, path="/helloworld.Greeter/SayBye"), True, "ALLOW", P),
    C("paths-exact", allow("p", O(paths=["/ip"])), rq(path="/ip/"), False, "DEFAULT"),
    C("paths-prefix", allow("p", O(paths=["/api/*"])), rq(path="/api/v1/x"), True, "ALLOW", P),
    C("paths-suffix", allow("p", O(paths=["*/info"])), rq(path="/api/info"), True, "ALLOW", P),
    C("paths-presence", allow("p", O(paths=["*"])), rq(), True, "ALLOW", P),
    C("paths-query-ignored", deny("p", O(paths=["/admin"])), rq(path="/admin?debug=1"), False,
      "DENY", P),
    C("paths-fragment-ignored", deny("p", O(paths=["/admin"])), rq(path="/admin#top"), False,
      "DENY", P),
    C("not-paths", allow("p", O(not_paths=["/admin*"])), rq(path="/admin/users"), False,
      "DEFAULT"),
    C("template-one-segment", allow("p", O(paths=["/api/{*}/x"])), rq(path="/api/v1/x"), True,
      "ALLOW", P),
    C("template-one-segment-not-two", allow("p", O(paths=["/api/{*}/x"])),
      rq(path="/api/v1/v2/x"), False, "DEFAULT"),
    C("template-one-segment-not-empty", allow("p", O(paths=["/api/{*}/x"])),
      rq(path="/api//x"), False, "DEFAULT"),
    C("template-many-segments", allow("p", O(paths=["/api/{**}"])), rq(path="/api/a/b/c"),
      True, "ALLOW", P),
    C("template-many-zero-segments", allow("p", O(paths=["/api/{**}"])), rq(path="/api/"),
      True, "ALLOW", P),
    C("template-many-needs-slash", allow("p", O(paths=["/api/{**}"])), rq(path="/api"),
      False, "DEFAULT"),
    C("template-many-then-literal", allow("p", O(paths=["/files/{**}/raw"])),
      rq(path="/files/a/b/raw"), True, "ALLOW", P),
    C("template-query-ignored", allow("p", O(paths=["/items/{*}"])),
      rq(path="/items/42?expand=true"), True, "ALLOW", P),
    C("several-operations-or", allow("p", "to: [{operation: {paths: [/a]}}, "
                                          "{operation: {methods: [GET]}}]"), rq(),
      True, "ALLOW", P),
    C("several-sources-or", allow("p", "from: [{source: {namespaces: [x]}}, "
                                       "{source: {namespaces: [client]}}]"), rq(),
      True, "ALLOW", P),
    C("fields-and-within-operation", allow("p", O(methods=["GET"], paths=["/admin"])), rq(),
      False, "DEFAULT"),
    C("from-and-to-both-needed", allow("p", S(namespaces=["client"]) + "\n"
                                       + O(paths=["/admin"])), rq(), False, "DEFAULT"),
    # --- when ----------------------------------------------------------------------------------
    C("when-header-exact", allow("p", when("request.headers[x-token]", ["abc"])),
      rq(headers={"x-token": "abc"}), True, "ALLOW", P),
    C("when-header-prefix", allow("p", when("request.headers[User-Agent]", ["curl/*"])),
      rq(headers={"user-agent": "curl/8.1"}), True, "ALLOW", P),
    C("when-header-presence-empty-value", allow("p", when("request.headers[x-flag]", ["*"])),
      rq(headers={"x-flag": ""}), True, "ALLOW", P),
    C("when-header-missing", allow("p", when("request.headers[x-flag]", ["*"])), rq(), False,
      "DEFAULT"),
    C("when-header-not-values-missing-header", allow("p", when(
        "request.headers[x-env]", not_values=["prod"])), rq(), True, "ALLOW", P),
    C("when-values-and-not-values", allow("p", when("request.headers[x-env]", ["pr*"],
                                                    ["prod"])),
      rq(headers={"x-env": "prod"}), False, "DEFAULT"),
    C("when-source-ip", allow("p", when("source.ip", ["10.1.2.0/24"])), rq(), True, "ALLOW", P),
    C("when-remote-ip", deny("p", when("remote.ip", ["203.0.113.0/24"])),
      rq(remote_ip="203.0.113.7"), False, "DENY", P),
    C("when-source-namespace", allow("p", when("source.namespace", ["client"])), rq(), True,
      "ALLOW", P),
    C("when-source-principal", allow("p", when("source.principal",
                                               ["cluster.local/ns/client/sa/sleep"])), rq(),
      True, "ALLOW", P),
    C("when-source-service-account", allow("p", when("source.serviceAccount",
                                                     ["client/sleep"])), rq(), True, "ALLOW", P),
    C("when-request-auth-principal", allow("p", when("request.auth.principal",
                                                     [f"{ISS}/alice"])), jwt(), True, "ALLOW", P),
    C("when-audiences-list", allow("p", when("request.auth.audiences", ["billing"])), jwt(),
      True, "ALLOW", P),
    C("when-audiences-without-jwt", allow("p", when("request.auth.audiences", ["billing"])),
      rq(), False, "DEFAULT"),
    C("when-presenter", allow("p", when("request.auth.presenter", ["web-*"])), jwt(), True,
      "ALLOW", P),
    C("when-claim-list-element", allow("p", when("request.auth.claims[groups]", ["admins"])),
      jwt(), True, "ALLOW", P),
    C("when-claim-nested", allow("p", when("request.auth.claims[org][team]", ["blue"])), jwt(),
      True, "ALLOW", P),
    C("when-claim-nested-list", allow("p", when("request.auth.claims[org][tags]", ["b"])),
      jwt(), True, "ALLOW", P),
    C("when-claim-not-string", allow("p", when("request.auth.claims[admin]", ["true"])), jwt(),
      False, "DEFAULT"),
    C("when-claim-missing-not-values", allow("p", when("request.auth.claims[role]",
                                                       not_values=["guest"])), jwt(),
      True, "ALLOW", P),
    C("when-destination-ip", allow("p", when("destination.ip", ["10.0.0.0/24"])), rq(), True,
      "ALLOW", P),
    C("when-destination-port", allow("p", when("destination.port", ["8000"])), rq(), True,
      "ALLOW", P),
    C("when-sni", allow("p", when("connection.sni", ["*.foo.svc.cluster.local"])),
      rq(sni="outbound_.8000_._.httpbin.foo.svc.cluster.local"), True, "ALLOW", P),
    C("when-all-conditions-needed", allow("p", "when: " + _flow([
        cond("source.namespace", ["client"]), cond("destination.port", ["9000"])])),
      rq(), False, "DEFAULT"),
    C("envoy-filter-key-in-allow-never-matches", allow("p", when(
        "experimental.envoy.filters.network.mysql_proxy[db.table]", ["[update]"])), rq(),
      False, "DEFAULT"),
    C("envoy-filter-key-in-deny-is-dropped", deny("p", when(
        "experimental.envoy.filters.network.mysql_proxy[db.table]", ["[update]"])), rq(),
      False, "DENY", P),
    # --- scopes ---------------------------------------------------------------------------------
    C("root-namespace-applies-mesh-wide", allow("root", O(paths=["/ip"]), ns=ROOT), rq(), True,
      "ALLOW", "istio-system/root"),
    C("root-namespace-deny-all", ap("deny-all", "", ns=ROOT), rq(), False, "DEFAULT"),
    C("root-selector-reaches-other-namespaces", ap("sel", """
        selector: {matchLabels: {app: httpbin}}
        action: DENY
        rules: [{to: [{operation: {methods: [GET]}}]}]
        """, ns=ROOT), rq(), False, "DENY", "istio-system/sel"),
    C("root-selector-not-matching", ap("sel", """
        selector: {matchLabels: {app: other}}
        action: DENY
        rules: [{to: [{operation: {methods: [GET]}}]}]
        """, ns=ROOT), rq(), True, "DEFAULT"),
    C("other-namespace-ignored", ap("deny-all", "", ns="bar"), rq(), True, "DEFAULT"),
    C("selector-matching", ap("sel", """
        selector: {matchLabels: {app: httpbin, version: v1}}
        action: DENY
        rules: [{}]
        """), rq(), False, "DENY", "foo/sel"),
    C("selector-not-matching", ap("sel", """
        selector: {matchLabels: {app: httpbin, version: v2}}
        action: DENY
        rules: [{}]
        """), rq(), True, "DEFAULT"),
    C("target-refs-service", ap("svc", """
        targetRefs: [{kind: Service, group: "", name: httpbin}]
        action: DENY
        rules: [{}]
        """), rq(), False, "DENY", "foo/svc", workload=(NS, LABELS, "Service", "httpbin")),
    C("target-refs-other-service", ap("svc", """
        targetRefs: [{kind: Service, group: "", name: reviews}]
        action: DENY
        rules: [{}]
        """), rq(), True, "DEFAULT", workload=(NS, LABELS, "Service", "httpbin")),
    C("target-refs-gateway", ap("gw", """
        targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
        action: DENY
        rules: [{}]
        """), rq(), False, "DENY", "foo/gw",
      workload=(NS, {"gateway.networking.k8s.io/gateway-name": "ingress"}, "", "")),
    # --- dry run --------------------------------------------------------------------------------
    C("dry-run-deny-not-enforced", ap("d", "action: DENY\nrules: [{}]",
                                      annotations={"istio.io/dry-run": "true"}), rq(), True,
      "DEFAULT", extra={"dry_run_allowed": False, "dry_run_matched": ["foo/d"]}),
    C("dry-run-allow-not-enforced", ap("a", "rules: [{to: [{operation: {paths: [/x]}}]}]",
                                       annotations={"istio.io/dry-run": "1"}), rq(), True,
      "DEFAULT", extra={"dry_run_allowed": False, "dry_run_matched": []}),
    C("dry-run-allow-matching", [ap("a", "rules: [{}]", annotations={"istio.io/dry-run": "True"}),
                                 allow("p", O(paths=["/nope"]))], rq(), False, "DEFAULT",
      extra={"dry_run_allowed": True, "dry_run_matched": ["foo/a"]}),
    C("dry-run-false-enforced", ap("d", "action: DENY\nrules: [{}]",
                                   annotations={"istio.io/dry-run": "false"}), rq(), False,
      "DENY", "foo/d"),
    C("dry-run-invalid-value-enforced", ap("d", "action: DENY\nrules: [{}]",
                                           annotations={"istio.io/dry-run": "yes"}), rq(), False,
      "DENY", "foo/d", extra={"warning": "is not a boolean"}),
    # --- plain TCP ------------------------------------------------------------------------------
    C("tcp-allow-with-http-field-never-matches", allow("p", O(paths=["/ip"])), rq(tcp=True),
      False, "DEFAULT"),
    C("tcp-allow-with-tcp-fields", allow("p", O(ports=["8000"])), rq(tcp=True), True, "ALLOW",
      P),
    C("tcp-deny-http-only-denies-all", deny("p", O(paths=["/admin"])), rq(tcp=True), False,
      "DENY", P),
    C("tcp-deny-keeps-tcp-fields", deny("p", O(paths=["/admin"], ports=["9000"])),
      rq(tcp=True), True, "DEFAULT"),
    C("tcp-deny-request-principal-dropped", deny("p", S(request_principals=["x/y"],
                                                         namespaces=["client"])),
      rq(tcp=True), False, "DENY", P),
    C("tcp-custom-http-provider-ignored", [ap("ext", """
        action: CUSTOM
        provider: {name: ext}
        rules: [{}]
        """)], rq(tcp=True), True, "DEFAULT", mesh=MESH_EXT, custom=ext_raises),
    C("tcp-custom-grpc-provider-applies", [ap("ext", """
        action: CUSTOM
        provider: {name: grpc-ext}
        rules: [{}]
        """)], rq(tcp=True), False, "CUSTOM", "foo/ext", mesh=MESH_EXT),
]


def build(case: Case) -> Authorizer:
    result = load_string("---\n".join(case.policies), source=f"{case.id}.yaml")
    assert not result.errors, [d.message for d in result.errors]
    mesh = None
    if case.mesh:
        mesh, diags = load_mesh_config_string(case.mesh)
        assert mesh is not None, diags
    config = config_from_result(result, mesh=mesh)
    ns, labels, kind, name = case.workload
    return compile_policies(config, ns, labels, root_namespace=ROOT, workload_kind=kind,
                            workload_name=name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    authz = build(case)
    decision = authz.check(case.req, custom=case.custom)
    got = (decision.allowed, decision.action, decision.policy, decision.rule)
    assert got == (case.allowed, case.action, case.policy, case.rule), decision.reason
    assert decision.audit == case.audit
    if "dry_run_allowed" in case.extra:
        assert decision.dry_run_allowed is case.extra["dry_run_allowed"]
        matched = [r.policy for r in decision.dry_run_results if r.matched]
        assert matched == case.extra["dry_run_matched"]
    else:
        assert decision.dry_run_allowed is None and decision.dry_run_results == ()
    if "warning" in case.extra:
        assert any(case.extra["warning"] in w for w in authz.warnings), authz.warnings


def test_enough_cases() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


# --- details beyond the table -------------------------------------------------------------------


def authorizer(*docs: str, mesh: str = "") -> Authorizer:
    return build(Case("t", list(docs), rq(), True, "DEFAULT", mesh=mesh))


def test_denied_answers() -> None:
    decision = authorizer(deny("d", "to: [{operation: {paths: ['/ip']}}]")).check(rq())
    assert (decision.http_status, decision.body, decision.grpc_status) == (
        DENIED_STATUS, DENIED_BODY, DENIED_GRPC_STATUS)
    assert DENIED_STATUS == 403 and DENIED_BODY == b"RBAC: access denied"
    allowed = authorizer().check(rq())
    assert (allowed.http_status, allowed.body, allowed.grpc_status) == (None, b"", 0)


def test_custom_denial_answer_and_upstream_headers() -> None:
    authz = authorizer(CUSTOM_EXT, mesh=MESH_EXT)
    denied = authz.check(rq(path="/ext/a"), custom=ext_allows_header)
    assert (denied.http_status, denied.body, denied.grpc_status) == (401, b"denied by ext", 16)
    assert denied.reason.startswith("denied by CUSTOM provider 'ext' (status 401)")
    allowed = authz.check(rq(path="/ext/a", headers={"x-ext-authz": "allow"}),
                          custom=ext_allows_header)
    assert allowed.allowed and allowed.custom is not None
    assert allowed.custom.headers_to_upstream == (("x-user", "alice"),)
    assert authz.provider is not None and authz.provider.name == "ext"


def test_custom_provider_called_once_with_its_reference() -> None:
    calls: list[tuple[str, str]] = []

    def provider(req: AuthzRequest, ref: ProviderRef) -> CustomResult:
        calls.append((req.path, ref.name))
        return CustomResult(True, 200)

    authz = authorizer(CUSTOM_EXT, ap("ext-b", """
        action: CUSTOM
        provider: {name: ext}
        rules: [{to: [{operation: {paths: ["/ext/a"]}}]}]
        """), mesh=MESH_EXT)
    assert authz.check(rq(path="/ext/a"), custom=provider).allowed
    assert calls == [("/ext/a", "ext")]


def test_check_async_with_async_provider() -> None:
    async def provider(req: AuthzRequest, ref: ProviderRef) -> CustomResult:
        await asyncio.sleep(0)
        return CustomResult(req.headers.get("x-ext-authz") == "allow", 403)

    authz = authorizer(CUSTOM_EXT, mesh=MESH_EXT)

    async def both() -> tuple[Decision, Decision]:
        return (await authz.check_async(rq(path="/ext/x"), custom=provider),
                await authz.check_async(rq(path="/ext/x", headers={"x-ext-authz": "allow"}),
                                        custom=provider))

    denied, allowed = asyncio.run(both())
    assert (denied.allowed, denied.action) == (False, "CUSTOM")
    assert (allowed.allowed, allowed.action) == (True, "DEFAULT")


def test_warnings_name_the_policy_and_rule() -> None:
    authz = authorizer(allow("p", when("experimental.envoy.filters.a.b[c]", ["x"])))
    assert len(authz.warnings) == 1
    assert authz.warnings[0].startswith("foo/p: rule 0 when 'experimental.envoy.filters")
    assert "never matches" in authz.warnings[0]


def test_decisions_are_shared_when_nothing_varies() -> None:
    authz = authorizer(allow("p", O(paths=["/ip"])))
    assert authz.check(rq()) is authz.check(rq())


def test_audit_decisions_reused() -> None:
    authz = authorizer(ap("a", "action: AUDIT\nrules: [{}]"), ALLOW_ALL)
    first, second = authz.check(rq()), authz.check(rq())
    assert first.audit == ("foo/a",) and first is second


def test_first_matching_rule_in_policy_order_wins_with_index() -> None:
    # Both rules match; the index must not change which one is reported.
    docs = [allow(f"p{i}", S(principals=[f"cluster.local/ns/n{i}/sa/s"])) for i in range(20)]
    docs.insert(5, allow("by-path", O(paths=["/ip"])))
    docs.append(allow("by-principal", S(principals=["cluster.local/ns/client/sa/sleep"])))
    decision = authorizer(*docs).check(rq())
    assert (decision.policy, decision.rule) == ("foo/by-path", 0)
    decision = authorizer(*docs).check(rq(path="/other"))
    assert decision.policy == "foo/by-principal"


def test_request_derivations() -> None:
    req = AuthzRequest(principal="spiffe://td/ns/prod/sa/api", path="/a/b?x=1&y=2#frag",
                       host="API.example.com", source_ip="10.0.0.1",
                       claims={"aud": "one", "azp": "cli"}, request_principal="iss/sub")
    assert (req.principal, req.namespace, req.trust_domain, req.service_account) == (
        "td/ns/prod/sa/api", "prod", "td", "prod/api")
    assert (req.path, req.query, req.target) == ("/a/b", "x=1&y=2", "/a/b?x=1&y=2")
    assert (req.remote_ip, req.audiences, req.presenter) == ("10.0.0.1", ("one",), "cli")
    assert (req.issuer, req.subject) == ("iss", "sub")
    bare = AuthzRequest(principal="")
    assert bare.principal is None and bare.namespace is None


@pytest.mark.parametrize(("template", "path", "matched"), [
    ("/a/{*}", "/a/b", True), ("/a/{*}", "/a/b/c", False), ("/a/{*}", "/a/", False),
    ("/a/{**}", "/a/b/c", True), ("/{*}/b/{**}", "/x/b/y/z", True),
    ("/a/{*}/c", "/a/b=1/c", False), ("/a/{*}.txt", "/a/file.txt", True),
    ("/a/{**}", "/b/c", False),
])
def test_path_templates(template: str, path: str, matched: bool) -> None:
    assert bool(path_template_regex(template).fullmatch(path)) is matched


@pytest.mark.parametrize("template", ["a/{*}", "/{**}/{*}", "/a{*}", "/a/{x}/{*}", "/{*}x/y"])
def test_invalid_path_templates(template: str) -> None:
    with pytest.raises(ValueError, match="path template"):
        path_template_regex(template)


# --- audit log ------------------------------------------------------------------------------------


def test_audit_log_levels_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    authz = authorizer(ap("a", "action: AUDIT\nrules: [{to: [{operation: {methods: [POST]}}]}]"),
                       deny("d", O(paths=["/admin"])))
    log = AuditLog()
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    secret = rq(method="POST", path="/data?access_token=SECRET",
                headers={"authorization": "Bearer SECRET", "x-api-key": "SECRET"})
    log.record(secret, authz.check(secret))
    log.record(rq(), authz.check(rq()))  # allowed, not audited: no record
    denied = rq(path="/admin")
    log.record(denied, authz.check(denied))
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
    fields = [getattr(r, "mesh_authz") for r in records]  # noqa: B009 - set via extra=
    assert fields[0]["decision"] == "allow" and fields[0]["audit"] == ["foo/a"]
    assert fields[0]["path"] == "/data" and fields[0]["method"] == "POST"
    assert fields[0]["principal"] == "cluster.local/ns/client/sa/sleep"
    assert (fields[1]["policy"], fields[1]["decision"]) == ("foo/d", "deny")
    for record, found in zip(records, fields, strict=True):
        assert "SECRET" not in record.getMessage() and "SECRET" not in repr(found)


def test_audit_log_dry_run_disagreement() -> None:
    authz = authorizer(ap("d", "action: DENY\nrules: [{}]",
                          annotations={"istio.io/dry-run": "true"}))
    decision = authz.check(rq())
    assert AuditLog.level_for(decision) == logging.INFO
    fields = audit_fields(rq(), decision)
    assert fields["dry_run_allowed"] is False
    assert fields["dry_run"] == [{"policy": "foo/d", "action": "DENY", "matched": True,
                                  "rule": 0}]


def test_audit_log_custom_logger() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.authz.audit")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    AuditLog(logger).record(rq(), authorizer(ap("deny-all", "")).check(rq()))
    assert len(records) == 1 and records[0].levelno == logging.WARNING


# --- the index never changes an answer -------------------------------------------------------


def naive(authz: Authorizer, req: AuthzRequest) -> tuple[bool, str, str | None, int | None,
                                                          tuple[str, ...]]:
    """Istio's order evaluated policy by policy, rule by rule: no index, no shortcuts."""
    enforced = [p for p in authz.policies if not p.dry_run]
    audit = tuple(p.name for p in enforced if p.action == "AUDIT"
                  and p.first_match(req) is not None)
    for p in enforced:
        if p.action == "DENY" and (i := p.first_match(req)) is not None:
            return False, "DENY", p.name, i, audit
    allows = [p for p in enforced if p.action == "ALLOW"]
    if not allows:
        return True, "DEFAULT", None, None, audit
    for p in allows:
        if (i := p.first_match(req)) is not None:
            return True, "ALLOW", p.name, i, audit
    return False, "DEFAULT", None, None, audit


def random_policies(rng: random.Random, count: int) -> list[str]:
    """Policies of every shape the index reads (and some it cannot use)."""
    paths = ["/api/v1/{*}/items", "/api/v2/*", "/static/{**}", "/healthz", "*/admin", "/a*"]
    shapes = [
        lambda i: S(principals=[f"cluster.local/ns/n{i % 5}/sa/s{i % 3}"]),
        lambda i: S(namespaces=[f"n{i % 5}", "other"]),
        lambda i: S(service_accounts=[f"n{i % 5}/s{i % 3}"]),
        lambda i: O(paths=[rng.choice(paths)], methods=[rng.choice(["GET", "POST"])]),
        lambda i: O(ports=[str(8000 + i % 3)]) + "\n" + when("destination.port", ["8000",
                                                                                 "8001"]),
        lambda i: O(hosts=[f"h{i % 4}.example.com"], not_paths=["/api/v2/secret"]),
        lambda i: "from: [{source: {principals: [\"*/sa/s1\"]}}, {source: {ipBlocks: "
                  "[\"10.0.0.0/8\"]}}]\n" + O(paths=[rng.choice(paths), "/x/{*}"]),
        lambda i: when("request.headers[x-t]", [f"t{i % 3}", "z*"]),
    ]
    docs = []
    for i in range(count):
        action = rng.choices(["ALLOW", "DENY", "AUDIT"], weights=[6, 1, 2])[0]
        rules = "\n".join("- " + textwrap.indent(rng.choice(shapes)(i), "  ")[2:]
                          for _ in range(rng.randint(1, 2)))
        docs.append(ap(f"p{i}", f"action: {action}\nrules:\n{rules}"))
    return docs


def random_request(rng: random.Random) -> AuthzRequest:
    return AuthzRequest(
        principal=rng.choice([None, *(f"cluster.local/ns/n{i}/sa/s{j}" for i in range(6)
                                      for j in range(3))]),
        source_ip=rng.choice(["10.1.2.3", "192.0.2.7"]),
        destination_port=rng.choice([8000, 8001, 8002, 9000]),
        host=rng.choice(["h0.example.com", "H1.example.com", "h2.example.com:80", "x"]),
        method=rng.choice(["GET", "POST", "DELETE"]),
        path=rng.choice(["/api/v1/7/items", "/api/v1/7/8/items", "/api/v2/secret", "/static/",
                         "/static/a/b", "/healthz", "/healthz?x", "/admin", "/x/admin",
                         "/a", "/abc", "/x/y", "/"]),
        headers=rng.choice([{}, {"x-t": "t1"}, {"x-t": "zz"}]),
        tcp=rng.random() < 0.15)


@pytest.mark.parametrize("seed", range(6))
def test_index_agrees_with_naive_evaluation(seed: int) -> None:
    rng = random.Random(seed)
    authz = authorizer(*random_policies(rng, 30))
    for _ in range(300):
        req = random_request(rng)
        decision = authz.check(req)
        got = (decision.allowed, decision.action, decision.policy, decision.rule,
               decision.audit)
        assert got == naive(authz, req), req


@pytest.mark.parametrize("rule", [{"from": []}, {"to": []}, {"from": [], "to": []},
                                  {"from": [{}]}, {"to": [{}]}])
def test_empty_lists_match_anything(rule: dict[str, Any]) -> None:
    # The loader rejects these (rarely what the author meant); Istio's JSON decoding
    # reads an empty list as absent, i.e. any source / any operation: so do we.
    spec = AuthorizationPolicySpec.model_validate({"action": "DENY", "rules": [rule]})
    resource = Resource("AuthorizationPolicy", "security.istio.io/v1", "p", NS, spec)
    decision = Authorizer.from_resources([resource]).check(rq())
    assert (decision.allowed, decision.action, decision.policy) == (False, "DENY", P)
