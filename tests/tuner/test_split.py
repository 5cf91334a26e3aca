"""Dedup, length filter and the seeded group split."""

from __future__ import annotations

import pytest

from ragtune.core.errors import DataError
from ragtune.core.qa import QARecord
from ragtune.tuner.formats import example
from ragtune.tuner.split import dedup, length_filter, split


def _ex(i: int, group: str | None = None, q: str | None = None) -> QARecord:
    return example(
        q or f"question {i}", f"answer {i}", f"f:{i}", group=group, meta={"topic": f"t{i % 3}"}
    )


def test_dedup_ignores_case_and_spacing() -> None:
    exs = [_ex(1), _ex(2), example("QUESTION  1", "Answer 1", "f:9"), _ex(3)]
    kept, removed = dedup(exs)
    assert removed == 1 and [e.source for e in kept] == ["f:1", "f:2", "f:3"]


def test_length_filter_counts() -> None:
    kept, dropped = length_filter(["a", "bbb", "cc", "dddd"], len, 2)
    assert kept == ["a", "cc"] and dropped == 2


def test_group_split_is_seeded_and_keeps_groups_whole() -> None:
    exs = [_ex(i, group=f"g{i // 4}") for i in range(40)]
    tr, va = split(exs, 0.25, seed=1)
    assert len(va) >= 10 and len(tr) + len(va) == 40
    assert not {e.group for e in tr} & {e.group for e in va}
    assert split(exs, 0.25, seed=1) == (tr, va)
    assert split(exs, 0.25, seed=2) != (tr, va)


def test_split_by_record_field() -> None:
    exs = [_ex(i) for i in range(30)]
    tr, va = split(exs, 0.3, seed=0, group_by="topic")
    assert len({e.meta["topic"] for e in va}) == 1
    assert not {e.meta["topic"] for e in tr} & {e.meta["topic"] for e in va}


def test_no_validation() -> None:
    exs = [_ex(i) for i in range(3)]
    assert split(exs, 0.0, seed=0) == (exs, [])


def test_validation_larger_than_data_is_an_error() -> None:
    with pytest.raises(DataError, match="validation split larger than the data"):
        split([_ex(1)], 0.5, seed=0)
    with pytest.raises(DataError, match="validation split larger than the data"):
        split([_ex(i, group="one") for i in range(10)], 0.2, seed=0)
    with pytest.raises(DataError, match="validation split larger than the data"):
        split([_ex(i) for i in range(4)], 0.9, seed=0)
