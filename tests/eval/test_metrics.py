"""Metrics against known cases (the official SQuAD v1.1 behaviour) and hand-computed values."""

from __future__ import annotations

import math

import pytest

from ragtune.eval.metrics import (
    answer_in_context,
    answer_scores,
    exact_match,
    mrr_at_k,
    ndcg_at_k,
    normalize_answer,
    percentile,
    recall_at_k,
    retrieval_scores,
    rouge_l,
    token_f1,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("  an apple   a day ", "apple day"),
        ("Hello, world!", "hello world"),
        ("U.S.A.", "usa"),
        ("the theory of a thing", "theory of thing"),  # 'the' inside 'theory' stays
        ("Tab\tand\nnewline", "tab and newline"),
        ("", ""),
    ],
)
def test_normalize_answer_official_rules(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match_ignores_case_articles_punctuation() -> None:
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_partial_overlap() -> None:
    # pred 3 tokens, gold 2, 2 shared: P = 2/3, R = 1 -> F1 = 0.8
    assert token_f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # pred 1 token, gold 2: P = 1, R = 1/2 -> 2/3
    assert token_f1("Broncos", "the Denver Broncos") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred "a a b" vs "a b b" -> shared 2 (a, b)
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_f1_no_overlap_and_empty() -> None:
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("", "London") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalize to empty: v1.1 scores 0


def test_scores_take_max_over_golds() -> None:
    s = answer_scores("Santa Clara", ["Levi's Stadium", "Santa Clara, California", "Santa Clara"])
    assert s["em"] == 1.0
    assert s["f1"] == 1.0
    s = answer_scores("in Santa Clara California", ["Levi's Stadium", "Santa Clara, California"])
    assert s["em"] == 0.0
    assert s["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)


def test_rouge_l_known_value() -> None:
    # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 0.5 -> F = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("dogs", "cats") == 0.0


def test_answer_in_context_whole_tokens() -> None:
    ctx = ["Super Bowl 50 was played at Levi's Stadium.", "Other text."]
    assert answer_in_context(["Levi's Stadium"], ctx) == 1.0
    assert answer_in_context(["the levis stadium"], ctx) == 1.0
    assert answer_in_context(["Stad"], ctx) == 0.0  # not a token match
    assert answer_in_context(["Candlestick Park"], ctx) == 0.0


def test_retrieval_metrics_hand_computed() -> None:
    ranked = ["d3", "d1", "d1", "d7", "d2"]
    gold = ["d1", "d2"]
    assert recall_at_k(ranked, gold, 1) == 0.0
    assert recall_at_k(ranked, gold, 2) == 0.5
    assert recall_at_k(ranked, gold, 5) == 1.0
    assert mrr_at_k(ranked, gold) == 0.5
    # deduped ranking d3, d1, d7, d2: gains at ranks 2 and 4
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert ndcg_at_k(ranked, gold) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["d1"], ["d1"]) == 1.0
    scores = retrieval_scores(ranked, gold, [1, 3])
    assert set(scores) == {"recall@1", "recall@3", "mrr@10", "ndcg@10"}
    assert retrieval_scores([], ["x"], [1])["mrr@10"] == 0.0


def test_percentile_matches_numpy() -> None:
    import numpy as np

    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 95, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
