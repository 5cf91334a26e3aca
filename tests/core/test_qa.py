"""The QA record type and the one SQuAD reader (core.qa)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import DataError
from ragtune.core.qa import (
    NO_ANSWER,
    QARecord,
    read_squad,
    squad_doc_id,
    squad_paragraphs,
    squad_records,
    squad_titles,
)


def _qa(qid: str, question: str, *answers: str, start: int | None = None) -> dict:
    answer_objs = [
        {"text": a} if start is None else {"text": a, "answer_start": start} for a in answers
    ]
    return {"id": qid, "question": question, "answers": answer_objs}


SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "Rivers",
            "paragraphs": [
                {
                    "context": "Rivers flow. The Nile is in Africa. It is long.",
                    "qas": [
                        _qa("r1", "  Where is the Nile? ", "", " Africa ", "Africa", "in Africa"),
                        _qa("r2", "", "x"),
                        _qa("r3", "What flows?", "  "),
                    ],
                },
                "not a paragraph",
            ],
        },
        {  # no title: article<position>
            "paragraphs": [
                {"context": "", "qas": [{"question": "Closed book?", "answers": [{"text": "yes"}]}]}
            ]
        },
        {"title": "Broken"},  # no paragraphs
    ],
}


def test_doc_ids_and_titles_for_articles_without_title() -> None:
    assert squad_doc_id("Super_Bowl_50", 1) == "Super_Bowl_50#p1"
    assert squad_titles(SQUAD) == ["Rivers", "article1", "Broken"]
    problems: list[str] = []
    paras = list(squad_paragraphs(SQUAD["data"], problems.append))
    assert [p.doc_id for p in paras] == ["Rivers#p0", "article1#p0"]
    assert problems == [
        "article 'Rivers' paragraph 1 is not an object",
        "article 2 has no 'paragraphs' list",
    ]


def test_records_report_every_unusable_question() -> None:
    found = squad_records(SQUAD, "s.json")
    assert [str(b) for b in found.bad] == [
        "s.json:Rivers#p0:r2: empty question",
        f"s.json:Rivers#p0:r3: {NO_ANSWER}",
        "s.json: article 'Rivers' paragraph 1 is not an object",
        "s.json: article 2 has no 'paragraphs' list",
    ]
    assert found.seen == 4 + 2  # four questions, two unreadable parts
    r1, untitled = found.records
    # stripped, empty answers dropped, duplicates collapsed; the first is the training target
    assert r1.question == "Where is the Nile?"
    assert r1.answers == ("Africa", "in Africa") and r1.answer == "Africa"
    assert r1.gold_doc_ids == ("Rivers#p0",) and r1.doc_id == "Rivers#p0"
    assert r1.group == r1.split_group == "Rivers"
    assert r1.support == "The Nile is in Africa."  # found by the answer text (no offset)
    assert r1.source == "s.json:Rivers#p0:r1" and r1.meta == {"title": "Rivers", "id": "r1"}
    # no id: a stable one from the paragraph; no context: closed book, no support
    assert untitled.id == "article1#p0#q1" and untitled.gold_doc_ids == ("article1#p0",)
    assert untitled.group == "article1" and untitled.context is None and untitled.support is None


def test_support_uses_the_answer_offset() -> None:
    ctx = "Paris is big. Paris is in France."
    raw = {"data": [{"title": "T", "paragraphs": [{"context": ctx, "qas": []}]}]}
    raw["data"][0]["paragraphs"][0]["qas"] = [_qa("q", "Where?", "Paris", start=14)]
    (rec,) = squad_records(raw, "t.json").records
    assert rec.support == "Paris is in France."


def test_record_equality_ignores_source_and_meta() -> None:
    a = QARecord("q1", "Q?", ("A",), source="a.jsonl:1", meta={"x": 1})
    b = QARecord("q1", "Q?", ("A",), source="b.jsonl:7")
    assert a == b and hash(a) == hash(b)
    assert a.doc_id is None and a.split_group == "q1"
    with pytest.raises(ValueError, match="has no answer"):
        QARecord("q2", "Q?", ())


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        read_squad(bad)
    other = tmp_path / "list.json"
    other.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"list\.json: not SQuAD JSON"):
        read_squad(other)
    with pytest.raises(DataError, match="data file not found"):
        read_squad(tmp_path / "missing.json")
