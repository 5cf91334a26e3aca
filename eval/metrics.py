"""Answer and retrieval metrics; none needs a judge model.

Answer metrics follow the official SQuAD v1.1 evaluation script: lower-case, drop
punctuation, drop the articles a/an/the, collapse whitespace; exact match and token F1 are
the maximum over the gold answers. ROUGE-L (F-measure, Porter stemming) comes from
``rouge-score``.

Retrieval metrics take the ranked document ids of the retrieved chunks (several chunks of
one document count once, at their best rank) and the gold document ids:
recall@k = share of gold documents in the top k; MRR@10 = 1/rank of the first gold document;
nDCG@10 with binary relevance. Answer-in-context says whether a gold answer string occurs in
the passages the model saw at all (after normalization): the ceiling of an extractive answer.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD normalization: lower, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalization (0 if no overlap)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens)."""
    return float(_rouge().score(gold, prediction)["rougeL"].fmeasure)


def max_over_golds(fn: Any, prediction: str, golds: Sequence[str]) -> float:
    """Score against every gold answer and keep the best (as the SQuAD script does)."""
    return max((fn(prediction, g) for g in golds), default=0.0)


def answer_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """EM, F1 and ROUGE-L of one prediction, each the max over the gold answers."""
    return {
        "em": max_over_golds(exact_match, prediction, golds),
        "f1": max_over_golds(token_f1, prediction, golds),
        "rouge_l": max_over_golds(rouge_l, prediction, golds),
    }


def answer_in_context(golds: Sequence[str], contexts: Sequence[str]) -> float:
    """1.0 if any normalized gold answer occurs in the normalized passages, else 0.0."""
    text = f" {normalize_answer(' '.join(contexts))} "
    for g in golds:
        ng = normalize_answer(g)
        if ng and f" {ng} " in text:
            return 1.0
    return 0.0


def dedupe_ranked(doc_ids: Sequence[str]) -> list[str]:
    """Document ids in rank order, each kept at its first (best) rank."""
    return list(dict.fromkeys(doc_ids))


def recall_at_k(ranked: Sequence[str], gold: Sequence[str], k: int) -> float:
    """Share of gold documents among the first k retrieved chunks' documents."""
    gold_set = set(gold)
    if not gold_set:
        return 0.0
    return len(gold_set & set(ranked[:k])) / len(gold_set)


def mrr_at_k(ranked: Sequence[str], gold: Sequence[str], k: int = 10) -> float:
    """Reciprocal rank of the first gold document in the top k (0 if none)."""
    gold_set = set(gold)
    for rank, doc in enumerate(dedupe_ranked(ranked[:k]), 1):
        if doc in gold_set:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], gold: Sequence[str], k: int = 10) -> float:
    """nDCG@k with binary relevance; a document retrieved twice gains only once."""
    gold_set = set(gold)
    if not gold_set:
        return 0.0
    docs = dedupe_ranked(ranked[:k])
    dcg = sum(1.0 / math.log2(rank + 1) for rank, d in enumerate(docs, 1) if d in gold_set)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold_set), k) + 1))
    return dcg / ideal


def retrieval_scores(
    ranked: Sequence[str], gold: Sequence[str], ks: Sequence[int]
) -> dict[str, float]:
    """recall@k for each k, plus MRR@10 and nDCG@10, of one question's ranking.

    ``ranked`` are the doc ids of the retrieved chunks in rank order (k counts chunks).
    """
    out = {f"recall@{k}": recall_at_k(ranked, gold, k) for k in ks}
    out["mrr@10"] = mrr_at_k(ranked, gold, 10)
    out["ndcg@10"] = ndcg_at_k(ranked, gold, 10)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
