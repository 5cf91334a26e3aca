"""Templates turn raw records into examples; the shipped worked examples stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.tuner.formats import load_examples
from ragtune.tuner.templates import load_template
from tests.conftest import REPO

EXAMPLES = REPO / "examples" / "templates"


def test_review_example_renders_every_row() -> None:
    res = load_examples(EXAMPLES / "reviews.csv", template=EXAMPLES / "reviews.toml")
    assert res.fmt == "template" and not res.bad and len(res.examples) == 18
    e = res.examples[0]
    assert e.question.startswith('Review of "Kettle K2": Boils fast')
    assert e.question.endswith("How many stars (1-5) did the reviewer give?")
    assert e.answer == "5" and e.group == "Kettle K2" and e.source == "reviews.csv:2"


def test_ticket_example_renders_every_record() -> None:
    res = load_examples(EXAMPLES / "tickets.jsonl", "template", EXAMPLES / "tickets.toml")
    assert not res.bad and len(res.examples) == 16
    assert {e.answer for e in res.examples} == {"billing", "technical", "account", "shipping"}
    assert res.examples[0].group == "c01"
    assert "Subject: Charged twice" in res.examples[0].question


def test_missing_field_is_a_bad_record_with_its_line(tmp_path: Path) -> None:
    tmpl = tmp_path / "t.toml"
    tmpl.write_text('question = "Q: {{ text }}"\nanswer = "{{ label }}"\n')
    data = tmp_path / "d.csv"
    data.write_text('text,label\n"multi\nline",yes\nonly text,\nfine,no\n')
    res = load_examples(data, template=tmpl)
    assert [e.answer for e in res.examples] == ["yes", "no"]
    assert res.examples[0].source == "d.csv:2"
    assert [str(b) for b in res.bad] == ["d.csv:4: template answer renders empty"]
    data2 = tmp_path / "d2.jsonl"
    data2.write_text('{"text": "x"}\n{"text": "y", "label": "z"}\n')
    res2 = load_examples(data2, template=tmpl)
    assert len(res2.examples) == 1
    assert "d2.jsonl:1" in str(res2.bad[0]) and "'label' is undefined" in str(res2.bad[0])


def test_template_file_errors(tmp_path: Path) -> None:
    t = tmp_path / "t.toml"
    t.write_text('question = "{{ a "\nanswer = "x"\n')
    with pytest.raises(InvalidInput, match="question: syntax error"):
        load_template(t)
    t.write_text('question = "q"\nanswr = "x"\n')
    with pytest.raises(InvalidInput, match="unknown key"):
        load_template(t)
    t.write_text('question = "q"\n')
    with pytest.raises(InvalidInput, match="needs a 'answer'"):
        load_template(t)
    with pytest.raises(InvalidInput, match="not found"):
        load_template(tmp_path / "nope.toml")


def test_template_is_sandboxed(tmp_path: Path) -> None:
    t = tmp_path / "t.toml"
    t.write_text('question = "{{ a.__class__.__mro__ }}"\nanswer = "x"\n')
    d = tmp_path / "d.jsonl"
    d.write_text('{"a": "s"}\n')
    res = load_template(t).apply_file(d)
    assert not res.examples and "unsafe" in str(res.bad[0])
