"""The experiment workflow on the tiny models: typed outcome, resumable steps, stale results.

Each run trains two real LoRA adapters (2 steps each) and evaluates 5 modes: seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput
from ragtune.eval.runner import read_results
from ragtune.workflows.experiment import (
    ExperimentOutcome,
    count_questions,
    run_experiment,
    sample_questions,
)
from ragtune.workflows.experiment_config import load_experiment
from ragtune.workflows.experiment_state import STATE_FILE, ExperimentState
from tests.eval.conftest import tiny_squad
from tests.workflows.conftest import TINY_TUNE, write_experiment


def _run(settings: Settings, config: Path, said: list[str] | None = None) -> ExperimentOutcome:
    exp = load_experiment(config)
    settings = settings.model_copy(update=exp.settings)
    say = said.append if said is not None else (lambda _m: None)
    return run_experiment(exp, settings, progress=False, say=say)


def test_outcome_is_typed_and_matches_the_run_folder(tiny_settings, tiny_experiment):
    out = _run(tiny_settings, tiny_experiment)
    assert out.folder == tiny_settings.runs_dir / "tiny"
    assert out.summary == json.loads((out.folder / "summary.json").read_text())
    assert out.state == ExperimentState.load(out.folder / STATE_FILE)
    s = out.state
    assert s.split is not None and s.index is not None and s.eval is not None
    assert s.split.test_questions == 4 and s.eval.n == 4 and s.index.chunks == 8
    assert set(s.adapters) == {"closed", "raft"}
    assert s.adapters["raft"].key["index_version"] == s.index.version
    assert s.adapters["closed"].key["index_version"] is None  # closed-book: no index
    assert s.eval.inputs.adapters == {k: a.version for k, a in s.adapters.items()}
    assert [step for step, _ in s.step_seconds()] == ["index", "closed", "raft", "eval"]
    assert out.winner in out.summary["variants"]
    assert out.verdict_text == out.summary["verdict"]["text"]
    assert {"experiment.toml", "train.json", "test.json", "train-closed.json"} <= {
        p.name for p in out.folder.iterdir()
    }


def test_changed_adapter_is_retrained_and_the_eval_starts_over(
    tiny_settings, tiny_experiment, tiny_squad_file
):
    first = _run(tiny_settings, tiny_experiment)
    n_records = len(read_results(first.folder / "results.jsonl"))
    closed_tune = TINY_TUNE.replace("max_steps = 2", "max_steps = 3")
    write_experiment(tiny_experiment, tiny_squad_file, closed_tune=closed_tune)
    said: list[str] = []
    second = _run(tiny_settings, tiny_experiment, said)
    assert "adapter 'tiny-raft': already trained for this run, reused" in said
    assert "adapter 'tiny-closed': closed-book QA on 4 questions" in said
    assert any("evaluating afresh" in m for m in said)
    assert second.state.adapters["closed"].version != first.state.adapters["closed"].version
    assert second.state.adapters["raft"] == first.state.adapters["raft"]
    recs = read_results(second.folder / "results.jsonl")
    assert len(recs) == n_records  # the old answers were dropped, not mixed in
    assert max(Counter((r["variant"], r["qid"]) for r in recs).values()) == 1
    conf = json.loads((second.folder / "config.json").read_text())
    assert conf["versions"]["adapters"]["tiny-closed"] == second.state.adapters["closed"].version


def test_fresh_run_redoes_every_step(tiny_settings, tiny_experiment):
    first = _run(tiny_settings, tiny_experiment)
    (first.folder / "leftover.txt").write_text("x")
    exp = load_experiment(tiny_experiment)
    said: list[str] = []
    run_experiment(
        exp,
        tiny_settings.model_copy(update=exp.settings),
        fresh=True,
        progress=False,
        say=said.append,
    )
    assert not (first.folder / "leftover.txt").exists()
    assert not any("reused" in m for m in said)


def test_unreadable_state_is_a_clean_error(tiny_settings, tiny_experiment):
    folder = tiny_settings.runs_dir / "tiny"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{not json")
    with pytest.raises(InvalidInput, match=r"experiment\.json is not a readable experiment state"):
        _run(tiny_settings, tiny_experiment)


def test_state_written_before_the_typed_records_still_loads(tmp_path):
    """A run folder from the dict-based version (same layout) resumes: the file round-trips."""
    raw = {
        "steps": {
            "split": {
                "dataset": "/d/squad.json", "dataset_sha256": "ab", "seed": 1,
                "test_fraction": 0.5, "train_articles": ["A"], "test_articles": ["B"],
                "train_questions": 5, "test_questions": 4,
            },
            "index": {"name": "i", "version": "v1", "chunks": 8, "seconds": 0.5},
            "adapter:closed": {
                "name": "x-closed", "key": {"args": {"r": 4}, "index_version": None},
                "created_at": "2026-01-01T00:00:00+00:00", "seconds": 1.5,
                "tokens_per_s": 100.0, "val_loss": None,
            },
            "eval": {
                "inputs": {"index_version": "v1", "adapters": {"closed": "2026-01-01T00:00:00+00:00"}},
                "seconds": 2.0, "n": 4,
            },
        },
        "total_seconds_last_run": 4.1,
    }  # fmt: skip
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps(raw))
    state = ExperimentState.load(path)
    assert state.adapters["closed"].key == {"args": {"r": 4}, "index_version": None}
    assert state.step_seconds() == [("index", 0.5), ("closed", 1.5), ("eval", 2.0)]
    # the legacy "created_at" is the adapter's version (what AdapterInfo.version gives for
    # an adapter of that time), so the adapter is still reused; it is saved as "version"
    assert state.adapters["closed"].version == "2026-01-01T00:00:00+00:00"
    expected = json.loads(json.dumps(raw))
    step = expected["steps"]["adapter:closed"]
    step["version"] = step.pop("created_at")
    assert state.to_dict() == expected
    state.save(path)
    assert json.loads(path.read_text()) == expected


def test_sample_questions_is_seeded_and_keeps_every_paragraph():
    raw = tiny_squad()
    total = count_questions(raw)
    a, b = sample_questions(raw, 4, seed=7), sample_questions(raw, 4, seed=7)
    assert a == b and count_questions(a) == 4
    assert count_questions(sample_questions(raw, 4, seed=8)) == 4
    # every article and paragraph stays (document ids are positions), only questions go
    assert [len(x["paragraphs"]) for x in a["data"]] == [len(x["paragraphs"]) for x in raw["data"]]
    assert a["canary"] == raw["canary"]
    assert count_questions(sample_questions(raw, None, 0)) == total
    assert count_questions(sample_questions(raw, total + 5, 0)) == total
