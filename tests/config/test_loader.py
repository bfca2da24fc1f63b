"""Loading Istio YAML: namespaces, directories, mesh config, skipped kinds, located errors."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from meshsdk.config import Diagnostic, LoadResult, load_config, load_path, load_string
from meshsdk.errors import ConfigError, MeshError

Write = Callable[..., Path]


def vs(name: str, host: str | None = None, namespace: str | None = None) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: {name}""") + ns + textwrap.dedent(f"""
        spec:
          hosts: [{host or name}]
          http:
          - route:
            - destination: {{host: {host or name}}}
        """)


def dr(name: str, host: str | None = None, namespace: str | None = None) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: {name}""") + ns + textwrap.dedent(f"""
        spec:
          host: {host or name}
        """)


def only_error(result: LoadResult) -> Diagnostic:
    assert len(result.errors) == 1, [d.format() for d in result.diagnostics]
    return result.errors[0]


def formatted(result: LoadResult) -> list[str]:
    return [d.format() for d in result.diagnostics]


# --- namespaces ----------------------------------------------------------------------


def test_documents_without_namespace_take_the_loading_namespace() -> None:
    text = vs("reviews") + "---\n" + vs("ratings", namespace="staging")
    result = load_string(text, namespace="prod")
    assert result.errors == []
    assert [(r.name, r.namespace) for r in result.resources] == [
        ("reviews", "prod"), ("ratings", "staging")]


def test_default_loading_namespace_is_default() -> None:
    [r] = load_string(dr("reviews")).resources
    assert r.namespace == "default"
    assert r.key == ("DestinationRule", "default", "reviews")


def test_load_path_namespace(write: Write) -> None:
    path = write("x.yaml", dr("a") + "---\n" + dr("b", namespace="other"))
    result = load_path(path, namespace="team")
    assert [(r.name, r.namespace) for r in result.resources] == [("a", "team"), ("b", "other")]
    assert all(r.file == str(path) for r in result.resources)


def test_errors_name_the_defaulted_namespace() -> None:
    text = vs("reviews").replace("hosts: [reviews]", "hosts: [reviews]\n  bogus: 1")
    err = only_error(load_string(text, source="t.yaml", namespace="prod"))
    assert err.namespace == "prod"
    assert err.format().startswith("t.yaml:7: VirtualService prod/reviews: spec.bogus: ")


# --- directories ---------------------------------------------------------------------


def test_directory_recursion_suffixes_and_sorted_order(write: Write, tmp_path: Path) -> None:
    write("z.yaml", dr("z"))
    write("a.yml", dr("a"))
    write("m/b.json", '{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",\n'
                      ' "metadata": {"name": "b"}, "spec": {"host": "b"}}\n')
    write("m/deeper/c.yaml", dr("c"))
    write("notes.txt", "this: is [not loaded\n")
    write("README.md", "# not config\n")
    write("m/d.yaml.bak", dr("ignored"))
    result = load_path(tmp_path)
    assert result.diagnostics == []
    assert [r.name for r in result.resources] == ["a", "b", "c", "z"]
    assert [r.order for r in result.resources] == [0, 1, 2, 3]
    assert result.resources[1].file == str(tmp_path / "m" / "b.json")
    assert result.resources[1].line == 1


def test_empty_directory_loads_nothing(tmp_path: Path) -> None:
    result = load_path(tmp_path)
    assert result.resources == []
    assert result.diagnostics == []
    assert result.mesh is None


def test_nonexistent_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    err = only_error(load_path(missing))
    assert err.file == str(missing)
    assert "no such file or directory" in err.message


def test_non_utf8_file_is_an_error(write: Write) -> None:
    path = write("bin.yaml", b"kind: \xff\xfe\x00garbage\n")
    result = load_path(path)
    err = only_error(result)
    assert err.file == str(path)
    assert "UTF-8" in err.message
    assert result.resources == []


# --- mesh config ---------------------------------------------------------------------


def test_mesh_yaml_beside_resources(write: Write, tmp_path: Path) -> None:
    write("mesh.yaml", "rootNamespace: mesh-root\noutboundTrafficPolicy:\n"
                       "  mode: REGISTRY_ONLY\n")
    write("rules.yaml", dr("reviews"))
    result = load_path(tmp_path)
    assert result.diagnostics == []
    assert result.mesh is not None
    assert result.mesh.root_namespace == "mesh-root"
    assert result.mesh.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert result.mesh_source == str(tmp_path / "mesh.yaml")
    assert [r.name for r in result.resources] == ["reviews"]
    config = load_config(tmp_path)
    assert config.mesh.root_namespace == "mesh-root"


def test_mesh_yaml_errors_have_lines(write: Write, tmp_path: Path) -> None:
    write("mesh.yaml", "# mesh\nrootNamespace: istio-system\noutboundTrafficPolicy:\n"
                       "  mode: SOMETIMES\n")
    result = load_path(tmp_path)
    err = only_error(result)
    assert err.file == str(tmp_path / "mesh.yaml")
    assert err.line == 4
    assert err.path == ("outboundTrafficPolicy", "mode")
    assert "SOMETIMES" in err.message
    assert result.mesh is None


ISTIO_CONFIGMAP = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: reviews
    spec:
      host: reviews
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: istio
      namespace: istio-system
    data:
      mesh: |-
        rootNamespace: istio-config
        outboundTrafficPolicy:
          mode: {mode}
        enableAutoMtls: true
    """)


def test_istio_configmap_gives_the_mesh_config(write: Write) -> None:
    path = write("all.yaml", ISTIO_CONFIGMAP.replace("{mode}", "REGISTRY_ONLY"))
    result = load_path(path)
    assert result.diagnostics == []
    assert result.mesh is not None
    assert result.mesh.root_namespace == "istio-config"
    assert result.mesh.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert result.mesh_source == str(path)
    assert [r.kind for r in result.resources] == ["DestinationRule"]


def test_istio_configmap_errors_point_into_the_block(write: Write) -> None:
    path = write("all.yaml", ISTIO_CONFIGMAP.replace("{mode}", "SOMETIMES"))
    lines = path.read_text().splitlines()
    expected = lines.index("      mode: SOMETIMES") + 1
    result = load_path(path)
    err = only_error(result)
    assert err.file == str(path)
    assert err.line == expected == 17
    assert err.path == ("outboundTrafficPolicy", "mode")
    assert result.mesh is None


def test_other_configmaps_are_skipped_with_a_warning() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-settings\ndata:\n  a: b\n"
    result = load_string(text, source="cm.yaml")
    assert result.errors == []
    assert result.mesh is None
    assert len(result.warnings) == 1
    assert "ConfigMap" in result.warnings[0].message


def test_two_mesh_configs_are_an_error(write: Write, tmp_path: Path) -> None:
    write("mesh.yaml", "rootNamespace: one\n")
    write("cm.yaml", ISTIO_CONFIGMAP.replace("{mode}", "ALLOW_ANY"))
    result = load_path(tmp_path)
    assert len(result.errors) == 1
    assert "second mesh config" in result.errors[0].message


# --- skipped kinds ---------------------------------------------------------------------

UNSUPPORTED = {
    "EnvoyFilter": "networking.istio.io/v1alpha3",
    "WasmPlugin": "extensions.istio.io/v1alpha1",
    "ProxyConfig": "networking.istio.io/v1beta1",
    "TrafficExtension": "extensions.istio.io/v1alpha1",
}


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_unsupported_istio_kind_warns_once(write: Write, kind: str) -> None:
    text = (f"apiVersion: {UNSUPPORTED[kind]}\nkind: {kind}\nmetadata:\n  name: x\n"
            "spec:\n  anything: [goes, here]\n---\n" + dr("reviews"))
    path = write("mixed.yaml", text)
    result = load_path(path)
    assert result.errors == []
    [warning] = result.warnings
    assert warning.severity == "warning"
    assert kind in warning.message
    assert warning.kind == kind
    assert warning.file == str(path)
    assert warning.line == 1
    assert str(path) in warning.format()
    assert [r.kind for r in result.resources] == ["DestinationRule"]


def test_each_unsupported_document_warns(write: Write) -> None:
    doc = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata:\n  name: {n}\n"
    path = write("ef.yaml", "---\n".join(doc.format(n=n) for n in ("a", "b", "c")))
    result = load_path(path)
    assert [(w.kind, w.name, w.line) for w in result.warnings] == [
        ("EnvoyFilter", "a", 1), ("EnvoyFilter", "b", 6), ("EnvoyFilter", "c", 11)]
    assert result.errors == []


@pytest.mark.parametrize(("api_version", "kind"), [
    ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "Namespace"),
])
def test_plain_kubernetes_objects_warn_and_are_skipped(api_version: str, kind: str) -> None:
    text = f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: reviews\nspec: {{}}\n"
    result = load_string(text + "---\n" + dr("reviews"), source="k8s.yaml")
    assert result.errors == []
    [warning] = result.warnings
    assert kind in warning.message
    assert warning.file == "k8s.yaml"
    assert [r.kind for r in result.resources] == ["DestinationRule"]


# --- invalid documents -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_document_that_is_not_a_mapping(text: str) -> None:
    err = only_error(load_string("# lead\n" + text, source="t.yaml"))
    assert err.file == "t.yaml"
    assert err.line == 2
    assert "mapping" in err.message


def test_missing_kind() -> None:
    text = "apiVersion: networking.istio.io/v1\nmetadata:\n  name: a\nspec: {}\n"
    err = only_error(load_string(text, source="t.yaml"))
    assert err.path == ("kind",)
    assert err.line == 1
    assert err.format() == "t.yaml:1: kind: kind is missing"


def test_missing_api_version() -> None:
    text = "# x\nkind: VirtualService\nmetadata:\n  name: a\nspec: {}\n"
    err = only_error(load_string(text, source="t.yaml"))
    assert err.path == ("apiVersion",)
    assert err.line == 2
    assert "apiVersion" in err.message


def test_kind_must_be_a_string() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: [VirtualService]\n"
    err = only_error(load_string(text, source="t.yaml"))
    assert err.path == ("kind",)
    assert err.line == 2


def test_wrong_api_version_for_known_kind() -> None:
    text = vs("reviews").replace("networking.istio.io/v1", "networking.istio.io/v2")
    result = load_string("# lead\n" + text, source="t.yaml")
    err = only_error(result)
    assert err.line == 2
    assert err.path == ("apiVersion",)
    assert err.kind == "VirtualService"
    assert "networking.istio.io/v2" in err.message
    assert "networking.istio.io/v1" in err.message.split("use one of", 1)[1]
    assert result.resources == []


def test_wrong_api_group_for_known_kind() -> None:
    text = dr("reviews").replace("networking.istio.io/v1", "security.istio.io/v1")
    result = load_string(text, source="t.yaml")
    assert result.resources == []
    assert len(result.errors) == 1


def test_old_api_versions_are_accepted() -> None:
    for version in ("v1alpha3", "v1beta1", "v1"):
        text = vs("reviews").replace("networking.istio.io/v1", f"networking.istio.io/{version}")
        result = load_string(text)
        assert result.diagnostics == [], version
        assert result.resources[0].api_version == f"networking.istio.io/{version}"


def test_unknown_top_level_field() -> None:
    text = dr("reviews") + "specs:\n  host: x\n"
    result = load_string(text, source="t.yaml")
    err = only_error(result)
    assert err.path == ("specs",)
    assert err.line == 7
    assert "specs" in err.message
    assert result.resources == []


@pytest.mark.parametrize("name", ["Reviews", "reviews_v1", "-reviews", "a" * 254, "12 3"])
def test_bad_metadata_name(name: str) -> None:
    text = dr("placeholder").replace("name: placeholder", f"name: '{name}'")
    result = load_string("# lead\n" + text, source="t.yaml")
    err = only_error(result)
    assert err.path == ("metadata", "name")
    assert err.line == 5
    assert err.format().startswith(f"t.yaml:5: DestinationRule default/{name}: metadata.name: ")
    assert result.resources == []


def test_missing_metadata_and_name() -> None:
    no_meta = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec: {host: a}\n"
    err = only_error(load_string(no_meta, source="t.yaml"))
    assert err.path == ("metadata",)
    no_name = no_meta + "metadata:\n  namespace: prod\n"
    result = load_string(no_name, source="t.yaml")
    err = only_error(result)
    assert err.path == ("metadata", "name")
    assert err.line == 4
    assert result.resources == []


def test_bad_metadata_namespace_and_labels() -> None:
    text = dr("a").replace("name: a", "name: a\n  namespace: Bad_NS\n  labels: {app: 1}")
    result = load_string(text, source="t.yaml")
    paths = sorted(d.path for d in result.errors)
    assert paths == [("metadata", "labels", "app"), ("metadata", "namespace")]
    assert result.resources == []


def test_spec_must_be_a_mapping() -> None:
    text = dr("a").replace("spec:\n  host: a\n", "spec: [host, a]\n")
    err = only_error(load_string(text, source="t.yaml"))
    assert err.path == ("spec",)
    assert err.line == 5


def only_warning(result: LoadResult, code: str) -> Diagnostic:
    found = [d for d in result.warnings if d.code == code]
    assert len(found) == 1, [d.format() for d in result.diagnostics]
    return found[0]


# Duplicates: as `kubectl apply` of the files in order would leave them, the later
# document replaces the earlier one, with a warning (MESH0003) naming the first place.


def test_duplicate_resource_in_one_file() -> None:
    text = dr("reviews") + "---\n" + dr("reviews").replace("host: reviews", "host: ratings")
    result = load_string(text, source="t.yaml")
    assert result.errors == []
    w = only_warning(result, "MESH0003")
    assert w.line == 11
    assert "t.yaml:1" in w.message
    assert w.format().startswith("t.yaml:11: DestinationRule default/reviews: metadata.name: "
                                 "warning MESH0003: ")
    [kept] = result.resources
    assert (kept.line, kept.spec.host) == (8, "ratings")


def test_duplicate_resource_across_files_names_the_first(write: Write,
                                                         tmp_path: Path) -> None:
    first = write("a.yaml", "# first\n" + dr("reviews"))
    second = write("b/c.yaml", dr("reviews"))
    result = load_path(tmp_path)
    w = only_warning(result, "MESH0003")
    assert w.file == str(second)
    assert f"{first}:2" in w.message
    assert [r.file for r in result.resources] == [str(second)]


def test_same_name_in_other_namespace_or_kind_is_no_duplicate() -> None:
    text = "---\n".join([dr("reviews"), dr("reviews", namespace="other"), vs("reviews")])
    result = load_string(text)
    assert result.diagnostics == []
    assert len(result.resources) == 3


def test_duplicate_through_explicit_and_defaulted_namespace() -> None:
    text = dr("reviews") + "---\n" + dr("reviews", namespace="default")
    result = load_string(text)
    only_warning(result, "MESH0003")
    assert len(result.resources) == 1


def test_list_items_are_loaded() -> None:
    text = textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: reviews}
          spec: {host: reviews}
        - apiVersion: networking.istio.io/v1
          kind: VirtualService
          metadata: {name: reviews, namespace: prod}
          spec:
            hosts: [reviews]
            http:
            - route:
              - destination: {host: reviews}
                wieght: 10
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: ratings}
          spec: {host: ratings}
        """)
    result = load_string(text, source="list.yaml")
    assert [(r.kind, r.name, r.line) for r in result.resources] == [
        ("DestinationRule", "reviews", 4), ("DestinationRule", "ratings", 17)]
    err = only_error(result)
    assert err.line == 16
    assert err.namespace == "prod"
    assert err.path == ("spec", "http", 0, "route", 0, "wieght")


def test_invalid_documents_are_dropped_valid_ones_kept() -> None:
    bad = vs("bad").replace("hosts: [bad]", "hosts: [bad]\n  gatways: [mesh]")
    text = "---\n".join([dr("one"), bad, "- not a mapping\n", dr("two")])
    result = load_string(text, source="t.yaml")
    assert [r.name for r in result.resources] == ["one", "two"]
    assert len(result.errors) == 2
    assert [r.order for r in result.resources] == [0, 1]


def test_yaml_syntax_error_keeps_earlier_documents() -> None:
    text = dr("one") + "---\n" + "apiVersion: [\n"
    result = load_string(text, source="t.yaml")
    assert [r.name for r in result.resources] == ["one"]
    err = only_error(result)
    assert err.file == "t.yaml"
    assert err.line is not None and err.line >= 8


def test_resource_records_where_it_came_from() -> None:
    text = "# header\n" + vs("reviews") + "---\n" + dr("reviews")
    result = load_string(text, source="r.yaml")
    vsr, drr = result.resources
    assert (vsr.file, vsr.line, drr.line) == ("r.yaml", 2, 12)
    assert vsr.line_of(("spec", "http", 0, "route", 0, "destination", "host")) == 10
    assert drr.line_of(("spec", "host")) == 17


def test_metadata_labels_annotations_and_timestamp() -> None:
    text = dr("a").replace(
        "name: a",
        "name: a\n  labels: {app: x}\n  annotations: {note: hi}\n"
        "  creationTimestamp: '2024-01-01T00:00:00Z'")
    [r] = load_string(text).resources
    assert dict(r.labels) == {"app": "x"}
    assert dict(r.annotations) == {"note": "hi"}
    assert r.creation_timestamp is not None and r.creation_timestamp.startswith("2024-01-01")


# --- load_config and messages ----------------------------------------------------------------


def test_load_config_raises_one_config_error_with_all_diagnostics(write: Write,
                                                                  tmp_path: Path) -> None:
    write("a.yaml", dr("ok") + "---\n" + dr("bad").replace("host: bad", "hots: bad"))
    write("b.yaml", "a: [\n")
    write("c.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
                    "metadata: {name: ef}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    exc = info.value
    assert isinstance(exc, MeshError)
    errors = [d for d in exc.diagnostics if d.is_error]
    assert {d.file for d in errors} == {str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")}
    assert any(d.path == ("spec", "hots") for d in errors)
    assert any(not d.is_error and d.kind == "EnvoyFilter" for d in exc.diagnostics)
    message = str(exc)
    assert "error" in message.splitlines()[0]
    for d in errors:
        assert d.format() in message


def test_load_config_success_keeps_warnings(write: Write, tmp_path: Path) -> None:
    write("a.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
                    "metadata: {name: ef}\n")
    config = load_config(tmp_path)
    assert config.resources == ()
    assert [w.kind for w in config.warnings] == ["EnvoyFilter"]


def test_load_config_merges_several_sources(write: Write, tmp_path: Path) -> None:
    a = write("a/x.yaml", dr("one"))
    b = write("b/x.yaml", dr("two"))
    config = load_config(a, b, namespace="prod")
    assert [(r.name, r.namespace, r.order) for r in config.resources] == [
        ("one", "prod", 0), ("two", "prod", 1)]
    twice = load_config(a, a)
    assert [r.name for r in twice.resources] == ["one"]
    assert [w.code for w in twice.warnings if w.code == "MESH0003"] == ["MESH0003"]


WEIGHT_ERROR = textwrap.dedent("""\
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


def test_exact_error_message_format() -> None:
    result = load_string(WEIGHT_ERROR, source="t.yaml")
    expected = ("t.yaml:14: VirtualService default/reviews: spec.http[0].route[1].weight: "
                "must be >= 0, got -5")
    assert expected in formatted(result)
    assert result.resources == []


def test_exact_error_message_in_config_error(write: Write) -> None:
    path = write("t.yaml", WEIGHT_ERROR)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (f"{path}:14: VirtualService default/reviews: spec.http[0].route[1].weight: "
            "must be >= 0, got -5") in str(info.value)


def test_did_you_mean_on_misspelled_field() -> None:
    text = WEIGHT_ERROR.replace("weight: 105", "wieght: 100").replace("weight: -5", "weight: 0")
    result = load_string(text, source="t.yaml")
    err = next(d for d in result.errors if d.path[-1] == "wieght")
    assert err.line == 12
    assert err.path == ("spec", "http", 0, "route", 0, "wieght")
    assert "did you mean 'weight'" in err.message
    assert err.format().startswith(
        "t.yaml:12: VirtualService default/reviews: spec.http[0].route[0].wieght: ")


def test_did_you_mean_at_the_top_of_spec() -> None:
    text = dr("reviews").replace("host: reviews", "host: reviews\n  trafficPolicey: {}")
    err = only_error(load_string(text, source="t.yaml"))
    assert err.path == ("spec", "trafficPolicey")
    assert "did you mean 'trafficPolicy'" in err.message


def test_unknown_field_without_close_match_has_no_suggestion() -> None:
    text = dr("reviews").replace("host: reviews", "host: reviews\n  zzzzqqq: 1")
    err = only_error(load_string(text, source="t.yaml"))
    assert "unknown field 'zzzzqqq'" in err.message
    assert "did you mean" not in err.message


def test_diagnostic_to_dict_for_json_output() -> None:
    result = load_string(WEIGHT_ERROR, source="t.yaml")
    d = next(d for d in result.errors if d.line == 14).to_dict()
    assert d["file"] == "t.yaml"
    assert d["path"] == "spec.http[0].route[1].weight"
    assert d["kind"] == "VirtualService"
    assert d["namespace"] == "default"
    assert d["name"] == "reviews"
    assert d["severity"] == "error"
