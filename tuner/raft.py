"""RAFT-style examples (Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific RAG").

For each question the live index's top-k passages become the context, exactly as the
pipeline would serve them. Then, per example and seeded:

- with probability ``p_oracle`` the gold ("oracle") document is among the passages: kept
  where retrieval put it, or, if retrieval missed it, inserted at a random position in
  place of the last distractor;
- otherwise every passage of the gold document is removed and deeper hits fill the gap,
  so the model also learns to answer (or hedge) from distractors alone.

The target is the short answer, optionally preceded by the quoted supporting sentence
(``quote=True``): ``"<sentence>" Answer: <answer>`` on one line, so ``strip_quote`` (and the
pipeline's first-line answer cleaning) still finds the answer.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragtune.core.prompts import ANSWER_MARK
from ragtune.core.qa import QARecord


@dataclass(frozen=True)
class RaftExample:
    """A question with the passages it is trained with."""

    example: QARecord
    contexts: list[str]
    doc_ids: list[str]
    oracle: bool  # the gold document is among the passages
    target: str


@dataclass
class RaftStats:
    examples: int = 0
    oracle: int = 0  # gold document among the passages
    gold_retrieved: int = 0  # retrieval found the gold document in its own top-k
    gold_inserted: int = 0  # retrieval missed it and it was put in
    no_gold: int = 0  # example without a known gold document: passages used as retrieved
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["oracle_rate"] = round(self.oracle / self.examples, 4) if self.examples else 0.0
        out["retrieval_recall"] = (
            round(self.gold_retrieved / (self.examples - self.no_gold), 4)
            if self.examples > self.no_gold
            else None
        )
        return {**out, **self.extra}


def example_rng(seed: int, ex: QARecord) -> random.Random:
    """A generator per example: the draw does not depend on the order or the split."""
    digest = hashlib.sha256(f"{seed}|{ex.source}|{ex.question}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_target(ex: QARecord, quote: bool) -> str:
    if quote and ex.support:
        return f'"{" ".join(ex.support.split())}" {ANSWER_MARK} {ex.answer}'
    return ex.answer


def strip_quote(text: str) -> str:
    """The short answer of a quote-style output (text after the last 'Answer:')."""
    i = text.rfind(ANSWER_MARK)
    return text[i + len(ANSWER_MARK) :].strip() if i >= 0 else text.strip()


def _gold_text(ex: QARecord, gold_chunks: Sequence[str]) -> str | None:
    """The passage to insert: the gold document's chunk holding the answer, else its first."""
    ans = ex.answer.lower()
    for text in gold_chunks:
        if ans in text.lower():
            return text
    if gold_chunks:
        return gold_chunks[0]
    return ex.context


def build_raft(
    examples: Sequence[QARecord],
    index: Any,
    k: int,
    p_oracle: float,
    seed: int,
    method: str = "hybrid",
    quote: bool = False,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[RaftExample], RaftStats]:
    """Retrieve and assemble RAFT contexts for every example.

    Args:
        examples: questions; ``doc_id`` (or ``context``) names the gold document.
        index: a ``core.index_store.LoadedIndex`` (anything with ``search_batch`` and ``chunks``).
        k: passages per example (what the pipeline serves: the top_k setting).
        p_oracle: probability that the gold document is among the passages.
        seed: seeds each example's draw.
        method: retrieval method (dense, bm25, hybrid).
        quote: prefix the target with the quoted supporting sentence.
    """
    from tqdm.auto import tqdm

    by_doc: dict[str, list[str]] = {}
    for c in index.chunks.values():
        by_doc.setdefault(str(c["doc_id"]), []).append(c["text"])
    depth = k + 8  # spare distractors for when the gold document's chunks are removed
    out: list[RaftExample] = []
    stats = RaftStats()
    bar = tqdm(total=len(examples), desc="RAFT contexts", unit="q", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        hits_batch = index.search_batch([e.question for e in batch], depth, method)
        for ex, hits in zip(batch, hits_batch, strict=True):
            out.append(_assemble(ex, hits, by_doc, k, p_oracle, seed, quote, stats))
        bar.update(len(batch))
    bar.close()
    return out, stats


def _assemble(
    ex: QARecord,
    hits: Sequence[Any],
    by_doc: dict[str, list[str]],
    k: int,
    p_oracle: float,
    seed: int,
    quote: bool,
    stats: RaftStats,
) -> RaftExample:
    rng = example_rng(seed, ex)
    stats.examples += 1
    target = make_target(ex, quote)
    uniq: list[Any] = []
    seen: set[str] = set()
    for h in hits:  # the first hit of each chunk, in rank order
        if h.chunk_id not in seen:
            seen.add(h.chunk_id)
            uniq.append(h)
    gold = ex.doc_id
    if gold is None and ex.context is None:
        stats.no_gold += 1
        top = uniq[:k]
        return RaftExample(ex, [h.text for h in top], [h.doc_id for h in top], False, target)
    is_gold = (
        (lambda h: h.doc_id == gold)
        if gold is not None
        else (lambda h: " ".join(h.text.split()) in " ".join((ex.context or "").split()))
    )
    top = uniq[:k]
    retrieved = any(is_gold(h) for h in top)
    stats.gold_retrieved += retrieved
    distractors = [h for h in uniq if not is_gold(h)]
    if rng.random() < p_oracle:
        if retrieved:
            passages = [(h.text, h.doc_id) for h in top]
        else:
            text = _gold_text(ex, by_doc.get(gold or "", []))
            if text is None:  # gold document unknown to the index and the data
                stats.no_gold += 1
                return RaftExample(
                    ex, [h.text for h in top], [h.doc_id for h in top], False, target
                )
            passages = [(h.text, h.doc_id) for h in distractors[: k - 1]]
            passages.insert(rng.randint(0, len(passages)), (text, gold or "<gold>"))
            stats.gold_inserted += 1
        stats.oracle += 1
        oracle = True
    else:
        passages = [(h.text, h.doc_id) for h in distractors[:k]]
        oracle = False
    return RaftExample(ex, [t for t, _ in passages], [d for _, d in passages], oracle, target)
