"""The inbound side of one workload's security, in one object for every driver.

A framework middleware, a gRPC interceptor or the sidecar asks :class:`InboundSecurity`
two things: which mTLS mode a port accepts (``PeerAuthentication``), and, per request,
whether to let it through: JWT authentication (``RequestAuthentication``, 401 on a bad
token) then authorization (``AuthorizationPolicy``, 403 ``RBAC: access denied``), with
denials and AUDIT matches written to the audit log. Everything is compiled once per
configuration; a driver applies the :class:`InboundDecision` (answer it, or forward
the request with the header changes) and never decides anything itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config
from meshsdk.security.audit import AuditLog
from meshsdk.security.authz import (
    AuthzRequest,
    CustomCheck,
    Decision,
    compile_policies,
)
from meshsdk.security.jwks import JwksCache
from meshsdk.security.jwt_authn import AuthnResult, compile_request_authn
from meshsdk.security.peer_authn import Mode, MtlsPolicy, resolve_mtls
from meshsdk.workload import Workload


@dataclass(frozen=True, slots=True)
class InboundDecision:
    """What to do with one inbound request.

    Allowed: forward it after removing ``headers_to_remove`` and setting
    ``headers_to_set`` (JWT outputs, CUSTOM provider headers) and, when not None,
    replacing the query string with ``query``; add ``response_headers`` to the answer.
    Denied: answer ``status`` with ``body`` and ``response_headers``.
    """

    allowed: bool
    status: int | None
    body: bytes
    response_headers: tuple[tuple[str, str], ...]
    headers_to_set: tuple[tuple[str, str], ...]
    headers_to_remove: tuple[str, ...]
    query: str | None
    authn: AuthnResult
    authz: Decision | None          # None when authentication already refused it
    request_principal: str | None


_DECISION_CACHE_LIMIT = 1024
_VERDICT_CACHE_LIMIT = 4096
"""Distinct requests (method, host, path, peer, addresses) whose verdicts are kept; the
cache starts over when full (paths with ids in them are unbounded)."""
_VerdictKey = tuple[str, str, str, str | None, str | None, str | None, str | None,
                    int | None, str | None, bool]


class InboundSecurity:
    """PeerAuthentication, RequestAuthentication and AuthorizationPolicy of one workload."""

    def __init__(self, config: Config, mesh: MeshConfig, workload: Workload, *,
                 jwks: JwksCache | None = None, audit: AuditLog | None = None,
                 custom: CustomCheck | None = None, workload_kind: str = "",
                 workload_name: str = "") -> None:
        root = mesh.root_namespace
        ns, labels = workload.namespace, workload.labels
        self.mtls: MtlsPolicy = resolve_mtls(config, ns, labels, root_namespace=root)
        self.jwt = compile_request_authn(config, ns, labels, root_namespace=root,
                                         jwks_cache=jwks, workload_kind=workload_kind,
                                         workload_name=workload_name)
        self.authorizer = compile_policies(config, ns, labels, root_namespace=root,
                                           workload_kind=workload_kind,
                                           workload_name=workload_name)
        self.audit = audit if audit is not None else AuditLog()
        self._custom = custom
        # Without RequestAuthentication every request authenticates alike, and the
        # InboundDecision is then a function of the authorization Decision alone (those
        # are shared objects, compiled with the policies): both are made once, here or
        # on first use, and live exactly as long as these compiled policies.
        self._anonymous: AuthnResult | None = None if self.jwt else AuthnResult(ok=True)
        self._decisions: dict[int, InboundDecision] = {}
        # Verdicts by request attributes, when they are all a verdict can depend on: no
        # JWT (claims), no CUSTOM provider (an outside call), no rule reading a header.
        # Then a verdict is a pure function of the key below, for as long as these
        # compiled policies live; only verdicts nothing logs are kept (see check).
        policies = self.authorizer.policies
        self._verdicts: dict[_VerdictKey, InboundDecision] | None = (
            {} if self._anonymous is not None and not any(
                p.reads_headers or p.action == "CUSTOM" for p in policies) else None)

    def mode_for(self, port: int) -> Mode:
        """STRICT, PERMISSIVE or DISABLE for a workload port."""
        return self.mtls.mode_for(port)

    def check(self, *, method: str, host: str, path: str, headers: Sequence[tuple[str, str]],
              peer: str | None = None, source_ip: str | None = None,
              remote_ip: str | None = None, destination_ip: str | None = None,
              destination_port: int | None = None, sni: str | None = None,
              grpc: bool = False) -> InboundDecision:
        """Authenticate then authorize one request. ``headers`` have lower-case names;
        ``path`` may carry its query string; ``peer`` is the caller's verified SPIFFE
        ID (None over plaintext)."""
        verdicts = self._verdicts
        key: _VerdictKey | None = None
        if verdicts is not None:
            key = (method, host, path, peer, source_ip, remote_ip, destination_ip,
                   destination_port, sni, grpc)
            known = verdicts.get(key)
            if known is not None:
                return known
        authn = self._anonymous
        if authn is None:
            authn = self.jwt.authenticate(headers, path.partition("?")[2], method=method)
        if not authn.ok:
            return InboundDecision(
                allowed=False, status=authn.status, body=authn.body,
                response_headers=tuple(authn.response_headers), headers_to_set=(),
                headers_to_remove=(), query=None, authn=authn, authz=None,
                request_principal=None)
        joined = dict(headers)
        if len(joined) != len(headers):  # a repeated header: its values joined with ","
            joined = {}
            for name, value in headers:
                joined[name] = f"{joined[name]},{value}" if name in joined else value
        req = AuthzRequest(
            principal=peer, request_principal=authn.request_principal,
            claims=authn.claims or {}, audiences=tuple(authn.audiences or ()),
            presenter=authn.presenter, source_ip=source_ip, remote_ip=remote_ip,
            destination_ip=destination_ip, destination_port=destination_port, host=host,
            method=method, path=path, headers=joined, sni=sni, grpc=grpc)
        decision = self.authorizer.check(req, custom=self._custom)
        self.audit.record(req, decision)
        if authn is self._anonymous and decision.custom is None:
            made = self._decisions.get(id(decision))
            if made is None or made.authz is not decision:
                if len(self._decisions) >= _DECISION_CACHE_LIMIT:
                    self._decisions.clear()
                made = self._decisions[id(decision)] = self._inbound_decision(authn, decision)
            if key is not None and self.audit.level_for(decision) is None:
                # a denial or an audited allow is logged per request: never kept
                assert verdicts is not None
                if len(verdicts) >= _VERDICT_CACHE_LIMIT:
                    verdicts.clear()
                verdicts[key] = made
            return made
        return self._inbound_decision(authn, decision)

    @staticmethod
    def _inbound_decision(authn: AuthnResult, decision: Decision) -> InboundDecision:
        """The verdict for an authenticated request that authorization decided."""
        if not decision.allowed:
            custom = decision.custom
            return InboundDecision(
                allowed=False, status=decision.http_status, body=decision.body,
                response_headers=tuple(custom.headers_to_downstream) if custom else (),
                headers_to_set=(), headers_to_remove=(), query=None, authn=authn,
                authz=decision, request_principal=authn.request_principal)
        to_set = tuple(authn.headers_to_set)
        to_remove = tuple(authn.headers_to_remove)
        downstream: tuple[tuple[str, str], ...] = ()
        if decision.custom is not None:  # the external authorizer's header changes
            to_set += tuple(decision.custom.headers_to_upstream)
            to_remove += tuple(decision.custom.headers_to_remove)
            downstream = tuple(decision.custom.headers_to_downstream)
        return InboundDecision(
            allowed=True, status=None, body=b"", response_headers=downstream,
            headers_to_set=to_set,
            headers_to_remove=to_remove, query=authn.query,
            authn=authn, authz=decision, request_principal=authn.request_principal)


def lower_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]]
                  ) -> list[tuple[str, str]]:
    """Header pairs with lower-case names, from a mapping or a pair list."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.lower(), v) for k, v in items]


__all__ = ["InboundDecision", "InboundSecurity", "lower_headers"]
