"""The runner against a real service over real HTTP (uvicorn on a local port)."""

from __future__ import annotations

import pytest

from ragtune.eval.runner import RESULTS, RunConfig, read_results, run_eval
from ragtune.eval.targets import HttpTarget

pytest.importorskip("ragtune.service.app")


def test_eval_over_http_matches_shape_of_pipeline_run(tiny_env, tmp_path):
    from ragtune.service.app import create_app
    from tests.service.helpers import live_server

    settings, squad = tiny_env
    settings = settings.model_copy(update={"api_keys": ["sekret"]})
    cfg = RunConfig(
        dataset=str(squad),
        modes=["base", "rag", "hybrid", "oracle"],
        adapters=["qa"],
        index="squad",
        top_k=2,
        max_new_tokens=3,
        batch_size=4,
        n_boot=200,
    )
    with live_server(create_app(settings)) as url:
        target = HttpTarget(url, api_key="sekret")
        summary = run_eval(cfg, target, tmp_path / "run", progress=False)
        target.close()
    recs = [r for r in read_results(tmp_path / "run" / RESULTS) if r["kind"] == "answer"]
    # hybrid:qa brings oracle:qa along (the loss split)
    assert len(recs) == 9 * 5 and {r["variant"] for r in recs} >= {"hybrid:qa", "oracle:qa"}
    rag = [r for r in recs if r["variant"] == "rag"]
    assert all(len(r["sources"]) == 2 and r["total_ms"] > 0 for r in rag)
    assert all(r["answer_in_context"] == 1.0 for r in recs if r["variant"] == "oracle")
    # no retrieval-only call over HTTP: retrieval is scored from the rag answers' sources
    assert summary["retrieval"]["source"] == "answer sources"
    assert set(summary["retrieval"]) >= {"recall@1", "recall@2", "mrr@10"}
    config = (tmp_path / "run" / "config.json").read_text()
    assert "sekret" not in config and url in config


def test_http_errors_are_clean_messages(tiny_env, tmp_path):
    from ragtune.core.errors import RagtuneError
    from ragtune.service.app import create_app
    from tests.service.helpers import live_server

    settings, squad = tiny_env
    cfg = RunConfig(dataset=str(squad), modes=["hybrid:nope"], index="squad", n_boot=100)
    with live_server(create_app(settings)) as url, pytest.raises(RagtuneError, match="404"):
        run_eval(cfg, HttpTarget(url), tmp_path / "run", progress=False)
