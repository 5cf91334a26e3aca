"""Dataset loading (SQuAD JSON and JSONL) and the seeded split by group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.qa import QARecord, squad_records
from ragtune.eval.datasets import load_items, subset_squad, write_jsonl
from ragtune.eval.split import SplitSpec, sample_items, select_split, split_groups, split_items


def _squad(n_articles: int = 6) -> dict:
    data = []
    for a in range(n_articles):
        paras = []
        for p in range(3):
            paras.append(
                {
                    "context": f"Article {a} paragraph {p} says the answer is ans{a}{p}.",
                    "qas": [
                        {
                            "id": f"q{a}-{p}",
                            "question": f"What does article {a} paragraph {p} say?",
                            "answers": [
                                {"answer_start": 0, "text": f"ans{a}{p}"},
                                {"answer_start": 0, "text": f"ans{a}{p}"},
                            ],
                        }
                    ],
                }
            )
        data.append({"title": f"Art_{a}", "paragraphs": paras})
    return {"version": "1.1", "canary": "CANARY", "data": data}


def squad_items(raw: dict) -> list[QARecord]:
    return squad_records(raw, "s.json").records


def _jsonl_fields(items: list[QARecord]) -> list[tuple]:
    return [(i.id, i.question, i.answers, i.gold_doc_ids, i.group, i.context) for i in items]


def test_squad_items_gold_ids_and_dedup(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_squad(2)))
    items = load_items(path)
    assert len(items) == 6
    it = items[4]
    assert it.gold_doc_ids == ("Art_1#p1",)
    assert it.answers == ("ans11",)  # duplicates collapsed
    assert it.group == "Art_1"
    assert "paragraph 1" in (it.context or "")


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    items = squad_items(_squad(2))
    path = tmp_path / "d.jsonl"
    write_jsonl(path, items)
    assert _jsonl_fields(load_items(path)) == _jsonl_fields(items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answer": "a"}\n{"question": "", "answers": ["x"]}\n')
    with pytest.raises(DataError, match="line 2"):
        load_items(bad)
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "q?", "answer": "a", "gold_doc_id": "d1"}\n')
    (it,) = load_items(one)
    assert it.answers == ("a",) and it.gold_doc_ids == ("d1",) and it.split_group == "line1"


def test_split_is_seeded_disjoint_and_whole_groups() -> None:
    items = squad_items(_squad(8))
    spec = SplitSpec(test_fraction=0.25, seed=7)
    train, test = split_items(items, spec)
    assert {i.group for i in train}.isdisjoint({i.group for i in test})
    assert len({i.group for i in test}) == 2
    assert split_items(items, spec) == (train, test)  # same every time
    assert select_split(items, "test", spec) == test
    assert select_split(items, "all", spec) == items


def test_split_explicit_groups_and_errors() -> None:
    groups = ["a", "b", "c"]
    assert split_groups(groups, SplitSpec(test_groups=("b",))) == (["a", "c"], ["b"])
    with pytest.raises(InvalidInput):
        split_groups(groups, SplitSpec(test_groups=("zzz",)))
    with pytest.raises(InvalidInput):
        split_groups(["only"], SplitSpec())
    with pytest.raises(InvalidInput):
        SplitSpec(test_fraction=1.5)


def test_sample_is_prefix_stable() -> None:
    items = squad_items(_squad(10))
    small = sample_items(items, 5, seed=1)
    large = sample_items(items, 12, seed=1)
    assert len(small) == 5 and set(small) <= set(large)
    assert sample_items(items, None, 1) == items


def test_subset_keeps_canary_and_indices() -> None:
    raw = _squad(3)
    sub = subset_squad(raw, ["Art_2"])
    assert sub["canary"] == "CANARY" and len(sub["data"]) == 1
    assert squad_items(sub)[2].gold_doc_ids == ("Art_2#p2",)


def test_squad_without_answer_is_skipped_other_bad_questions_are_errors(tmp_path: Path) -> None:
    raw = _squad(2)
    raw["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []  # nothing to score: skipped
    path = tmp_path / "s.json"
    path.write_text(json.dumps(raw))
    assert [it.id for it in load_items(path)][:2] == ["q0-1", "q0-2"]
    raw["data"][1]["paragraphs"][2]["qas"][0]["question"] = "  "
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"s\.json:Art_1#p2:q1-2: empty question"):
        load_items(path)
