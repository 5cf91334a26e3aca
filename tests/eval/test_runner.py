"""The runner through the real pipeline (tiny real models, real FAISS index, real LoRA)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.core.pipeline import Pipeline
from ragtune.eval.runner import RESULTS, RunConfig, read_results, run_eval
from ragtune.eval.targets import PipelineTarget


def _config(dataset: Path, **kw) -> RunConfig:
    base = dict(
        dataset=str(dataset),
        modes=["base", "rag", "finetune", "hybrid", "oracle"],
        adapters=["qa"],
        index="squad",
        split="all",
        top_k=2,
        max_new_tokens=4,
        batch_size=3,
        n_boot=200,
    )
    base.update(kw)
    return RunConfig(**base)


def test_run_all_modes_through_pipeline(tiny_env, tmp_path):
    settings, squad = tiny_env
    out = tmp_path / "run"
    summary = run_eval(_config(squad), PipelineTarget(Pipeline(settings)), out, progress=False)
    recs = read_results(out / RESULTS)
    answers = [r for r in recs if r["kind"] == "answer"]
    retrieval = [r for r in recs if r["kind"] == "retrieval"]
    # hybrid:qa brings oracle:qa along (the loss split)
    assert len(answers) == 9 * 6 and len(retrieval) == 9
    assert set(summary["variants"]) == {
        "base", "rag", "finetune:qa", "hybrid:qa", "oracle", "oracle:qa",
    }  # fmt: skip
    assert [r["variant"] for r in summary["loss_split"]] == ["hybrid:qa"]
    for r in answers:
        assert 0.0 <= r["f1"] <= 1.0 and r["prompt_tokens"] > 0
        if r["mode"] in ("rag", "hybrid"):
            assert len(r["sources"]) == 2
            assert all("#p" in d for d in r["sources"])  # the indexer's SQuAD doc ids
    oracle = [r for r in answers if r["mode"] == "oracle"]
    assert all(r["answer_in_context"] == 1.0 for r in oracle)  # the gold passage holds it
    # 8 paragraphs, retrieve_k 10: every gold document is found within the top 10
    assert summary["retrieval"]["recall@10"]["mean"] == 1.0
    assert summary["verdict"]["winner"] in {"base", "rag", "finetune:qa", "hybrid:qa"}
    assert len(summary["pairs"]) == 15  # 6 variants, oracle:qa included
    for name in ("config.json", "summary.json", "report.md", "report.html"):
        assert (out / name).is_file()
    assert {p.name for p in (out / "plots").iterdir()} == {
        "metrics.png",
        "latency.png",
        "recall_at_k.png",
    }
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["variants"] == ["base", "rag", "finetune:qa", "hybrid:qa", "oracle", "oracle:qa"]
    assert len(cfg["dataset_sha256"]) == 64


def test_interrupted_run_resumes_without_duplicates(tiny_env, tmp_path):
    settings, squad = tiny_env
    out = tmp_path / "run"
    cfg = _config(squad, modes=["base", "rag"], split="test", test_fraction=0.5)
    target = PipelineTarget(Pipeline(settings))
    assert run_eval(cfg, target, out, progress=False, stop_after=3) == {}  # "interrupted"
    first = (out / RESULTS).read_text()
    n_first = sum(r["kind"] == "answer" for r in read_results(out / RESULTS))
    assert 3 <= n_first < 10
    # a crash mid-line leaves a torn record: the rerun drops it and carries on
    with open(out / RESULTS, "a") as f:
        f.write('{"kind": "answer", "variant": "ba')
    summary = run_eval(cfg, target, out, progress=False)
    recs = read_results(out / RESULTS)
    assert (out / RESULTS).read_text().startswith(first)  # nothing rewritten
    keys = Counter((r["variant"], r["qid"]) for r in recs)
    assert max(keys.values()) == 1
    n_test = summary["n_questions"]
    assert sum(r["kind"] == "answer" for r in recs) == 2 * n_test
    # a finished run reruns as a no-op (same results, summary rebuilt)
    run_eval(cfg, target, out, progress=False)
    assert len(read_results(out / RESULTS)) == len(recs)


def test_resume_refuses_other_settings(tiny_env, tmp_path):
    settings, squad = tiny_env
    out = tmp_path / "run"
    target = PipelineTarget(Pipeline(settings))
    run_eval(_config(squad, modes=["base"], limit=2), target, out, progress=False)
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        run_eval(_config(squad, modes=["base"], limit=2, max_new_tokens=5), target, out)
    # more modes or a larger limit continue the same run
    s = run_eval(_config(squad, modes=["base", "rag"], limit=3), target, out, progress=False)
    assert s["variants"]["rag"]["n"] == 3


def test_oracle_needs_gold_passages(tiny_env, tmp_path):
    settings, _ = tiny_env
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "Where is the Nile?", "answers": ["Africa"]}\n')
    cfg = _config(data, modes=["oracle"])
    with pytest.raises(InvalidInput, match="oracle"):
        run_eval(cfg, PipelineTarget(Pipeline(settings)), tmp_path / "r", progress=False)


def test_resume_refuses_a_retrained_adapter(tiny_env, tmp_path):
    settings, squad = tiny_env
    out = tmp_path / "run"
    target = PipelineTarget(Pipeline(settings))
    cfg = _config(squad, modes=["finetune"], limit=2)
    run_eval(cfg, target, out, progress=False)
    manifest = settings.adapters_dir / "qa" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"test"', '"2030-01-01T00:00:00"'))
    with pytest.raises(InvalidInput, match="adapter qa"):
        run_eval(cfg, PipelineTarget(Pipeline(settings)), out, progress=False)


def test_missing_adapter_or_index_fails_before_any_work(tiny_env, tmp_path):
    from ragtune.core.errors import IndexNotFound, UnknownAdapter

    settings, squad = tiny_env
    target = PipelineTarget(Pipeline(settings))
    with pytest.raises(UnknownAdapter):
        run_eval(_config(squad, modes=["hybrid:nope"]), target, tmp_path / "a", progress=False)
    with pytest.raises(IndexNotFound):
        run_eval(_config(squad, modes=["rag"], index="nope"), target, tmp_path / "b")
    assert not (tmp_path / "a" / RESULTS).exists() and not (tmp_path / "b").exists()
