"""TuneArgs: TOML loading, flag precedence, validation that names the flag."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.tuner.args import TuneArgs, field_docs


def test_every_field_has_a_docstring() -> None:
    docs = field_docs()
    assert {f.name for f in fields(TuneArgs)} == set(docs)
    assert all(len(d) > 5 for d in docs.values())


def test_from_toml_with_tune_table_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "tune.toml"
    cfg.write_text(
        '[tune]\ndata = ["a.jsonl:2", "b.jsonl"]\nname = "x"\nlr = 1e-3\n'
        'target-modules = "q_proj, v_proj"\nepochs = 2\n'
    )
    args = TuneArgs.from_toml(cfg, lr=5e-4, name=None)
    assert args.data == ["a.jsonl:2", "b.jsonl"] and args.name == "x"
    assert args.lr == 5e-4 and args.epochs == 2
    assert args.target_modules == ["q_proj", "v_proj"]
    args.validate()


def test_unknown_option_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('data = "a.jsonl"\nname = "x"\nlearning_rate = 1\n')
    with pytest.raises(InvalidInput, match=r"unknown tune option.*learning_rate"):
        TuneArgs.from_toml(cfg)
    cfg.write_text("data = [")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        TuneArgs.from_toml(cfg)
    with pytest.raises(InvalidInput, match="file not found"):
        TuneArgs.from_toml(tmp_path / "none.toml")


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"lr": 0}, "--lr"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"batch_size": 0}, "--batch-size"),
        ({"method": "qlora"}, "--method"),
        ({"p_oracle": 1.5}, "--p-oracle"),
        ({"max_steps": 0}, "--max-steps"),
        ({"schedule": "step"}, "--schedule"),
        ({"data": []}, "--data"),
        ({"patience": 2, "val_fraction": 0.0}, "--patience"),
        ({"index": "docs"}, "--index"),
        ({"method": "full", "init_from": "a"}, "--init-from"),
    ],
)
def test_validation_names_the_flag(change: dict, flag: str) -> None:
    args = TuneArgs(data=["a.jsonl"], name="ok")
    for k, v in change.items():
        setattr(args, k, v)
    with pytest.raises(InvalidInput, match=flag):
        args.validate()


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 65])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        TuneArgs(data=["a.jsonl"], name=name).validate()
