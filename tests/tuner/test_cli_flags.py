"""Every boolean flag of `ragtune tune`, on and off, through the real console entry point.

`--print-args` shows what the command resolved (flags over --config over defaults); the tiny
trainings below check that the flags with an effect on the run reach it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ragtune.cli.main import main
from ragtune.cli.tune_cmd import tune_command
from ragtune.core.config import Settings
from ragtune.tuner.args import TuneArgs
from tests.tuner.helpers import build_index, prompt_records, squad_json, write_jsonl

BOOL_FIELDS = [f.name for f in dataclasses.fields(TuneArgs) if f.type in ("bool", bool)]
DEFAULTS = TuneArgs()
QUICK = ["--max-steps", "2", "--batch-size", "2", "--r", "4", "--alpha", "8", "--quiet"]


def _run(settings: Settings, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    base = ["--data-dir", str(settings.data_dir), "--embedder", settings.embedder]
    base += ["--generator", settings.generator, "--threads", "1"]
    with pytest.raises(SystemExit) as e:
        main([*base, *argv])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resolved(
    settings: Settings, capsys: pytest.CaptureFixture, *argv: str, config: Path | None = None
) -> dict[str, Any]:
    cfg = ["--config", str(config)] if config else []
    rc, out, err = _run(
        settings, capsys, "tune", *cfg, "--data", "qa.jsonl", "--name", "a", *argv, "--print-args"
    )
    assert rc == 0, err
    return json.loads(out)


def _toml(path: Path, values: dict[str, Any]) -> Path:
    def lit(v: Any) -> str:
        return json.dumps(v)  # TOML accepts JSON strings, numbers, booleans and lists

    path.write_text("[tune]\n" + "".join(f"{k} = {lit(v)}\n" for k, v in values.items()))
    return path


def _manifest(settings: Settings, capsys: pytest.CaptureFixture, name: str) -> dict[str, Any]:
    rc, out, err = _run(settings, capsys, "adapters", "show", name)
    assert rc == 0, err
    return json.loads(out)


def test_every_boolean_field_has_an_on_and_an_off_flag() -> None:
    assert {"dedup", "forgetting", "raft", "raft_quote", "gradient_checkpointing"} <= set(
        BOOL_FIELDS
    )
    opts = {p.name: p for p in tune_command().params}
    for name in BOOL_FIELDS:
        opt = opts[name]
        assert opt.opts == [_flag(name)], name  # type: ignore[attr-defined]
        assert opt.secondary_opts == ["--no-" + _flag(name)[2:]], name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_boolean_flag_on_and_off(
    name: str, tiny_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    default = getattr(DEFAULTS, name)
    on, off = _flag(name), "--no-" + _flag(name)[2:]
    assert _resolved(tiny_settings, capsys)[name] is default
    assert _resolved(tiny_settings, capsys, on)[name] is True
    assert _resolved(tiny_settings, capsys, off)[name] is False
    # the command line overrides the file either way; the file overrides the default
    for value in (True, False):
        cfg = _toml(tmp_path / f"{name}-{value}.toml", {name: value})
        assert _resolved(tiny_settings, capsys, config=cfg)[name] is value
        flag = off if value else on
        assert _resolved(tiny_settings, capsys, flag, config=cfg)[name] is (not value)


def test_print_args_validates_and_does_not_train(
    tiny_settings: Settings, capsys: pytest.CaptureFixture
) -> None:
    rc, out, err = _run(
        tiny_settings,
        capsys,
        "tune",
        "--data",
        "q.jsonl",
        "--name",
        "x",
        "--lr",
        "2",
        "--print-args",
    )
    assert rc == 2 and err.strip() == "error: --lr: must be in (0, 1]" and out == ""
    args = _resolved(tiny_settings, capsys, "--target-modules", "q_proj,v_proj", "--epochs", "2")
    assert args["target_modules"] == ["q_proj", "v_proj"] and args["epochs"] == 2.0
    assert TuneArgs.from_dict(args) == TuneArgs.from_dict(args).validate()
    assert not tiny_settings.adapters_dir.exists()


def test_dedup_forgetting_and_checkpointing_reach_the_run(
    tiny_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_jsonl(tmp_path / "dup.jsonl", prompt_records(8) * 2)  # each example twice
    rc, out, err = _run(
        tiny_settings,
        capsys,
        "tune",
        "--data",
        str(data),
        "--name",
        "off",
        *QUICK,
        "--no-dedup",
        "--no-forgetting",
        "--gradient-checkpointing",
    )
    assert rc == 0, err
    assert "perplexity" not in out
    m = _manifest(tiny_settings, capsys, "off")
    counts = m["data"]["counts"]
    assert "duplicates" not in counts and counts["train"] + counts["val"] == 16
    assert "perplexity" not in m["metrics"]
    assert m["hyperparameters"]["gradient_checkpointing"] is True

    # the file says the opposite of the defaults; the command line turns them back
    cfg = _toml(
        tmp_path / "t.toml", {"dedup": False, "forgetting": False, "gradient_checkpointing": True}
    )
    rc, out, err = _run(
        tiny_settings,
        capsys,
        "tune",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--name",
        "on",
        *QUICK,
        "--dedup",
        "--forgetting",
        "--no-gradient-checkpointing",
    )
    assert rc == 0, err
    assert "general-text perplexity" in out
    m = _manifest(tiny_settings, capsys, "on")
    counts = m["data"]["counts"]
    assert counts["duplicates"] == 8 and counts["train"] + counts["val"] == 8
    assert m["metrics"]["perplexity"]["base"] > 0
    assert m["hyperparameters"]["gradient_checkpointing"] is False


def test_raft_and_raft_quote_reach_the_run(
    tiny_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sq = squad_json(tmp_path / "squad.json")
    build_index(tiny_settings, "docs", squad_path=sq)
    common = ["tune", "--data", str(sq), *QUICK, "--no-forgetting", "--raft-k", "2"]

    rc, _, err = _run(
        tiny_settings, capsys, *common, "--name", "q", "--raft", "--index", "docs", "--raft-quote"
    )
    assert rc == 0, err
    m = _manifest(tiny_settings, capsys, "q")
    assert m["raft"]["index"] == "docs" and m["raft"]["quote"] is True
    assert m["prompt"]["example"]["completion"].startswith('"')
    assert "Answer: " in m["prompt"]["example"]["completion"]

    cfg = _toml(tmp_path / "raft.toml", {"raft": True, "index": "docs", "raft_quote": True})
    rc, _, err = _run(
        tiny_settings, capsys, *common, "--config", str(cfg), "--name", "nq", "--no-raft-quote"
    )
    assert rc == 0, err
    m = _manifest(tiny_settings, capsys, "nq")
    assert m["raft"]["quote"] is False
    assert "Answer: " not in m["prompt"]["example"]["completion"]
    assert "Passages:" in m["prompt"]["example"]["prompt"]

    cfg = _toml(tmp_path / "raft-on.toml", {"raft": True, "raft_quote": True})
    rc, _, err = _run(
        tiny_settings, capsys, *common, "--config", str(cfg), "--name", "closed", "--no-raft"
    )
    assert rc == 0, err
    m = _manifest(tiny_settings, capsys, "closed")
    assert m.get("raft") is None and "Passages:" not in m["prompt"]["example"]["prompt"]


def test_overwrite_on_and_off(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ["tune", "--data", str(qa_file), "--name", "o", *QUICK, "--no-forgetting"]
    rc, _, err = _run(tiny_settings, capsys, *common)
    assert rc == 0, err
    first = _manifest(tiny_settings, capsys, "o")["created_at"]
    rc, _, err = _run(tiny_settings, capsys, *common, "--no-overwrite")
    assert rc == 2 and "adapter 'o' already exists" in err
    cfg = _toml(tmp_path / "ow.toml", {"overwrite": True})
    rc, _, err = _run(tiny_settings, capsys, *common, "--config", str(cfg), "--no-overwrite")
    assert rc == 2 and "adapter 'o' already exists" in err
    rc, _, err = _run(tiny_settings, capsys, *common, "--overwrite", "--seed", "9")
    assert rc == 0, err
    m = _manifest(tiny_settings, capsys, "o")
    assert m["hyperparameters"]["seed"] == 9 and m["created_at"] >= first
