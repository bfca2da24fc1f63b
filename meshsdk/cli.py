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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args, sys.stdout, sys.stderr)
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


if __name__ == "__main__":
    raise SystemExit(main())
