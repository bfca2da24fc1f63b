"""The version matrix and this integration's declared dependencies agree."""

from tests.integrations.webapp_harness import check_matrix_bounds


def test_the_matrix_oldest_is_the_declared_lower_bound() -> None:
    check_matrix_bounds("django")
