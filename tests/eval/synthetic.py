"""Synthetic eval records (no models): planted accuracies per mode, for report/compare tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ragtune.core.qa import QARecord
from ragtune.core.types import Hit
from ragtune.eval.metrics import answer_scores
from ragtune.eval.runner import RunConfig, retrieval_record
from ragtune.eval.summary import summarize
from ragtune.eval.variants import Variant

VARIANTS = [
    Variant("base"),
    Variant("rag"),
    Variant("finetune", "qa"),
    Variant("hybrid", "raft"),
    Variant("oracle"),
]
ACCURACY = {"base": 0.05, "rag": 0.3, "finetune:qa": 0.1, "hybrid:raft": 0.5, "oracle": 0.6}


def make_run(
    out: Path, n: int = 60, seed: int = 0, accuracy: dict[str, float] | None = None
) -> tuple[dict, list[dict], list[QARecord]]:
    """Write summary.json, results.jsonl and config.json of a fake run into ``out``."""
    acc = accuracy or ACCURACY
    rng = random.Random(seed)
    items = [
        QARecord(f"q{i}", f"What is thing {i}?", (f"answer {i}",), (f"Doc#p{i}",), "g", f"c {i}")
        for i in range(n)
    ]
    recs: list[dict] = []
    for it in items:
        ranked = [f"Doc#p{rng.randrange(n)}" for _ in range(10)]
        if rng.random() < 0.7:
            ranked[rng.randrange(5)] = it.gold_doc_ids[0]
        recs.append(retrieval_record(it, [Hit(d, d, "x", 1.0) for d in ranked], [1, 2, 3, 5, 10]))
        for v in VARIANTS:
            pred = it.answers[0] if rng.random() < acc[v.name] else f"something else {it.id}"
            r = {
                "kind": "answer",
                "variant": v.name,
                "mode": v.kind,
                "adapter": v.adapter,
                "qid": it.id,
                "question": it.question,
                "answers": list(it.answers),
                "prediction": pred,
                **answer_scores(pred, it.answers),
                "prompt_tokens": 120,
                "completion_tokens": 8,
                "retrieve_ms": 2.0,
                "generate_ms": 900 + rng.random() * 400,
                "total_ms": 1000 + rng.random() * 800,
                "batch_ms": 8000.0,
                "batch_n": 8,
            }
            if v.sees_passages:
                r["answer_in_context"] = float(rng.random() < 0.7)
            recs.append(r)
    cfg = RunConfig(dataset="synthetic.json", n_boot=1000)
    summary = summarize(recs, VARIANTS, [i.id for i in items], cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "target": {"kind": "test"}}))
    return summary, recs, items
