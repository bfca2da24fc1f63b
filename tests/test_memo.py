"""``meshsdk.memo.remember``: the bound every request-path cache shares."""

from __future__ import annotations

from meshsdk.memo import remember


def test_stores_and_returns_the_value() -> None:
    table: dict[str, int] = {}
    assert remember(table, "a", 1, limit=3) == 1
    assert table == {"a": 1}


def test_a_full_table_is_emptied_before_the_new_entry() -> None:
    table: dict[str, int] = {}
    for i, key in enumerate("abc"):
        remember(table, key, i, limit=3)
    assert table == {"a": 0, "b": 1, "c": 2}  # at the limit, nothing dropped yet
    remember(table, "d", 3, limit=3)
    assert table == {"d": 3}  # refills with what is in use


def test_a_known_key_in_a_full_table_also_empties_it() -> None:
    # callers remember only on a miss; a repeated key is no exception to the bound
    table = {"a": 0, "b": 1}
    remember(table, "a", 5, limit=2)
    assert table == {"a": 5}
