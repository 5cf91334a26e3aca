"""`ragtune demo`: the shipped config end to end (tiny models: seconds, not minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.workflows.demo import DEMO_CONFIG, ServeHint, load_demo, serve_hint
from ragtune.workflows.experiment import ExperimentOutcome
from ragtune.workflows.experiment_state import ExperimentState
from tests.workflows.conftest import invoke


def test_demo_runs_the_shipped_config(tiny_settings):
    res = invoke(tiny_settings, "demo", "-q")
    assert "Winner on token F1" in res.output and "Serve the winner" in res.output
    assert "ragtune decisions publish demo" in res.output
    folder = tiny_settings.data_dir / "runs" / "demo"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_questions"] == 60
    assert set(summary["variants"]) == {
        "base", "rag", "finetune:demo-closed", "hybrid:demo-raft", "oracle", "oracle:demo-raft",
    }  # fmt: skip
    assert "Where hybrid:demo-raft loses F1" in summary["verdict"]["text"]
    state = json.loads((folder / "experiment.json").read_text())
    assert len(state["steps"]["split"]["test_articles"]) == 3
    mode, _, adapter = summary["verdict"]["winner"].partition(":")
    assert f'"mode": "{mode}", "index": "demo-squad"' in res.output
    assert (f'"adapter": "{adapter}"' in res.output) == bool(adapter)


def test_the_shipped_demo_config_is_package_data():
    assert DEMO_CONFIG.is_file() and DEMO_CONFIG.parent.name == "examples"
    assert load_demo().name == "demo"


def test_missing_demo_config_is_a_clean_error(tmp_path: Path, capsys):
    with pytest.raises(InvalidInput, match="experiment config not found"):
        load_demo(tmp_path / "nope.toml")
    from ragtune.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--experiment", str(tmp_path / "nope.toml")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: experiment config not found") and "Traceback" not in err


def _outcome(winner: str | None) -> ExperimentOutcome:
    return ExperimentOutcome(
        load_demo(), Path("run"), ExperimentState(), {"verdict": {"winner": winner, "text": "t"}}
    )


@pytest.mark.parametrize(
    ("winner", "hint"),
    [
        ("hybrid:demo-raft", ServeHint("hybrid", "demo-squad", "demo-raft")),
        ("rag", ServeHint("rag", "demo-squad", None)),
        (None, ServeHint("rag", "demo-squad", None)),  # nothing scored: RAG is the default
    ],
)
def test_serve_hint_names_the_winner(winner, hint):
    assert serve_hint(_outcome(winner)) == hint
    body = hint.curl().split("-d ", 1)[1].strip("'")
    assert json.loads(body.replace('"..."', '"q"'))["mode"] == hint.mode
