"""The experiment's sweep on the tiny models: variants trained on train articles only, picked
on held-out train articles, and only the pick evaluated on the test split; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput
from ragtune.eval.runner import read_results
from ragtune.workflows.experiment import ExperimentOutcome, run_experiment
from ragtune.workflows.experiment_config import load_experiment
from ragtune.workflows.experiment_state import STATE_FILE, ExperimentState
from ragtune.workflows.sweep_config import expand_grid
from tests.workflows.conftest import write_experiment

SWEEP = (
    '[sweep]\nadapter = "raft"\nvalidation_fraction = 0.5\n'
    "[sweep.grid]\np_oracle = [0.5, 1.0]\ntop_k = [1, 2]\n"
)


def _sweep_experiment(path: Path, squad: Path, sweep: str = SWEEP) -> Path:
    write_experiment(path, squad)
    path.write_text(path.read_text() + sweep)
    return path


def _run(settings: Settings, config: Path, said: list[str] | None = None) -> ExperimentOutcome:
    exp = load_experiment(config)
    settings = settings.model_copy(update=exp.settings)
    say = said.append if said is not None else (lambda _m: None)
    return run_experiment(exp, settings, progress=False, say=say)


@pytest.fixture
def sweep_experiment(tmp_path: Path, tiny_squad_file: Path) -> Path:
    return _sweep_experiment(tmp_path / "sweep.toml", tiny_squad_file)


def _titles(path: Path) -> set[str]:
    return {a["title"] for a in json.loads(path.read_text())["data"] if a["paragraphs"]}


def _qids(path: Path) -> set[str]:
    raw = json.loads(path.read_text())
    return {q["id"] for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]}


def test_variants_are_picked_on_train_articles_and_only_the_pick_meets_the_test_split(
    tiny_settings, sweep_experiment
):
    out = _run(tiny_settings, sweep_experiment)
    s, folder = out.state, out.folder
    assert s.split is not None and s.validation_split is not None and s.selection is not None
    # the validation articles are train articles, never test ones, and recorded
    val = set(s.validation_split.validation_articles)
    fit = set(s.validation_split.fit_articles)
    assert val and fit and val | fit == set(s.split.train_articles) and not val & fit
    assert not val & set(s.split.test_articles)
    assert _titles(folder / "validation.json") == val
    assert _titles(folder / "train-fit.json") == fit
    # the swept adapter trained on fit articles only (its data has no validation question)
    assert not _qids(folder / "train-raft.json") & _qids(folder / "validation.json")
    # four variants, each trained and scored on the validation questions only
    assert list(s.sweep) == ["v1", "v2", "v3", "v4"]
    val_qids = _qids(folder / "validation.json")
    for key, step in s.sweep.items():
        assert step.validation is not None and step.validation["n"] == len(val_qids)
        recs = read_results(folder / "sweep" / key / "results.jsonl")
        assert {r["qid"] for r in recs} == val_qids
        assert step.adapter.tokens and step.adapter.tokens > 0
    # the pick: the best validation F1 (ties: the fewest training tokens)
    f1 = {k: st.validation["f1"]["mean"] for k, st in s.sweep.items()}  # type: ignore[index]
    best = max(f1.values())
    tied = [k for k in f1 if f1[k] >= best - 1e-12]
    cheapest = min(tied, key=lambda k: (s.sweep[k].adapter.tokens, list(f1).index(k)))
    assert s.selection.picked == cheapest
    picked = s.sweep[cheapest]
    assert s.adapters["raft"] == picked.adapter
    # the test eval saw the picked adapter and no other variant, with its retrieval settings
    conf = json.loads((folder / "config.json").read_text())
    assert f"hybrid:{picked.adapter.name}" in conf["modes"]
    others = {st.adapter.name for st in s.sweep.values()} - {picked.adapter.name}
    test_variants = {r["variant"] for r in read_results(folder / "results.jsonl")}
    assert not any(name in v for v in test_variants for name in others)
    assert conf["top_k"] == picked.retrieval["top_k"]
    assert s.selection.tested == [cheapest]
    # the time summary counts every training once: the pick's under the sweep
    steps = dict(s.step_seconds())
    assert "raft" not in steps and steps[f"{cheapest} train"] == picked.adapter.seconds > 0
    assert sum(steps.values()) == pytest.approx(
        s.index.seconds  # type: ignore[union-attr]
        + s.adapters["closed"].seconds
        + sum(st.adapter.seconds + st.validation["seconds"] for st in s.sweep.values())  # type: ignore[index]
        + s.eval.seconds  # type: ignore[union-attr]
    )
    # the report shows the sweep table and why
    sel = json.loads((folder / "selection.json").read_text())
    assert sel["picked"] == cheapest and sel["split"]["articles"] == sorted(val)
    md = (folder / "report.md").read_text()
    assert "## Model selection (validation split" in md
    assert f"**Picked {cheapest}**" in md and "p_oracle=0.5 top_k=1" in md
    html = (folder / "report.html").read_text()
    assert 'id="sweep"' in html and sel["reason"].split(";")[0][:30] in html
    assert out.selection_text and cheapest in out.selection_text


def test_a_rerun_reuses_every_variant_and_a_changed_grid_trains_only_the_new_one(
    tiny_settings, sweep_experiment, tiny_squad_file
):
    first = _run(tiny_settings, sweep_experiment)
    said: list[str] = []
    second = _run(tiny_settings, sweep_experiment, said)
    assert sum("already trained for this run, reused" in m for m in said) == 5  # 4 + closed
    assert not any(m.startswith("validation v") for m in said)
    assert not any("evaluating afresh" in m for m in said)
    assert second.state.sweep == first.state.sweep
    # one more value: only the two new variants are trained and validated
    grid = SWEEP.replace("p_oracle = [0.5, 1.0]", "p_oracle = [0.5, 1.0, 0.8]")
    _sweep_experiment(sweep_experiment, tiny_squad_file, grid)
    said = []
    third = _run(tiny_settings, sweep_experiment, said)
    trained = [m for m in said if m.startswith("adapter") and "reused" not in m]
    assert len(trained) == 2 and all("p_oracle=0.8" in m for m in trained)
    validated = {m.split()[1].rstrip(":") for m in said if m.startswith("validation v")}
    assert validated == {"v5", "v6"}
    assert sorted(third.state.sweep) == ["v1", "v2", "v3", "v4", "v5", "v6"]


def test_variants_with_the_same_training_share_one_adapter(
    tiny_settings, tmp_path, tiny_squad_file
):
    # raft_k is fixed, so top_k changes only how the adapter is served and validated
    sweep = SWEEP.replace("p_oracle = [0.5, 1.0]", "raft_k = [1]")
    config = _sweep_experiment(tmp_path / "shared.toml", tiny_squad_file, sweep)
    said: list[str] = []
    out = _run(tiny_settings, config, said)
    v1, v2 = out.state.sweep["v1"], out.state.sweep["v2"]
    assert v1.adapter == v2.adapter and v1.retrieval != v2.retrieval
    assert any("the same training as v1" in m for m in said)
    assert [s for s, _ in out.state.step_seconds()].count("v2 train") == 1
    assert dict(out.state.step_seconds())["v2 train"] == 0.0  # counted once, under v1


def test_state_round_trips_with_the_sweep(tiny_settings, sweep_experiment):
    out = _run(tiny_settings, sweep_experiment)
    path = out.folder / STATE_FILE
    again = ExperimentState.load(path)
    assert again == out.state
    assert again.to_dict() == json.loads(path.read_text())


def test_a_config_without_sweep_trains_as_before(tiny_settings, tiny_experiment):
    out = _run(tiny_settings, tiny_experiment)
    assert out.state.sweep == {} and out.state.selection is None
    assert not (out.folder / "selection.json").exists()
    assert "Model selection" not in (out.folder / "report.md").read_text()
    assert (
        "picked" not in json.loads((out.folder / STATE_FILE).read_text())["steps"]["eval"]["inputs"]
    )


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ('[sweep]\nadapter = "nope"\n[sweep.grid]\nr = [4]\n', "must name one of the"),
        ('[sweep]\nadapter = "raft"\n[sweep.grid]\nlearning = [1]\n', "learning: not a tune"),
        ('[sweep]\nadapter = "raft"\n[sweep.grid]\nname = ["x"]\n', "not something a sweep"),
        ('[sweep]\nadapter = "raft"\n', "at least one option"),
        ('[sweep]\nadapter = "raft"\nbogus = 1\n[sweep.grid]\nr = [4]\n', "unknown key(s) bogus"),
        ('[sweep]\nadapter = "raft"\n[sweep.grid]\np_oracle = [2.0]\n', "variant v1"),
        ('[sweep]\nadapter = "raft"\n[sweep.grid]\ntop_k = [0]\n', "top_k must be"),
        (
            '[sweep]\nadapter = "raft"\nvalidation_fraction = 1.5\n[sweep.grid]\nr = [4]\n',
            "validation_fraction",
        ),
        (
            '[sweep]\nadapter = "raft"\n[sweep.grid]\nr = [1,2,3,4,5]\nalpha = [1,2,3,4]\n',
            "makes 20 variants",
        ),
    ],
)
def test_bad_sweep_sections_are_errors_naming_the_problem(
    tmp_path, tiny_squad_file, sweep, message
):
    config = _sweep_experiment(tmp_path / "bad.toml", tiny_squad_file, sweep)
    with pytest.raises(InvalidInput, match="sweep") as e:
        load_experiment(config)
    assert message in e.value.message


def test_the_swept_adapter_must_be_evaluated(tmp_path, tiny_squad_file):
    config = _sweep_experiment(tmp_path / "x.toml", tiny_squad_file)
    config.write_text(config.read_text().replace('"hybrid:raft", ', ""))
    with pytest.raises(InvalidInput, match="'raft' is not evaluated"):
        load_experiment(config)


def test_grid_order_names_the_variants():
    vs = expand_grid({"p_oracle": [0.5, 1.0], "top_k": [2, 3]})
    assert [(v.key, v.label) for v in vs] == [
        ("v1", "p_oracle=0.5 top_k=2"),
        ("v2", "p_oracle=0.5 top_k=3"),
        ("v3", "p_oracle=1.0 top_k=2"),
        ("v4", "p_oracle=1.0 top_k=3"),
    ]
    assert vs[0].tune == {"p_oracle": 0.5} and vs[0].retrieval == {"top_k": 2}
