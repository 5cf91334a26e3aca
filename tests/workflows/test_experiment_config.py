"""The experiment TOML: the shipped configs are valid; mistakes are errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.workflows.experiment_config import (
    eval_modes,
    eval_run_config,
    experiment_settings,
    load_experiment,
)
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize(
    "name", ["experiment-demo.toml", "experiment-large.toml", "experiment-sweep.toml"]
)
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
    eval_run_config(exp, Path("test.json")).validate()
    if exp.sweep is not None:  # the sweep's variants are valid tune options and settings
        assert exp.sweep.adapter == "raft" and 2 <= len(exp.sweep.variants) <= 4
        for v in exp.sweep.variants:
            names = {"raft": f"{exp.name}-raft-{v.key}"}
            eval_run_config(exp, Path("test.json"), names, v.retrieval).validate()


def test_paths_resolve_against_the_file_and_adapter_keys_become_names(tiny_experiment: Path):
    exp = load_experiment(tiny_experiment)
    assert exp.name == "tiny" and exp.index == "tiny-idx" and exp.dataset.is_absolute()
    assert exp.split.test_fraction == 0.5 and exp.split.seed == 1
    assert eval_modes(exp) == ["base", "rag", "finetune:tiny-closed", "hybrid:tiny-raft", "oracle"]
    config = eval_run_config(exp, tiny_experiment.parent / "test.json")
    assert config.split == "all" and config.index == "tiny-idx" and config.n_boot == 200
    assert config.max_new_tokens == 3 and config.batch_size == 4 and config.limit is None


def test_settings_precedence_experiment_then_flags(tiny_experiment: Path, tmp_path: Path):
    exp = load_experiment(tiny_experiment)
    flags = {"data_dir": tmp_path / "d", "top_k": None}
    assert experiment_settings(exp, None, flags).top_k == 2  # [settings] top_k = 2
    assert experiment_settings(exp, None, {**flags, "top_k": 5}).top_k == 5  # a flag wins


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nmae = "x"\n[data]\ndataset = "d.json"\n', r"\[top level\]: unknown key\(s\) nmae"),
        ('[data]\ndataset = "d.json"\ntest_fracton = 0.3\n', r"\[data\]: unknown key"),
        ("[data]\nseed = 1\n", "'dataset' is required"),
        ('[data]\ndataset = "d.json"\n[adapters.a]\nquestion = 3\n', r"\[adapters.a\]: unknown"),
        ('[data]\ndataset = "d.json"\n[eval]\nmode = ["rag"]\n', r"\[eval\]: unknown key"),
        ('name = "../x"\n[data]\ndataset = "d.json"\n', "invalid experiment name"),
        ("[data\n", "not valid TOML"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_experiment(path)


def test_eval_mode_naming_an_unknown_adapter_is_an_error(tmp_path: Path):
    path = tmp_path / "e.toml"
    path.write_text('[data]\ndataset = "d.json"\n[eval]\nmodes = ["hybrid:nope"]\n')
    with pytest.raises(InvalidInput, match=r"no \[adapters.nope\]"):
        eval_modes(load_experiment(path))
