"""`ragtune eval run | compare | experiment` and `ragtune demo`, through the real CLI with the
tiny models (the experiment trains real LoRA adapters through the tuner)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragtune.cli.experiment import eval_modes, load_experiment
from ragtune.cli.main import cli, main
from ragtune.eval.runner import RunConfig, read_results

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _global(settings) -> list[str]:
    return [
        "--data-dir", str(settings.data_dir),
        "--embedder", settings.embedder,
        "--generator", settings.generator,
        "--threads", "1",
    ]  # fmt: skip


def _invoke(args: list[str]):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_eval_run_and_compare(tiny_env, tmp_path):
    settings, squad = tiny_env
    runs = []
    for limit in (4, 6):
        out = tmp_path / f"run{limit}"
        res = _invoke(
            [
                *_global(settings), "eval", "run", "--dataset", str(squad), "--index", "squad",
                "--modes", "base,rag,hybrid", "--adapter", "qa", "--limit", str(limit),
                "--max-new-tokens", "3", "--batch-size", "2", "--n-boot", "200",
                "--out", str(out), "-q",
            ]
        )  # fmt: skip
        assert "Winner on token F1" in res.output and "report:" in res.output
        assert json.loads((out / "summary.json").read_text())["n_questions"] == limit
        runs.append(out)
    res = _invoke(["eval", "compare", str(runs[0]), str(runs[1])])
    assert "hybrid:qa" in res.output and "winner on F1" in res.output


def test_eval_run_from_config_file(tiny_env, tmp_path):
    settings, squad = tiny_env
    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'[eval]\ndataset = "{squad.name}"\nmodes = "base,oracle"\nsplit = "test"\n'
        'test_fraction = 0.5\nmax_new_tokens = 2\nn_boot = 100\nout = "runs/cfg"\n'
    )
    _invoke([*_global(settings), "eval", "run", "--config", str(cfg), "--limit", "2", "-q"])
    out = tmp_path / "runs" / "cfg"
    conf = json.loads((out / "config.json").read_text())
    assert conf["dataset"] == str(squad) and conf["limit"] == 2 and conf["split"] == "test"


def test_eval_run_help_shows_the_run_config_defaults():
    res = _invoke(["eval", "run", "--help"])
    text = " ".join(res.output.split())
    d = RunConfig(dataset="")
    assert f"(default: {','.join(d.modes)})" in text
    for flag_help, value in [
        ("Which side of the seeded by-article split", d.split),
        ("Share of groups held out", d.test_fraction),
        ("Seed of the split", d.split_seed),
        ("Seed of the --limit sample", d.sample_seed),
        ("Questions generated together", d.batch_size),
        ("Bootstrap resamples", d.n_boot),
    ]:
        assert f"{flag_help} (default: {value})." in text


def test_eval_config_of_the_wrong_type_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('dataset = "qa.json"\nbatch_size = "eight"\n')
    with pytest.raises(SystemExit) as e:
        main(["eval", "run", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "Traceback" not in err
    assert "error: eval setting batch_size: Input should be a valid integer" in err


def _tiny_experiment(tmp_path: Path, squad: Path) -> Path:
    tune = (
        "max_steps = 2\nbatch_size = 2\nval_fraction = 0.0\nforgetting = false\nr = 4\nalpha = 8\n"
    )
    path = tmp_path / "exp.toml"
    path.write_text(
        'name = "tiny"\n[settings]\ntop_k = 2\n'
        f'[data]\ndataset = "{squad}"\ntest_fraction = 0.5\nseed = 1\n'
        '[index]\nname = "tiny-idx"\n'
        f"[adapters.closed]\nquestions = 4\n[adapters.closed.tune]\n{tune}"
        f"[adapters.raft]\n[adapters.raft.tune]\nraft = true\n{tune}"
        '[eval]\nmodes = ["base", "rag", "finetune:closed", "hybrid:raft", "oracle"]\n'
        "max_new_tokens = 3\nbatch_size = 4\nn_boot = 200\n"
    )
    return path


def test_experiment_end_to_end_and_resume(tiny_settings, tiny_squad_file, tmp_path):
    exp = _tiny_experiment(tmp_path, tiny_squad_file)
    res = _invoke([*_global(tiny_settings), "eval", "experiment", str(exp), "-q"])
    assert "Winner on token F1" in res.output and "time:" in res.output
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
    assert (conf["batch_size"], conf["n_boot"], conf["max_new_tokens"]) == (4, 200, 3)
    assert (conf["retrieve_k"], conf["recall_ks"]) == (defaults.retrieve_k, defaults.recall_ks)
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["variants"]) == {
        "base", "rag", "finetune:tiny-closed", "hybrid:tiny-raft", "oracle",
    }  # fmt: skip
    assert (tiny_settings.data_dir / "adapters" / "tiny-raft" / "manifest.json").is_file()
    # a rerun reuses the adapters and the results
    n = len(read_results(folder / "results.jsonl"))
    res = _invoke([*_global(tiny_settings), "eval", "experiment", str(exp), "-q"])
    assert res.output.count("reused") == 2
    recs = read_results(folder / "results.jsonl")
    assert len(recs) == n and max(Counter((r["variant"], r["qid"]) for r in recs).values()) == 1


@pytest.mark.parametrize("name", ["experiment-demo.toml", "experiment-large.toml"])
def test_shipped_experiments_are_valid(name):
    from ragtune.eval.datasets import load_items
    from ragtune.tuner.args import TuneArgs

    exp = load_experiment(EXAMPLES / name)
    items = load_items(exp.dataset)
    assert exp.dataset.is_file() and len(items) > 500
    assert all(
        m.split(":")[0] in ("base", "rag", "finetune", "hybrid", "oracle") for m in eval_modes(exp)
    )
    assert {"closed", "raft"} <= set(exp.adapters) and exp.adapters["raft"].raft
    for spec in exp.adapters.values():
        TuneArgs.from_dict({**spec.tune, "data": ["x.json"], "name": "x", "format": "squad"})
    raw = json.loads(exp.dataset.read_text())
    assert raw["canary"].startswith("BENCHMARK DATA SHOULD NEVER APPEAR")


def test_demo_runs_the_shipped_config(tiny_settings):
    """`ragtune demo` end to end on the shipped demo config (tiny models: seconds, not minutes)."""
    res = _invoke([*_global(tiny_settings), "demo", "-q"])
    assert "Winner on token F1" in res.output and "Serve the winner" in res.output
    folder = tiny_settings.data_dir / "runs" / "demo"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_questions"] == 60
    assert set(summary["variants"]) == {
        "base", "rag", "finetune:demo-closed", "hybrid:demo-raft", "oracle",
    }  # fmt: skip
    state = json.loads((folder / "experiment.json").read_text())
    assert len(state["steps"]["split"]["test_articles"]) == 3
