"""One SQuAD document-id rule for the indexer, the tuner and eval, also for an article
without a title (before core.qa, eval named its paragraphs "#p0" while the indexer named
them "article1#p0": its questions scored recall@k = 0 without a word)."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.core.pipeline import Pipeline
from ragtune.core.qa import load_squad_json, squad_records, squad_titles
from ragtune.eval.datasets import load_items, subset_squad
from ragtune.eval.runner import RESULTS, RunConfig, read_results, run_eval
from ragtune.eval.targets import PipelineTarget
from ragtune.indexer.api import build_index
from ragtune.indexer.loaders import load_paths
from ragtune.tuner.formats import load_examples
from tests.eval.conftest import tiny_squad


def _untitled_squad(tmp_path: Path) -> Path:
    raw = tiny_squad()
    del raw["data"][1]["title"]  # "Nature", the second article
    path = tmp_path / "untitled.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_indexer_tuner_and_eval_agree_and_recall_is_scored(tiny_settings, tmp_path) -> None:
    squad = _untitled_squad(tmp_path)
    indexed = {d.id for d in load_paths([squad]).documents}
    assert {"article1#p0", "article1#p1"} <= indexed

    items = load_items(squad)
    examples = load_examples(squad, "squad").examples
    eval_gold = {it.question: it.gold_doc_ids for it in items}
    tuner_gold = {e.question: e.gold_doc_ids for e in examples}
    assert eval_gold == tuner_gold
    untitled = [it for it in items if it.group == "article1"]
    assert len(untitled) == 3
    assert all(set(it.gold_doc_ids) <= indexed for it in items)

    # through the real indexer and the eval's retrieval scoring (tiny models)
    build_index(tiny_settings, [squad], "squad", progress=False)
    config = RunConfig(
        dataset=str(squad), modes=["rag"], index="squad", top_k=2, max_new_tokens=2, n_boot=50
    )
    out = tmp_path / "run"
    summary = run_eval(config, PipelineTarget(Pipeline(tiny_settings)), out, progress=False)
    retrieval = {r["qid"]: r for r in read_results(out / RESULTS) if r["kind"] == "retrieval"}
    # 8 paragraphs, retrieve_k 10: every gold paragraph is in the top 10 when its id is right
    for it in untitled:
        assert retrieval[it.id]["recall@10"] == 1.0
    assert summary["retrieval"]["recall@10"]["mean"] == 1.0


def test_a_subset_keeps_the_ids_of_an_article_without_title(tmp_path) -> None:
    """The experiment's train/test files are subsets: the ids in them must not move."""
    raw = load_squad_json(_untitled_squad(tmp_path))
    whole = {r.id: r.gold_doc_ids for r in squad_records(raw, "all.json").records}
    titles = squad_titles(raw)
    assert titles[1] == "article1"
    for part in (titles[1:2], [titles[0], titles[2]]):
        sub = subset_squad(raw, part)
        assert squad_titles(sub) == part
        for r in squad_records(sub, "part.json").records:
            assert r.gold_doc_ids == whole[r.id]
