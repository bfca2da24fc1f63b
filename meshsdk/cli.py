"""``meshctl``: validate and explain mesh configuration from the command line.

Exit codes: 0 success, 1 the config has errors (or the host is unknown), 2 the
command line itself is wrong. Bad input never produces a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from meshsdk.config.diagnostics import Diagnostic
from meshsdk.config.loader import DEFAULT_NAMESPACE, LoadResult, config_from_result, load_path
from meshsdk.errors import ConfigError, MeshError

CONFIG_ENV = "MESHSDK_CONFIG"


class _Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and a one-line hint instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshctl", description="Validate and explain meshsdk configuration "
                     "(Istio YAML).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    v = sub.add_parser("validate", help="validate Istio YAML files or directories",
                       description="Validate files/directories of Istio YAML. Exit 0 when "
                       "valid, 1 on errors; warnings go to stderr.")
    v.add_argument("paths", nargs="+", metavar="PATH")
    v.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE,
                   help="namespace for documents that name none (default: %(default)s)")
    v.add_argument("-o", "--output", choices=("text", "json"), default="text")

    d = sub.add_parser("describe", help="show the routing a client would use for a host",
                       description="Show routes, matches, splits, subsets, endpoints and "
                       "policies for HOST as a client in --namespace sees them.")
    d.add_argument("host", metavar="HOST", help="e.g. reviews, reviews:9080 or an FQDN")
    d.add_argument("-c", "--config", action="append", metavar="PATH",
                   help=f"config file or directory (repeatable; default ${CONFIG_ENV})")
    d.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE,
                   help="the client's namespace (default: %(default)s)")
    d.add_argument("-l", "--labels", default="", metavar="K=V,...",
                   help="the client workload's labels (for sourceLabels matches)")
    d.add_argument("-o", "--output", choices=("text", "json"), default="text")
    _add_ca_parser(sub)

    sub.add_parser("serve", help="run the config service (files or etcd)", add_help=False,
                   description="All arguments go to the config service; "
                   "`meshctl serve --help` lists them.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from meshsdk.controlplane.server import main as serve  # grpc only when serving
        return serve(argv[1:], prog="meshctl serve")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args, sys.stdout, sys.stderr)
        if args.command == "ca":
            return _ca(args, sys.stdout, sys.stderr)
        return _describe(args, sys.stdout, sys.stderr)
    except ConfigError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except MeshError as exc:
        print(f"meshctl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(paths: Sequence[str], namespace: str) -> LoadResult:
    result = LoadResult()
    for p in paths:
        result.extend(load_path(p, namespace=namespace))
    return result


def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    result = _load(args.paths, args.namespace)
    diagnostics = list(result.diagnostics)
    if not result.errors:
        config = config_from_result(result)
        diagnostics = [*result.errors, *config.warnings]
    errors = [d for d in diagnostics if d.is_error]
    if args.output == "json":
        json.dump({"valid": not errors, "resources": len(result.resources),
                   "errors": len(errors), "warnings": len(diagnostics) - len(errors),
                   "diagnostics": [d.to_dict() for d in diagnostics]}, out, indent=2)
        out.write("\n")
    else:
        _print_diagnostics(diagnostics, err)
        if errors:
            print(f"{len(errors)} error(s), {len(diagnostics) - len(errors)} warning(s)",
                  file=err)
        else:
            print(f"ok: {len(result.resources)} resources valid "
                  f"({len(diagnostics)} warning(s))", file=out)
    return 1 if errors else 0


def _print_diagnostics(diagnostics: Sequence[Diagnostic], err: TextIO) -> None:
    for d in diagnostics:
        print(d.format(), file=err)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise MeshError(f"--labels: expected K=V pairs separated by commas, got {item!r}")
        labels[key] = value
    return labels


def _describe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from meshsdk.config.describe import describe_host, render_text
    from meshsdk.config.snapshot import Snapshot

    paths = args.config or ([os.environ[CONFIG_ENV]] if os.environ.get(CONFIG_ENV) else [])
    if not paths:
        raise MeshError(f"describe needs --config PATH (or ${CONFIG_ENV})")
    labels = _parse_labels(args.labels)
    result = _load(paths, DEFAULT_NAMESPACE)
    config = config_from_result(result)
    _print_diagnostics(config.warnings, err) if args.output == "text" else None
    info = describe_host(Snapshot(config), args.host, args.namespace, labels)
    if args.output == "json":
        json.dump(info, out, indent=2)
        out.write("\n")
    else:
        out.write(render_text(info))
    return 0 if info.get("service") or info.get("virtualService") else 1


# --- ca: the mesh CA and workload certificates ------------------------------------------


def _add_ca_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    ca = sub.add_parser("ca", help="create a mesh CA, issue and inspect workload certificates",
                        description="Istio-style mesh CA files: a self-signed root "
                        "(init), workload certificates (issue), certificate details "
                        "(inspect). Exit 1 on unusable files.")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", parser_class=_Parser)
    ca_sub.required = True

    init = ca_sub.add_parser("init", help="create a self-signed root CA (10 years)",
                             description="Write ca-cert.pem, ca-key.pem (0600), "
                             "cert-chain.pem and root-cert.pem (Istio's plug-in CA files).")
    init.add_argument("--out", required=True, metavar="DIR")
    init.add_argument("--trust-domain", default="cluster.local",
                      help="trust domain, also the root's organization (default: "
                      "%(default)s)")
    init.add_argument("--key-type", choices=("EC", "RSA"), default="EC",
                      help="EC P-256 or RSA 2048 (default: %(default)s)")
    init.add_argument("--force", action="store_true",
                      help="overwrite an existing CA in DIR")

    issue = ca_sub.add_parser("issue", help="issue a workload certificate",
                              description="Make a key here, a CSR, and have the CA in --ca "
                              "sign it; write key.pem (0600), cert-chain.pem and "
                              "root-cert.pem to --out.")
    issue.add_argument("--namespace", "-n", required=True)
    issue.add_argument("--service-account", "--sa", required=True)
    issue.add_argument("--ca", required=True, metavar="DIR",
                       help="directory of the plug-in CA files")
    issue.add_argument("--out", required=True, metavar="DIR")
    issue.add_argument("--trust-domain", default="cluster.local",
                       help="trust domain of the identity (default: %(default)s)")
    issue.add_argument("--lifetime", default="24h",
                       help="certificate lifetime, e.g. 24h, 90m (default: %(default)s)")
    issue.add_argument("--key-type", choices=("EC", "RSA"), default="EC",
                       help="EC P-256 or RSA 2048 (default: %(default)s)")

    inspect = ca_sub.add_parser("inspect", help="show a certificate (or chain) file",
                                description="Print subject, SPIFFE ID, issuer, validity "
                                "and key type of every certificate in CERT.")
    inspect.add_argument("cert", metavar="CERT")


def _ca(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from meshsdk.security.errors import SecurityError

    try:
        if args.ca_command == "init":
            return _ca_init(args, out)
        if args.ca_command == "issue":
            return _ca_issue(args, out)
        return _ca_inspect(args, out)
    except SecurityError as exc:
        print(f"meshctl: {exc}", file=err)
        return 1


def _ca_init(args: argparse.Namespace, out: TextIO) -> int:
    from pathlib import Path

    from meshsdk.security.ca import CA_KEY, PLUGIN_FILES, MeshCA
    from meshsdk.security.errors import SecurityError

    target = Path(args.out)
    if (target / CA_KEY).exists() and not args.force:
        raise SecurityError(f"{target / CA_KEY}: a CA already exists here (use --force to "
                            "replace it)")
    ca = MeshCA.create(args.trust_domain, key_type=args.key_type)
    ca.save(target)
    cert = ca.certificate
    print(f"created root CA {cert.subject.rfc4514_string()} (trust domain "
          f"{ca.trust_domain}, valid until {cert.not_valid_after_utc:%Y-%m-%d})", file=out)
    print(f"wrote {', '.join(PLUGIN_FILES)} to {target}", file=out)
    return 0


def _ca_issue(args: argparse.Namespace, out: TextIO) -> int:
    import datetime as dt
    from pathlib import Path

    from meshsdk.config.types import parse_duration
    from meshsdk.security.ca import (
        MeshCA,
        make_csr,
        new_key,
        private_key_pem,
        write_file,
    )
    from meshsdk.security.errors import SecurityError
    from meshsdk.security.spiffe import spiffe_id

    try:
        lifetime = dt.timedelta(seconds=parse_duration(args.lifetime))
    except ValueError as exc:
        raise MeshError(f"--lifetime {exc}") from None
    ca = MeshCA.load(args.ca, trust_domain=args.trust_domain)
    uri = spiffe_id(ca.trust_domain, args.namespace, args.service_account)
    key = new_key(args.key_type)
    issued = ca.sign_csr(make_csr(key, uri), namespace=args.namespace,
                         service_account=args.service_account, lifetime=lifetime)
    target = Path(args.out)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecurityError(f"{target}: cannot create directory: {exc.strerror}") from exc
    write_file(target / "key.pem", private_key_pem(key), private=True)
    write_file(target / "cert-chain.pem", issued.chain_pem)
    write_file(target / "root-cert.pem", issued.root_pem)
    cert = issued.certificate
    print(f"issued {uri} (serial {cert.serial_number:x}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})", file=out)
    print(f"wrote key.pem, cert-chain.pem, root-cert.pem to {target}", file=out)
    return 0


def _ca_inspect(args: argparse.Namespace, out: TextIO) -> int:
    import datetime as dt
    from pathlib import Path

    from meshsdk.security.ca import is_ca, key_description, read_certs
    from meshsdk.security.spiffe import spiffe_ids_of

    path = Path(args.cert)
    certs = read_certs(path)
    now = dt.datetime.now(dt.UTC)
    for i, cert in enumerate(certs, 1):
        if len(certs) > 1:
            print(f"certificate {i} of {len(certs)}:", file=out)
        after = cert.not_valid_after_utc
        if after <= now:
            state = "EXPIRED"
        elif cert.not_valid_before_utc > now:
            state = "not yet valid"
        else:
            left = after - now
            state = f"expires in {left.days}d {left.seconds // 3600}h" if left.days else \
                f"expires in {left.seconds // 3600}h {left.seconds % 3600 // 60}m"
        rows = [
            ("subject", cert.subject.rfc4514_string() or "(empty)"),
            ("SPIFFE ID", ", ".join(spiffe_ids_of(cert)) or "(none)"),
            ("issuer", cert.issuer.rfc4514_string() or "(empty)"),
            ("serial", f"{cert.serial_number:x}"),
            ("not before", f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"),
            ("not after", f"{after:%Y-%m-%dT%H:%M:%SZ} ({state})"),
            ("key", key_description(cert.public_key())),
            ("CA", "yes" if is_ca(cert) else "no"),
        ]
        for name, value in rows:
            print(f"  {name + ':':<12}{value}", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
