"""docs/integrations/flask.md shows the example the end-to-end tests run, verbatim."""

from tests.integrations.webapp_harness import ROOT, check_doc_shows


def test_the_page_shows_the_tested_example_files() -> None:
    check_doc_shows(ROOT / "docs" / "integrations" / "flask.md", ROOT / "examples" / "flask")
