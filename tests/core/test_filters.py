"""The filter language: syntax errors name the problem; masks over metadata columns agree
with the same test on each chunk's metadata; dates, numbers, text, bools, missing values."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ragtune.core.errors import InvalidInput
from ragtune.core.fields import FieldColumns, parse_date, text_hash
from ragtune.core.filters import MetadataFilter, parse_filter, parse_filter_text
from ragtune.indexer.fields_build import encode_documents

META = [
    {"source": "a.pdf", "file_type": "pdf", "year": 2019, "modified": "2025-03-01T10:00:00Z"},
    {"source": "b.md", "file_type": "md", "year": 2021, "modified": "2026-01-15", "draft": True},
    {"source": "c.md", "file_type": "md", "year": 2021.0, "title": "Nile", "tags": ["x", "y"]},
    {"source": "d.txt", "file_type": "txt", "year": "unknown", "modified": "2026-02-01"},
    {"source": "e.txt", "file_type": "txt", "draft": False, "score": 0.5},
]


def columns(tmp_path: Path, metas: list[dict] = META, chunks: list[int] | None = None):
    cols = encode_documents(metas, chunks or [1] * len(metas), [])
    cols, infos = cols.compact()
    cols.save(tmp_path)
    return FieldColumns(tmp_path, list(infos), cols.rows), infos


def rows(flt: dict, tmp_path: Path) -> list[int]:
    cols, _ = columns(tmp_path)
    mask = parse_filter(flt).mask(cols, "kb")  # type: ignore[union-attr]
    expected = [i for i, m in enumerate(META) if parse_filter(flt).matches(m)]  # type: ignore[union-attr]
    assert np.flatnonzero(mask).tolist() == expected  # columns and metadata agree
    return expected


def test_equality_in_and_ranges(tmp_path: Path) -> None:
    assert rows({"file_type": "md"}, tmp_path) == [1, 2]
    assert rows({"file_type": {"eq": "md"}, "year": 2021}, tmp_path) == [1, 2]  # 2021 == 2021.0
    assert rows({"file_type": {"in": ["pdf", "txt"]}}, tmp_path) == [0, 3, 4]
    assert rows({"year": {"gte": 2020}}, tmp_path) == [1, 2]  # "unknown" is text: no match
    assert rows({"year": {"gt": 2019, "lt": 2021}}, tmp_path) == []
    assert rows({"modified": {"gte": "2026-01-01"}}, tmp_path) == [1, 3]
    assert rows({"modified": {"lt": "2025-03-01T11:00:00+00:00"}}, tmp_path) == [0]
    assert rows({"modified": "2026-01-15"}, tmp_path) == [1]  # a date compares as its text too
    assert rows({"draft": True}, tmp_path) == [1]
    assert rows({"draft": {"in": [True, False]}}, tmp_path) == [1, 4]
    assert rows({"score": {"lte": 0.5}}, tmp_path) == [4]
    assert rows({"year": {"in": [2019, "unknown"]}}, tmp_path) == [0, 3]
    assert rows({"title": "nile"}, tmp_path) == []  # strings compare exactly


def test_kinds_and_unfilterable_values(tmp_path: Path) -> None:
    _, infos = columns(tmp_path)
    kinds = {k: (v.kind, v.chunks) for k, v in infos.items()}
    assert kinds["year"] == ("mixed", 4) and kinds["modified"] == ("date", 3)
    assert kinds["draft"] == ("bool", 2) and kinds["file_type"] == ("text", 5)
    assert "tags" not in kinds  # lists and objects are kept in metadata, not filterable


def test_a_document_s_metadata_covers_its_chunks(tmp_path: Path) -> None:
    cols, _ = columns(tmp_path, META[:2], [3, 2])
    mask = parse_filter({"file_type": "md"}).mask(cols, "kb")  # type: ignore[union-attr]
    assert mask.tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ([1], "a filter is a JSON object of field: condition"),
        ({"x": None}, "field 'x': null is not a value"),
        ({"x": [1, 2]}, "a list needs the 'in' operator"),
        ({"x": {"between": [1, 2]}}, "unknown operator 'between' (use eq, in, gt, gte, lt, lte)"),
        ({"x": {"in": []}}, "'in' takes a non-empty list"),
        ({"x": {"in": "a"}}, "'in' takes a non-empty list"),
        ({"x": {"in": [{"a": 1}]}}, "in takes a string, a number or true/false, not an object"),
        ({"x": {"gte": "yesterday"}}, 'gte needs a number or an ISO 8601 date (e.g. "2026-01-31")'),
        ({"x": {"gte": True}}, "gte needs a number or an ISO 8601 date"),
        ({"x": {"gte": 1, "lt": "2026-01-01"}}, "a range compares either numbers or dates"),
        ({"x": {}}, "an empty condition"),
        ({"": 1}, "field names are 1-128 characters"),
        ({f"f{i}": 1 for i in range(33)}, "at most 32 fields"),
        ({"x": float("nan")}, "is not a usable number"),
    ],
)
def test_syntax_errors_name_the_problem(flt: object, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_filter(flt)
    assert e.value.field == "filter" and e.value.message.startswith("filter: ")
    assert message in e.value.message


def test_text_form_and_canonical_key() -> None:
    with pytest.raises(InvalidInput, match=r"not valid JSON .* quote it"):
        parse_filter_text("{file_type: pdf}")
    a = parse_filter_text('{"b": 1, "a": {"in": ["x"], "gte": "2020-01-01"}}')
    b = parse_filter({"a": {"gte": "2020-01-01", "in": ["x"]}, "b": {"eq": 1}})
    assert isinstance(a, MetadataFilter) and a.key() == b.key()  # type: ignore[union-attr]
    assert parse_filter({}) is None and parse_filter(None) is None


def test_fields_the_index_lacks_or_cannot_compare(tmp_path: Path) -> None:
    cols, _ = columns(tmp_path)
    with pytest.raises(InvalidInput, match=r"field 'yaer' is not a metadata field of index 'kb' "):
        parse_filter({"yaer": 2020}).mask(cols, "kb")  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match=r"field 'file_type': gte compares numbers, but no "):
        parse_filter({"file_type": {"gte": 3}}).mask(cols, "kb")  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match=r"field 'year': lt compares dates"):
        parse_filter({"year": {"lt": "2020-01-01"}}).mask(cols, "kb")  # type: ignore[union-attr]


def test_dates_and_hashes() -> None:
    assert parse_date("2026-01-01") == parse_date("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_date("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_date("2026-13-01") is None and parse_date("01/02/2026") is None
    assert parse_date("2026") is None  # a bare number is not a date
    assert text_hash("pdf") == text_hash("pdf") != text_hash("pdf ") and text_hash("") != 0


def test_random_filters_agree_with_the_metadata(tmp_path: Path) -> None:
    rng = random.Random(0)
    metas = []
    for _ in range(300):
        m = {"n": rng.choice([1, 2, 3.5, "3", None]), "t": rng.choice(["a", "b", "c", True])}
        m["d"] = rng.choice(["2026-01-0" + str(rng.randint(1, 9)), "soon", 7])
        metas.append({k: v for k, v in m.items() if v is not None})
    cols, _ = columns(tmp_path, metas)
    for _ in range(200):
        flt = rng.choice(
            [
                {"n": rng.choice([1, 2, 3.5, "3"])},
                {"n": {"gte": rng.choice([1, 2, 3])}},
                {"t": {"in": rng.sample(["a", "b", "c", True], 2)}},
                {"d": {"lt": "2026-01-05"}, "t": rng.choice(["a", "b"])},
            ]
        )
        f = parse_filter(flt)
        assert f is not None
        got = np.flatnonzero(f.mask(cols, "kb")).tolist()
        assert got == [i for i, m in enumerate(metas) if f.matches(m)], flt
