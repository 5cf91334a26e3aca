"""The whole loop on the tiny models, through the CLI and real HTTP (the README's quick start):

index -> experiment with a sweep -> publish the decision -> serve -> documents change ->
stale -> retrain -> re-evaluate -> publish again.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from ragtune.core.config import Settings
from ragtune.service.app import create_app
from tests.service.conftest import make_settings, wait_ready
from tests.service.helpers import live_server
from tests.workflows.conftest import invoke, write_experiment
from tests.workflows.test_sweep import SWEEP


def test_index_experiment_publish_serve_change_stale_retrain_reevaluate(
    tiny_settings: Settings, tmp_path: Path, tiny_squad_file: Path
):
    settings = make_settings(tiny_settings, default_index="tiny-idx", top_k=2)
    config = write_experiment(tmp_path / "exp.toml", tiny_squad_file)
    config.write_text(config.read_text() + SWEEP)

    # 1. index + experiment with a sweep (the experiment indexes its dataset)
    out = invoke(settings, "eval", "experiment", str(config), "--quiet").stdout
    assert "Picked on validation:" in out
    run = settings.runs_dir / "tiny"
    state = json.loads((run / "experiment.json").read_text())["steps"]
    picked = state["selection"]["adapter"]  # the swept adapter that met the test split

    # 2. publish the decision
    out = invoke(settings, "decisions", "publish", "tiny").stdout
    assert out.startswith("decision for index tiny-idx:")
    winner = json.loads((run / "summary.json").read_text())["verdict"]["winner"]

    with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as c:
        wait_ready(c)
        # 3. serve: a question that names no mode gets the measured winner
        body = c.post("/v1/query", json={"question": "Where is the Eiffel Tower?"}).json()
        assert body["decision"] == "tiny"
        kind, _, adapter = winner.partition(":")
        assert body["mode"] == kind and body["adapter"] == (adapter or None)
        decisions = c.get("/v1/decisions").json()["decisions"]
        assert decisions[0]["status"] == "ok" and decisions[0]["winner"] == winner
        assert decisions[0]["picked"]["variant"] == state["selection"]["picked"]

        # 4. documents change: one paragraph rewritten, the index updated
        changed = json.loads(tiny_squad_file.read_text())
        para = changed["data"][0]["paragraphs"][0]
        para["context"] = para["context"] + " It is a famous landmark."
        tiny_squad_file.write_text(json.dumps(changed))
        invoke(settings, "index", str(tiny_squad_file), "--index", "tiny-idx", "-q")

        # 5. stale: the decision and the RAFT adapter say so, with how much changed
        d = c.get("/v1/decisions").json()["decisions"][0]
        assert d["status"] == "stale" and d["changes"]["updated"] == 1
        assert d["changes"]["updated_share"] == 1 / 8
        card = c.get(f"/v1/models/{picked}").json()["ragtune"]
        assert card["index"]["stale"] and card["index"]["changes"]["updated"] == 1
        assert c.get("/readyz").json()["decisions"]["stale"] == 1
        assert c.post("/v1/query", json={"question": "Where?"}).json()["decision"] == "tiny"
        assert "[stale]" in invoke(settings, "adapters", "list").stdout

        # 6. retrain the adapter with the same options on the live index
        out = invoke(settings, "tune", "--retrain", picked, "--quiet").stdout
        assert "1 updated" in out
        card = c.get(f"/v1/models/{picked}").json()["ragtune"]
        assert not card["index"]["stale"]

        # 7. re-evaluate the run's modes with today's adapters and index, and compare
        invoke(settings, "eval", "run", "--rerun", str(run), "--out", str(run.parent / "tiny-2"))
        cmp = invoke(settings, "eval", "compare", str(run), str(run.parent / "tiny-2")).stdout
        assert "different index or adapter versions" in cmp
        assert f"adapter '{picked}'" in cmp and "index 'tiny-idx'" in cmp

        # 8. publish the new measurement: the decision holds again
        invoke(settings, "decisions", "publish", "tiny-2")
        d = c.get("/v1/decisions").json()["decisions"][0]
        assert d["run"] == "tiny-2" and d["status"] == "ok"
        assert c.post("/v1/query", json={"question": "Where?"}).json()["decision"] == "tiny-2"
