"""Data readers: every format, auto-detection, and bad records reported with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.qa import sentence_with
from ragtune.tuner.args import parse_data_spec
from ragtune.tuner.formats import load_examples
from tests.tuner.helpers import squad_json, write_jsonl


def test_prompt_format_reports_bad_lines_with_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "qa.jsonl"
    p.write_text(
        json.dumps({"prompt": "Q1?", "response": "A1"}) + "\n"
        "{not json\n"
        "\n"
        + json.dumps({"prompt": "Q2?"})
        + "\n"
        + json.dumps({"prompt": "Q3?", "response": "  "})
        + "\n"
        + json.dumps({"prompt": "Q4?", "response": "A4", "doc_id": "d#p0", "context": "C"})
        + "\n"
    )
    res = load_examples(p)
    assert res.fmt == "prompt"
    assert [e.question for e in res.examples] == ["Q1?", "Q4?"]
    assert res.examples[1].doc_id == "d#p0" and res.examples[1].context == "C"
    assert res.records == 5 and len(res.bad) == 3
    assert [b.source for b in res.bad] == ["qa.jsonl:2", "qa.jsonl:4", "qa.jsonl:5"]
    assert "not valid JSON" in res.bad[0].reason
    assert "missing field 'response'" in res.bad[1].reason
    assert "empty" in res.bad[2].reason


def test_alpaca_jsonl_and_json_list(tmp_path: Path) -> None:
    recs = [
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Name a colour", "input": "", "output": "blue"},
    ]
    for path in (write_jsonl(tmp_path / "a.jsonl", recs), tmp_path / "a.json"):
        if path.suffix == ".json":
            path.write_text(json.dumps(recs))
        res = load_examples(path)
        assert res.fmt == "alpaca"
        assert res.examples[0].question == "Translate to French\n\ncat"
        assert res.examples[1].question == "Name a colour"
        assert res.examples[0].answer == "chat"


def test_chat_format_takes_last_exchange(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris"},
                ]
            },
            {"messages": [{"role": "user", "content": "no answer"}]},
        ],
    )
    res = load_examples(p, "chat")
    assert [(e.question, e.answer) for e in res.examples] == [("Capital of France?", "Paris")]
    assert "c.jsonl:2" in str(res.bad[0]) and "assistant" in res.bad[0].reason


def test_squad_closed_book_with_gold_doc_ids(tmp_path: Path) -> None:
    res = load_examples(squad_json(tmp_path / "s.json"))
    assert res.fmt == "squad" and len(res.examples) == 16
    e = res.examples[0]
    assert e.group == "Article_0" and e.doc_id == "Article_0#p0"
    assert res.examples[2].doc_id == "Article_0#p1"
    assert e.answer in e.context and e.support and e.answer in e.support


def test_sentence_with_finds_the_supporting_sentence() -> None:
    ctx = "First one. The answer is here! Last sentence?"
    assert sentence_with(ctx, ctx.index("answer")) == "The answer is here!"
    assert sentence_with(ctx, 0) == "First one."
    assert sentence_with(ctx, len(ctx) - 2) == "Last sentence?"


def test_empty_and_all_invalid_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        load_examples(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n{"x": 1}\n')
    with pytest.raises(DataError, match=r"all 2 records are invalid.*bad.jsonl:1"):
        load_examples(bad, "prompt")
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "missing.jsonl")


def test_format_errors(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(InvalidInput, match="unknown data format"):
        load_examples(p, "yaml")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="needs --template"):
        load_examples(csv)


def test_data_spec_weights() -> None:
    assert parse_data_spec("a.jsonl") == ("a.jsonl", 1.0)
    assert parse_data_spec("dir/a.jsonl:2.5") == ("dir/a.jsonl", 2.5)
    assert parse_data_spec("odd:name.jsonl") == ("odd:name.jsonl", 1.0)
    with pytest.raises(InvalidInput, match="weight must be positive"):
        parse_data_spec("a.jsonl:0")
