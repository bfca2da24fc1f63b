"""The YAML layer: data plus the source line of every key and list item."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from meshsdk.config.yamlsource import MAX_DEPTH, parse_documents

RESOURCE = textwrap.dedent("""\
    # a comment first, so lines are not just indexes
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata:
      name: reviews
    spec:
      hosts:
      - reviews
      - reviews.prod
      http:
      - route:
        - destination: {host: reviews, subset: v1}
          weight: 80
        - destination:
            host: reviews
          weight: 20
    """)


def test_lines_of_keys_and_list_items() -> None:
    docs, errors = parse_documents(RESOURCE, "t.yaml")
    assert errors == []
    [doc] = docs
    assert doc.line == 2
    assert doc.lines[("apiVersion",)] == 2
    assert doc.lines[("metadata", "name")] == 5
    assert doc.lines[("spec", "hosts")] == 7
    assert doc.lines[("spec", "hosts", 0)] == 8
    assert doc.lines[("spec", "hosts", 1)] == 9
    assert doc.lines[("spec", "http", 0)] == 11
    assert doc.lines[("spec", "http", 0, "route", 0)] == 12
    # keys of a flow mapping carry their own line too
    assert doc.lines[("spec", "http", 0, "route", 0, "destination", "subset")] == 12
    assert doc.lines[("spec", "http", 0, "route", 0, "weight")] == 13
    assert doc.lines[("spec", "http", 0, "route", 1, "destination", "host")] == 15
    assert doc.lines[("spec", "http", 0, "route", 1, "weight")] == 16
    assert doc.data["spec"]["http"][0]["route"][1]["weight"] == 20


def test_line_of_missing_path_falls_back_to_nearest_parent() -> None:
    [doc], _ = parse_documents(RESOURCE, "t.yaml")
    assert doc.line_of(("spec", "http", 0, "route", 1, "destination", "port")) == 14
    assert doc.line_of(("spec", "tcp", 0)) == 6
    assert doc.line_of(("nowhere",)) == doc.line == 2
    assert doc.line_of(()) == 2


def test_lines_in_later_documents_are_file_lines() -> None:
    text = "a: 1\n---\n# second\nb:\n  - x\n  - y\n---\nc: {d: 1}\n"
    docs, errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": ["x", "y"]}, {"c": {"d": 1}}]
    assert [d.line for d in docs] == [1, 4, 8]
    assert [d.index for d in docs] == [0, 1, 2]
    assert docs[1].lines[("b", 1)] == 6
    assert docs[2].lines[("c", "d")] == 8


def test_duplicate_key_is_an_error_with_its_line() -> None:
    text = "spec:\n  host: a\n  trafficPolicy:\n    tls: {}\n  host: b\n"
    docs, errors = parse_documents(text, "dup.yaml")
    assert docs == []
    [err] = errors
    assert err.is_error
    assert err.file == "dup.yaml"
    assert err.line == 5
    assert "duplicate key 'host'" in err.message
    assert "spec" in err.message


def test_duplicate_key_drops_only_its_document() -> None:
    text = "ok: 1\n---\nx: 1\nx: 2\n---\nalso: ok\n"
    docs, errors = parse_documents(text, "t.yaml")
    assert [d.data for d in docs] == [{"ok": 1}, {"also": "ok"}]
    assert [(e.line, "duplicate key 'x'" in e.message) for e in errors] == [(4, True)]


def test_syntax_error_has_a_line() -> None:
    text = "apiVersion: v1\nkind: X\nspec:\n  hosts: [a, b\n  other: 1\n"
    docs, errors = parse_documents(text, "bad.yaml")
    assert docs == []
    [err] = errors
    assert err.file == "bad.yaml"
    assert err.line == 5
    assert err.message.startswith("YAML syntax error")


def test_bad_indentation_points_at_the_line() -> None:
    docs, errors = parse_documents("a: 1\nb: 2\n  c: 3\n", "t.yaml")
    assert docs == []
    assert [e.line for e in errors] == [3]
    assert "YAML syntax error" in errors[0].message


def test_documents_before_a_syntax_error_are_kept() -> None:
    docs, errors = parse_documents("a: 1\n---\nb: [\n", "t.yaml")
    assert [d.data for d in docs] == [{"a": 1}]
    assert len(errors) == 1
    assert errors[0].line is not None and errors[0].line >= 3


def test_invalid_scalar_value_is_a_diagnostic() -> None:
    docs, errors = parse_documents("ok: 1\n---\nwhen: 2020-13-45\n", "t.yaml")
    assert [d.data for d in docs] == [{"ok": 1}]
    [err] = errors
    assert err.line == 3
    assert "invalid YAML value" in err.message


def test_non_scalar_key_is_an_error() -> None:
    docs, errors = parse_documents("? [a, b]\n: 1\n", "t.yaml")
    assert docs == []
    assert [e.message for e in errors] == ["mapping keys must be scalars"]


def test_merge_keys() -> None:
    text = textwrap.dedent("""\
        base: &base
          timeout: 5s
          retries: {attempts: 3}
        route:
          <<: *base
          name: r1
        """)
    [doc], errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert doc.data["route"] == {"timeout": "5s", "retries": {"attempts": 3}, "name": "r1"}
    assert doc.lines[("route", "name")] == 6


def test_merge_key_values_are_overridden_by_explicit_keys() -> None:
    # YAML's merge: keys written in the mapping win over merged ones; not a duplicate.
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    docs, errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert docs[0].data["derived"] == {"x": 1, "y": 3}
    assert docs[0].lines[("derived", "y")] == 4


def test_merge_of_several_mappings_first_wins() -> None:
    text = "a: &a {k: 1}\nb: &b {k: 2, j: 2}\nc:\n  <<: [*a, *b]\n"
    [doc], errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert doc.data["c"] == {"k": 1, "j": 2}


def test_aliases_are_expanded() -> None:
    text = "labels: &l {app: reviews}\nselector: *l\n"
    [doc], errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert doc.data["selector"] == {"app": "reviews"}


def test_deep_nesting_is_rejected() -> None:
    depth = MAX_DEPTH + 10
    docs, errors = parse_documents("[" * depth + "]" * depth, "deep.yaml")
    assert docs == []
    [err] = errors
    assert err.file == "deep.yaml"
    assert "nesting" in err.message


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = 20
    [doc], errors = parse_documents("a: " + "[" * depth + "1" + "]" * depth, "t.yaml")
    assert errors == []
    value = doc.data["a"]
    for _ in range(depth):
        value = value[0]
    assert value == 1


def test_very_deep_nesting_does_not_crash() -> None:
    depth = 100_000
    docs, errors = parse_documents("[" * depth + "]" * depth, "deep.yaml")
    assert docs == []
    assert len(errors) == 1


# A "billion laughs": 10 levels of 10 aliases each would expand to 10**9 strings.
ALIAS_BOMB = "\n".join(
    ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
) + "\n"


def test_alias_bomb_is_rejected_quickly() -> None:
    # Run in a child process so a regression fails the test instead of hanging the suite.
    code = (
        "import sys\n"
        "from meshsdk.config.yamlsource import parse_documents\n"
        "docs, errors = parse_documents(sys.stdin.read(), 'bomb.yaml')\n"
        "print(len(docs), len(errors))\n"
        "print(errors[0].format() if errors else '')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=ALIAS_BOMB, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    counts, message = proc.stdout.splitlines()[:2]
    assert counts == "0 1"
    assert message.startswith("bomb.yaml:")


def test_empty_documents_are_skipped() -> None:
    text = "---\n# only a comment\n---\n---\na: 1\n---\n...\n"
    docs, errors = parse_documents(text, "t.yaml")
    assert errors == []
    assert [d.data for d in docs] == [{"a": 1}]
    assert docs[0].line == 5


def test_empty_text_gives_nothing() -> None:
    assert parse_documents("", "t.yaml") == ([], [])
    assert parse_documents("# nothing here\n", "t.yaml") == ([], [])


def test_json_input_with_lines() -> None:
    text = (
        '{\n'
        '  "apiVersion": "networking.istio.io/v1",\n'
        '  "kind": "DestinationRule",\n'
        '  "metadata": {"name": "reviews"},\n'
        '  "spec": {\n'
        '    "host": "reviews",\n'
        '    "subsets": [\n'
        '      {"name": "v1", "labels": {"version": "v1"}}\n'
        '    ]\n'
        '  }\n'
        '}\n'
    )
    [doc], errors = parse_documents(text, "t.json")
    assert errors == []
    assert doc.data["spec"]["subsets"][0]["labels"] == {"version": "v1"}
    assert doc.lines[("kind",)] == 3
    assert doc.lines[("spec", "host")] == 6
    assert doc.lines[("spec", "subsets", 0)] == 8
    assert doc.lines[("spec", "subsets", 0, "name")] == 8


def test_json_duplicate_key_is_an_error() -> None:
    docs, errors = parse_documents('{"a": 1,\n "a": 2}\n', "t.json")
    assert docs == []
    assert [(e.line, "duplicate key 'a'" in e.message) for e in errors] == [(2, True)]


def test_scalars_keep_their_yaml_types() -> None:
    [doc], errors = parse_documents("a: 80\nb: '80'\nc: true\nd: 1.5\ne: null\nf: 0x10\n",
                                    "t.yaml")
    assert errors == []
    assert doc.data == {"a": 80, "b": "80", "c": True, "d": 1.5, "e": None, "f": 16}
