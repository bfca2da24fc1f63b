"""Authorization audit trail: one structured ``logging`` record per notable decision.

:meth:`AuditLog.record` writes to the ``meshsdk.audit`` logger: WARNING for a denied
request, INFO for an allowed one that an AUDIT policy matched or that the dry-run
policies would have decided differently; nothing for other allowed requests. The
structured fields ride in ``extra={"mesh_authz": {...}}`` so a JSON formatter or a
log shipper can index them.

Only the named fields are written: identities, method, host, the path WITHOUT its
query string (queries carry tokens, e.g. ``access_token``), addresses and the
decision. Never header values, claims or tokens.
"""

from __future__ import annotations

import logging
from typing import Any

from meshsdk.security.authz import AuthzRequest, Decision

__all__ = ["AUDIT_LOGGER", "AuditLog", "audit_fields"]

AUDIT_LOGGER = "meshsdk.audit"
"""Name of the logger the audit records go to."""


def audit_fields(req: AuthzRequest, decision: Decision) -> dict[str, Any]:
    """The structured fields of one audit record (secret-free by construction)."""
    fields: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "action": decision.action,
        "policy": decision.policy,
        "rule": decision.rule,
        "reason": decision.reason,
        "principal": req.principal,
        "request_principal": req.request_principal,
        "method": req.method,
        "host": req.host,
        "path": req.path,
        "source_ip": req.source_ip,
        "remote_ip": req.remote_ip,
        "destination_port": req.destination_port,
        "audit": list(decision.audit),
    }
    if decision.custom is not None:
        fields["custom_status"] = decision.custom.status
    if decision.dry_run_results:
        fields["dry_run"] = [
            {"policy": r.policy, "action": r.action, "matched": r.matched, "rule": r.rule}
            for r in decision.dry_run_results]
        fields["dry_run_allowed"] = decision.dry_run_allowed
    return fields


class AuditLog:
    """Writes authorization decisions worth keeping to a logger (``meshsdk.audit``)."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger(AUDIT_LOGGER)

    @staticmethod
    def level_for(decision: Decision) -> int | None:
        """WARNING for a denial, INFO for an audited allow or a dry-run disagreement."""
        if not decision.allowed:
            return logging.WARNING
        if decision.audit or (decision.dry_run_allowed is not None
                              and decision.dry_run_allowed != decision.allowed):
            return logging.INFO
        return None

    def record(self, req: AuthzRequest, decision: Decision) -> None:
        """Log ``decision`` for ``req`` if it is worth a record (see :meth:`level_for`)."""
        level = self.level_for(decision)
        if level is None or not self.logger.isEnabledFor(level):
            return
        by = f" by {decision.policy} rule {decision.rule}" if decision.policy else ""
        audited = f" (audit: {', '.join(decision.audit)})" if decision.audit else ""
        self.logger.log(level, "authz %s %s %s%s%s%s: %s",
                        "allow" if decision.allowed else "deny", req.method or "-",
                        req.host or "-", req.path or "", by, audited, decision.reason,
                        extra={"mesh_authz": audit_fields(req, decision)})
