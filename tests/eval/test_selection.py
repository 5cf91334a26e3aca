"""The selection rule: best validation F1; ties to the cheaper; paired CIs against the pick."""

from __future__ import annotations

import pytest

from ragtune.eval.selection import Candidate, pick, selection_markdown, selection_rows


def _cand(key: str, f1s: list[float], tokens: int, prompt: float = 100.0) -> Candidate:
    mean = sum(f1s) / len(f1s)
    return Candidate(
        key=key,
        label=f"opt={key}",
        adapter=f"a-{key}",
        n=len(f1s),
        f1={"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1},
        em=0.0,
        train_tokens=tokens,
        train_seconds=1.0,
        prompt_tokens=prompt,
        per_question_f1={f"q{i}": x for i, x in enumerate(f1s)},
    )


def test_best_validation_f1_wins():
    sel = pick([_cand("v1", [0.2, 0.4], 100), _cand("v2", [0.6, 0.8], 900)], n_boot=200)
    assert sel.picked == "v2"
    assert "the best of the sweep" in sel.reason
    rows = {r["key"]: r for r in sel.candidates}
    assert rows["v2"]["vs_picked"] is None and rows["v1"]["vs_picked"]["diff"] == pytest.approx(
        -0.4
    )


def test_an_exact_tie_goes_to_fewer_training_tokens_then_fewer_prompt_tokens():
    same = [0.5, 0.5, 1.0]
    sel = pick([_cand("v1", same, 900), _cand("v2", same, 300), _cand("v3", same, 300, 50.0)])
    assert sel.picked == "v3"
    assert "tied with v1, v2 (equal F1)" in sel.reason and "cheapest" in sel.reason
    assert all(r["tied"] for r in sel.candidates)


def test_a_tie_margin_makes_near_ties_go_to_the_cheaper():
    cands = [_cand("v1", [0.50, 0.52], 900), _cand("v2", [0.50, 0.50], 100)]
    assert pick(cands, tie_margin=0.0, n_boot=200).picked == "v1"
    sel = pick(cands, tie_margin=0.02, n_boot=200)
    assert sel.picked == "v2"
    assert "within 0.02 of the best" in sel.reason and "best point estimate is v1" in sel.reason


def test_the_reason_says_when_the_validation_set_cannot_tell_them_apart():
    noisy_a = [0.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    noisy_b = [1.0, 0.0, 1.0, 0.0, 0.5, 0.6]
    sel = pick([_cand("v1", noisy_a, 100), _cand("v2", noisy_b, 100)], n_boot=500)
    assert sel.picked == "v2"
    assert "not significant: the validation set cannot tell them apart" in sel.reason


def test_rows_and_markdown_name_the_pick():
    sel = pick([_cand("v1", [0.2, 0.4], 100), _cand("v2", [0.6, 0.8], 900)], n_boot=200)
    data = {**sel.to_dict(), "split": {"fit_articles": 5, "validation_articles": 2,
                                        "questions": 2, "seed": 0}, "tested": ["v2", "v1"]}  # fmt: skip
    rows = selection_rows(data)
    assert [r["picked"] for r in rows] == [False, True] and rows[1]["vs_picked"] == "picked"
    md = "\n".join(selection_markdown(data))
    assert "**Picked v2**" in md and "| opt=v1 |" in md
    assert "evaluated for 2 different picks" in md  # a changed pick is not hidden
