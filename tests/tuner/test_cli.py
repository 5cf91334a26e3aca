"""`ragtune tune` and `ragtune adapters ...` through the real console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli.main import main
from ragtune.core.config import Settings


def _run(settings: Settings, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    base = [
        "--data-dir",
        str(settings.data_dir),
        "--embedder",
        settings.embedder,
        "--generator",
        settings.generator,
        "--threads",
        "1",
    ]
    with pytest.raises(SystemExit) as e:
        main([*base, *argv])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_tune_list_show_export_rm(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "tune.toml"
    cfg.write_text(
        f'[tune]\ndata = ["{qa_file}"]\nbatch-size = 2\nr = 4\nalpha = 8\n'
        "max_steps = 2\nlr = 0.01\n"
    )
    rc, out, err = _run(
        tiny_settings,
        capsys,
        "tune",
        "--config",
        str(cfg),
        "--name",
        "cli1",
        "--target-modules",
        "q_proj,v_proj",
        "--seed",
        "5",
    )
    assert rc == 0, err
    assert "adapter cli1: lora on generator" in out and "perplexity" in out
    assert "qa.jsonl: 16 examples from 16 records (prompt)" in err

    rc, out, _ = _run(tiny_settings, capsys, "adapters", "list")
    assert rc == 0 and out.startswith("cli1 ")
    rc, out, _ = _run(tiny_settings, capsys, "adapters", "list", "--json")
    assert json.loads(out)[0]["name"] == "cli1"
    rc, out, _ = _run(tiny_settings, capsys, "adapters", "show", "cli1")
    m = json.loads(out)
    assert m["hyperparameters"]["target_modules"] == ["q_proj", "v_proj"]
    assert m["hyperparameters"]["seed"] == 5 and m["hyperparameters"]["max_steps"] == 2

    rc, out, err = _run(
        tiny_settings,
        capsys,
        "adapters",
        "export",
        "cli1",
        "--merged",
        "--out",
        str(tmp_path / "m"),
    )
    assert rc == 0, err
    assert (tmp_path / "m" / "config.json").is_file()

    rc, out, _ = _run(tiny_settings, capsys, "adapters", "rm", "cli1")
    assert rc == 0 and "removed" in out
    rc, out, err = _run(tiny_settings, capsys, "adapters", "show", "cli1")
    assert rc == 2 and err.strip() == "error: adapter 'cli1' not found in the registry"


def test_cli_errors_are_one_clean_line(
    tiny_settings: Settings, qa_file: Path, capsys: pytest.CaptureFixture
) -> None:
    rc, _, err = _run(tiny_settings, capsys, "tune", "--data", str(qa_file), "--name", "../x")
    assert rc == 2 and err.startswith("error: invalid adapter name '../x'")
    assert "Traceback" not in err
    rc, _, err = _run(
        tiny_settings, capsys, "tune", "--data", str(qa_file), "--name", "ok", "--lr", "-1"
    )
    assert rc == 2 and err.strip() == "error: --lr: must be in (0, 1]"
    rc, _, err = _run(
        tiny_settings,
        capsys,
        "tune",
        "--data",
        str(qa_file),
        "--name",
        "ok",
        "--val-fraction",
        "0.99",
        "--quiet",
    )
    assert rc == 2 and "validation split larger than the data" in err


def test_tune_and_rm_clean_what_killed_writes_left_and_say_so(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A tune killed while publishing leaves a staging folder (and, where the OS cannot swap
    folders in one step, the old copy it was replacing, set aside) in the registry; the next
    tune or registry write removes the staging folder and puts the old copy back."""
    root = tiny_settings.adapters_dir
    for leftover in (".tmp-killed-1a2b3c4d", ".tmp-old-killed-5e6f7a8b"):
        (root / leftover).mkdir(parents=True)
        (root / leftover / "adapter_model.safetensors").write_bytes(b"half")
    cfg = tmp_path / "tune.toml"
    cfg.write_text(
        f'[tune]\ndata = ["{qa_file}"]\nbatch-size = 2\nr = 4\nalpha = 8\nmax_steps = 2\n'
    )
    rc, _, err = _run(tiny_settings, capsys, "tune", "--config", str(cfg), "--name", "fresh")
    assert rc == 0, err
    assert "cleaned 1 leftover(s) of an interrupted run" in err
    assert not [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    # the adapter whose replacement was killed is back in place, not deleted
    assert (root / "killed" / "adapter_model.safetensors").read_bytes() == b"half"
    assert (root / "fresh" / "manifest.json").is_file()
    (root / ".tmp-fresh-9f8e7d6c").mkdir()
    rc, out, _ = _run(tiny_settings, capsys, "adapters", "rm", "fresh")
    assert rc == 0 and out.splitlines() == [
        "removed adapter fresh",
        "cleaned 1 leftover(s) of an interrupted run",
    ]
    assert not [
        p.name for p in root.iterdir() if not p.name.startswith((".lock", ".runs", "killed"))
    ]
