"""Extra retrievers side by side, oracle:A with every hybrid:A, and the loss split
(retrieval loss vs reading loss) in the summary, the verdict and both reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.core.qa import QARecord
from ragtune.core.types import Hit
from ragtune.eval.report import write_report
from ragtune.eval.runner import RunConfig, retrieval_record
from ragtune.eval.summary import summarize
from ragtune.eval.variants import Variant, expand_variants


def test_retriever_twins_and_oracles_are_added() -> None:
    vs = expand_variants(
        ["base", "rag", "hybrid", "oracle"],
        hybrid_adapters=["raft"],
        retrievers=["tuned"],
        oracle_with_hybrid=True,
    )
    assert [v.name for v in vs] == [
        "base",
        "rag",
        "rag@tuned",
        "hybrid:raft",
        "hybrid:raft@tuned",
        "oracle",
        "oracle:raft",
    ]
    assert Variant.parse("hybrid:raft@tuned") == Variant("hybrid", "raft", "tuned")
    assert Variant("rag", None, "tuned").without_retriever == Variant("rag")
    # an explicit twin is not repeated; without retrievers nothing is added
    assert len(expand_variants(["rag", "rag@tuned"], retrievers=["tuned"])) == 2
    assert [v.name for v in expand_variants(["hybrid:a"])] == ["hybrid:a"]
    # the run config turns the oracle on by default and can turn it off
    cfg = RunConfig(dataset="x.json", modes=["hybrid:a"])
    assert [v.name for v in cfg.variants()] == ["hybrid:a", "oracle:a"]
    cfg.oracle_with_hybrid = False
    assert [v.name for v in cfg.variants()] == ["hybrid:a"]


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (["rag@nope"], "unknown retriever 'nope'"),
        (["base@tuned"], "retrieves nothing"),
        (["oracle:a@tuned"], "retrieves nothing"),
    ],
)
def test_bad_retriever_modes_are_named(modes: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        expand_variants(modes, retrievers=["tuned"])


def test_retrievers_need_the_pipeline_and_safe_names() -> None:
    base = {"dataset": "x.json", "modes": ["rag"]}
    cfg = RunConfig.from_mapping(
        {**base, "retrievers": {"tuned": {"index": "kb-tuned", "embedder": "tuned:e"}}}
    )
    assert cfg.retrievers["tuned"].index == "kb-tuned"
    assert cfg.index_of(Variant("rag", None, "tuned")) == "kb-tuned"
    with pytest.raises(InvalidInput, match="in-process pipeline"):
        RunConfig.from_mapping(
            {**base, "url": "http://x", "retrievers": {"t": {"index": "i", "embedder": "e"}}}
        ).validate()
    with pytest.raises(InvalidInput, match="invalid retriever name"):
        RunConfig.from_mapping(
            {**base, "retrievers": {"../t": {"index": "i", "embedder": "e"}}}
        ).validate()


def _answer(variant: str, qid: str, f1: float) -> dict[str, Any]:
    v = Variant.parse(variant)
    return {
        "kind": "answer",
        "variant": variant,
        "mode": v.kind,
        "adapter": v.adapter,
        "qid": qid,
        "question": f"question {qid}?",
        "answers": ["gold"],
        "prediction": "gold" if f1 == 1 else "other",
        "em": float(f1 == 1.0),
        "f1": f1,
        "rouge_l": f1,
        "prompt_tokens": 100,
        "completion_tokens": 4,
        "retrieve_ms": 1.0,
        "generate_ms": 100.0,
        "total_ms": 120.0,
        "batch_ms": 400.0,
        "batch_n": 4,
    }


# per question: hybrid F1 and oracle F1 (same adapter, gold passage given)
HYBRID = [0.0, 0.5, 1.0, 0.0]
ORACLE = [1.0, 0.5, 1.0, 0.0]
TUNED = [1.0, 0.5, 1.0, 0.0]  # hybrid:raft@tuned: better retrieval closes the gap


def _run(
    tmp_path: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[QARecord], list[Variant]]:
    items = [QARecord(f"q{i}", f"question q{i}?", ("gold",), (f"D#p{i}",), "g") for i in range(4)]
    variants = [Variant("rag"), Variant("hybrid", "raft"), Variant("hybrid", "raft", "tuned")]
    variants += [Variant("rag", None, "tuned"), Variant("oracle", "raft")]
    recs: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        gold = Hit(f"D#p{i}", f"D#p{i}", "gold", 1.0)
        miss = [Hit(f"X#p{j}", f"X#p{j}", "x", 0.5) for j in range(3)]
        # the base index finds the gold passage at rank 3 for q0 and q1; the tuned one at rank 1
        base_hits = [*miss[:2], gold] if i < 2 else [gold, *miss[:2]]
        recs.append(retrieval_record(it, base_hits, [1, 2, 3]))
        recs.append(retrieval_record(it, [gold, *miss[:2]], [1, 2, 3], "tuned"))
        recs += [
            _answer("rag", it.id, 0.0),
            _answer("rag@tuned", it.id, 0.5),
            _answer("hybrid:raft", it.id, HYBRID[i]),
            _answer("hybrid:raft@tuned", it.id, TUNED[i]),
            _answer("oracle:raft", it.id, ORACLE[i]),
        ]
    cfg = RunConfig(dataset="x.json", recall_ks=[1, 2, 3], n_boot=500)
    summary = summarize(recs, variants, [it.id for it in items], cfg)
    return summary, recs, items, variants


def test_loss_split_figures_and_verdict(tmp_path: Path) -> None:
    summary, *_ = _run(tmp_path)
    rows = {r["variant"]: r for r in summary["loss_split"]}
    assert set(rows) == {"hybrid:raft", "hybrid:raft@tuned"}
    r = rows["hybrid:raft"]
    assert r["oracle"] == "oracle:raft" and r["n"] == 4
    assert r["hybrid_f1"] == pytest.approx(0.375) and r["oracle_f1"] == pytest.approx(0.625)
    assert r["retrieval_loss"]["mean"] == pytest.approx(0.25)  # oracle - hybrid
    assert r["reading_loss"]["mean"] == pytest.approx(0.375)  # 1 - oracle
    # per question (1 - o) - (o - h): -1, 0.5, 0, 1
    assert r["reading_minus_retrieval"]["mean"] == pytest.approx(0.125)
    assert r["bigger"] == "reading" and r["clear"] is False
    assert r["retrieval_loss"]["lo"] <= 0.25 <= r["retrieval_loss"]["hi"]
    t = rows["hybrid:raft@tuned"]
    assert t["retrieval_loss"]["mean"] == pytest.approx(0.0) and t["bigger"] == "reading"
    text = summary["verdict"]["text"]
    assert "Where hybrid:raft loses F1: retrieval loss +0.250" in text
    assert "reading loss 0.375" in text and "the bigger is reading loss, not clearly" in text
    # the twins are checked against their base-retriever variant
    claims = [c["claim"] for c in summary["verdict"]["checks"]]
    assert "hybrid:raft@tuned beats hybrid:raft on F1" in claims
    assert "rag@tuned beats rag on F1" in claims
    assert "hybrid:raft@tuned beats rag on F1" not in claims  # same retriever only
    # the oracle never wins
    assert summary["verdict"]["winner"] == "hybrid:raft@tuned"


def test_retrievers_are_compared_question_by_question(tmp_path: Path) -> None:
    summary, *_ = _run(tmp_path)
    assert summary["retrieval"]["recall@1"]["mean"] == pytest.approx(0.5)
    tuned = summary["retrievers"]["tuned"]
    assert tuned["recall@1"]["mean"] == pytest.approx(1.0)
    (pair,) = summary["retrieval_pairs"]
    assert pair["a"] == "base" and pair["b"] == "tuned" and pair["n"] == 4
    assert pair["recall@1"]["diff"] == pytest.approx(0.5)
    assert pair["recall@3"]["diff"] == pytest.approx(0.0)
    assert "Retriever tuned vs the base index: recall@1 +0.500" in summary["verdict"]["text"]


def test_reports_show_both_tables(tmp_path: Path) -> None:
    summary, recs, items, variants = _run(tmp_path)
    md, html = write_report(tmp_path, summary, recs, items, variants)
    text = md.read_text()
    assert "## Where answers are lost" in text
    assert "| hybrid:raft | oracle:raft | 4 | 0.375 | 0.625 | +0.250 [" in text
    assert "## Retrievers side by side" in text and "| recall@1 | 0.500 [" in text
    page = html.read_text()
    assert 'id="loss-split"' in page and 'id="retrievers"' in page
    assert "hybrid:raft@tuned" in page


def test_cli_retriever_flag() -> None:
    from ragtune.cli.eval_cmd import build_run_config

    flags = {
        "dataset": "x.json",
        "modes": "rag,hybrid:a",
        "retrievers": ("tuned=kb-tuned,tuned:kb-emb",),
        "oracle_with_hybrid": False,
    }
    cfg = build_run_config(None, flags)
    assert cfg.retrievers["tuned"].index == "kb-tuned"
    assert cfg.retrievers["tuned"].embedder == "tuned:kb-emb"
    assert [v.name for v in cfg.variants()] == ["rag", "rag@tuned", "hybrid:a", "hybrid:a@tuned"]
    with pytest.raises(InvalidInput, match="LABEL=INDEX,EMBEDDER"):
        build_run_config(None, {**flags, "retrievers": ("tuned=kb-tuned",)})
