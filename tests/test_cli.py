"""``meshctl`` as users run it: a real process, real files, exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
Write = Callable[..., Path]

BAD_WEIGHT = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata:
      name: reviews
    spec:
      hosts:
      - reviews
      http:
      - route:
        - destination:
            host: reviews
          weight: 105
        - destination: {host: reviews}
          weight: -5
    """)


def meshctl(*args: str | Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "MESHSDK_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "meshsdk.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=full_env,
                          timeout=120)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


# --- validate ---------------------------------------------------------------------------


def test_validate_bookinfo_ok(bookinfo_dir: Path) -> None:
    proc = meshctl("validate", bookinfo_dir)
    assert proc.returncode == 0, proc.stderr
    assert "ok: 17 resources valid" in proc.stdout
    assert proc.stderr == ""


def test_validate_invalid_file(write: Write) -> None:
    path = write("t.yaml", BAD_WEIGHT)
    proc = meshctl("validate", path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert (f"{path}:14: VirtualService default/reviews: spec.http[0].route[1].weight: "
            "must be >= 0, got -5") in proc.stderr.splitlines()
    assert "error(s)" in proc.stderr
    assert "ok:" not in proc.stdout


def test_validate_reports_every_error(write: Write, tmp_path: Path) -> None:
    write("a.yaml", BAD_WEIGHT)
    write("b.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                    "metadata: {name: r}\nspec: {hots: reviews}\n")
    proc = meshctl("validate", tmp_path)
    assert proc.returncode == 1
    assert str(tmp_path / "a.yaml") + ":14:" in proc.stderr
    assert str(tmp_path / "b.yaml") + ":4:" in proc.stderr
    assert "did you mean 'host'" in proc.stderr


def test_validate_json_output(write: Write) -> None:
    path = write("t.yaml", BAD_WEIGHT)
    proc = meshctl("validate", "--output", "json", path)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["valid"] is False
    assert data["errors"] >= 1
    weight = [d for d in data["diagnostics"] if d["path"] == "spec.http[0].route[1].weight"]
    assert len(weight) == 1
    assert weight[0]["file"] == str(path)
    assert weight[0]["line"] == 14
    assert weight[0]["severity"] == "error"
    assert weight[0]["kind"] == "VirtualService"
    assert weight[0]["message"] == "must be >= 0, got -5"


def test_validate_json_output_valid(bookinfo_dir: Path) -> None:
    proc = meshctl("validate", "-o", "json", bookinfo_dir)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data == {"valid": True, "resources": 17, "errors": 0, "warnings": 0,
                    "diagnostics": []}


def test_validate_warnings_do_not_fail(write: Write) -> None:
    path = write("ef.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
                            "metadata: {name: ef}\nspec: {}\n")
    proc = meshctl("validate", path)
    assert proc.returncode == 0
    assert "EnvoyFilter" in proc.stderr
    assert f"{path}:1" in proc.stderr
    assert "1 warning" in proc.stdout


def test_validate_analyzer_warnings_in_json(write: Write) -> None:
    path = write("dr.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                            "metadata: {name: ghost}\nspec: {host: ghost}\n")
    proc = meshctl("validate", "-o", "json", path)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert [d["code"] for d in data["diagnostics"]] == ["MESH0103"]
    assert data["diagnostics"][0]["line"] == 4
    assert data["diagnostics"][0]["path"] == "spec.host"


def test_validate_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.yaml"
    proc = meshctl("validate", missing)
    assert proc.returncode == 1
    no_traceback(proc)
    assert str(missing) in proc.stderr
    assert "no such file or directory" in proc.stderr


def test_validate_binary_file(write: Write) -> None:
    path = write("blob.yaml", bytes(range(256)) * 4)
    proc = meshctl("validate", path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert str(path) in proc.stderr
    assert "UTF-8" in proc.stderr


def test_validate_latin1_file(write: Write) -> None:
    path = write("latin.yaml", "# caf\xe9\nkind: X\n".encode("latin-1"))
    proc = meshctl("validate", path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "UTF-8" in proc.stderr


def test_validate_yaml_syntax_error(write: Write) -> None:
    path = write("broken.yaml", "apiVersion: v1\nkind: [\n")
    proc = meshctl("validate", path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{path}:" in proc.stderr
    assert "YAML syntax error" in proc.stderr


def test_validate_namespace_flag(write: Write) -> None:
    path = write("t.yaml", BAD_WEIGHT)
    proc = meshctl("validate", "-n", "prod", path)
    assert "VirtualService prod/reviews" in proc.stderr


# --- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [],
    ["validate"],
    ["frobnicate"],
    ["validate", "--output", "xml", "examples/bookinfo"],
    ["describe"],
    ["describe", "reviews", "--config", "examples/bookinfo", "--labels", "novalue"],
    ["describe", "reviews"],
    ["validate", "--no-such-flag", "examples/bookinfo"],
])
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    proc = meshctl(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    no_traceback(proc)
    assert "meshctl" in proc.stderr
    assert "error" in proc.stderr


def test_help_exits_0() -> None:
    proc = meshctl("--help")
    assert proc.returncode == 0
    assert "validate" in proc.stdout and "describe" in proc.stdout


# --- describe ----------------------------------------------------------------------------------


def test_describe_reviews(bookinfo_dir: Path) -> None:
    proc = meshctl("describe", "reviews", "--config", bookinfo_dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "reviews.default.svc.cluster.local" in out
    assert "jason" in out
    assert "end-user" in out
    assert "-> 80%" in out and "subset v1" in out
    assert "-> 20%" in out and "subset v3" in out
    assert "-> 100%" in out and "subset v2" in out
    for port in (19082, 19083, 19084):
        assert f"127.0.0.1:{port}" in out
    # the jason route is listed before the canary split
    assert out.index("jason") < out.index("-> 80%")
    assert "ROUND_ROBIN" in out  # v3's own load balancer


def test_describe_uses_meshsdk_config_env(bookinfo_dir: Path) -> None:
    proc = meshctl("describe", "ratings:9080", env={"MESHSDK_CONFIG": str(bookinfo_dir)})
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1:19085" in proc.stdout
    assert "timeout: 7s" in proc.stdout


def test_describe_json(bookinfo_dir: Path) -> None:
    proc = meshctl("describe", "reviews:9080", "-c", bookinfo_dir, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    info: dict[str, Any] = json.loads(proc.stdout)
    assert info["fqdn"] == "reviews.default.svc.cluster.local"
    assert info["port"] == 9080
    assert info["virtualService"]["ref"] == "VirtualService default/reviews"
    jason, canary = info["routes"]
    assert jason["name"] == "jason"
    assert jason["match"][0]["headers"]["end-user"]["exact"] == "jason"
    [v2] = jason["destinations"]
    assert (v2["subset"], v2["share"]) == ("v2", 100)
    assert [e["address"] for e in v2["endpoints"]] == ["127.0.0.1:19083"]
    shares = {d["subset"]: d["share"] for d in canary["destinations"]}
    assert shares == {"v1": 80, "v3": 20}
    eps = {d["subset"]: [e["address"] for e in d["endpoints"]] for d in canary["destinations"]}
    assert eps == {"v1": ["127.0.0.1:19082"], "v3": ["127.0.0.1:19084"]}


def test_describe_unknown_host_explains_passthrough(bookinfo_dir: Path) -> None:
    proc = meshctl("describe", "httpbin.org", "--config", bookinfo_dir)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "ALLOW_ANY" in proc.stdout
    assert "passed through" in proc.stdout


def test_describe_unknown_host_registry_only(write: Write, tmp_path: Path,
                                             bookinfo_dir: Path) -> None:
    write("mesh.yaml", "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
    write("services.yaml", (bookinfo_dir / "services.yaml").read_text())
    proc = meshctl("describe", "httpbin.org", "--config", tmp_path, "-o", "json")
    assert proc.returncode == 1
    info = json.loads(proc.stdout)
    assert "REGISTRY_ONLY" in info["unknownHost"]
    assert "502" in info["unknownHost"]


def test_describe_short_name_from_other_namespace(bookinfo_dir: Path) -> None:
    proc = meshctl("describe", "reviews", "-c", bookinfo_dir, "-n", "shop", "-o", "json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["fqdn"] == "reviews.shop.svc.cluster.local"
    proc = meshctl("describe", "reviews.default", "-c", bookinfo_dir, "-n", "shop")
    assert proc.returncode == 0
    assert "127.0.0.1:19082" in proc.stdout


def test_describe_invalid_config_fails_with_diagnostics(write: Write) -> None:
    path = write("t.yaml", BAD_WEIGHT)
    proc = meshctl("describe", "reviews", "--config", path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{path}:14:" in proc.stderr


def test_describe_missing_config_path(tmp_path: Path) -> None:
    proc = meshctl("describe", "reviews", "--config", tmp_path / "nope")
    assert proc.returncode == 1
    no_traceback(proc)
    assert "no such file or directory" in proc.stderr
