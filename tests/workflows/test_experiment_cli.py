"""`ragtune eval experiment` through the real CLI on the tiny models (real LoRA training)."""

from __future__ import annotations

import json
from collections import Counter

from ragtune.eval.runner import RunConfig, read_results
from tests.workflows.conftest import invoke


def test_experiment_end_to_end_and_resume(tiny_settings, tiny_experiment):
    res = invoke(tiny_settings, "eval", "experiment", str(tiny_experiment), "-q")
    assert "Winner on token F1" in res.output and "time:" in res.output
    assert "(index " in res.output and "closed " in res.output and "eval " in res.output
    folder = tiny_settings.data_dir / "runs" / "tiny"
    state = json.loads((folder / "experiment.json").read_text())
    train_titles = set(state["steps"]["split"]["train_articles"])
    test_titles = set(state["steps"]["split"]["test_articles"])
    assert train_titles and test_titles and not train_titles & test_titles
    train = json.loads((folder / "train-closed.json").read_text())
    assert {a["title"] for a in train["data"]} == train_titles
    assert sum(len(p["qas"]) for a in train["data"] for p in a["paragraphs"]) == 4
    assert train["canary"] == "TEST CANARY"
    for f in ("test.json", "config.json", "summary.json", "report.html", "results.jsonl"):
        assert (folder / f).is_file()
    # [eval] values as given, the rest RunConfig's defaults
    conf = json.loads((folder / "config.json").read_text())
    defaults = RunConfig(dataset="")
    assert (conf["retrieve_k"], conf["recall_ks"]) == (defaults.retrieve_k, defaults.recall_ks)
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["variants"]) == {
        "base", "rag", "finetune:tiny-closed", "hybrid:tiny-raft", "oracle", "oracle:tiny-raft",
    }  # fmt: skip
    assert (tiny_settings.data_dir / "adapters" / "tiny-raft" / "manifest.json").is_file()
    # a rerun reuses the adapters and the results
    n = len(read_results(folder / "results.jsonl"))
    res = invoke(tiny_settings, "eval", "experiment", str(tiny_experiment), "-q")
    assert res.output.count("reused") == 2
    recs = read_results(folder / "results.jsonl")
    assert len(recs) == n and max(Counter((r["variant"], r["qid"]) for r in recs).values()) == 1
