"""Workflow fixtures: a tiny experiment over the eval tests' tiny SQuAD file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ragtune.core.config import Settings
from tests.eval.conftest import tiny_squad_file  # noqa: F401 (a fixture, used by name)

# Two real LoRA steps per adapter on the tiny model: seconds.
TINY_TUNE = (
    "max_steps = 2\nbatch_size = 2\nval_fraction = 0.0\nforgetting = false\nr = 4\nalpha = 8\n"
)


def write_experiment(path: Path, squad: Path, closed_tune: str = TINY_TUNE) -> Path:
    """A tiny experiment: 2 of 4 articles held out, a closed-book and a RAFT adapter, 5 modes."""
    path.write_text(
        'name = "tiny"\n[settings]\ntop_k = 2\n'
        f'[data]\ndataset = "{squad}"\ntest_fraction = 0.5\nseed = 1\n'
        '[index]\nname = "tiny-idx"\n'
        f"[adapters.closed]\nquestions = 4\n[adapters.closed.tune]\n{closed_tune}"
        f"[adapters.raft]\n[adapters.raft.tune]\nraft = true\n{TINY_TUNE}"
        '[eval]\nmodes = ["base", "rag", "finetune:closed", "hybrid:raft", "oracle"]\n'
        "max_new_tokens = 3\nbatch_size = 4\nn_boot = 200\n"
    )
    return path


@pytest.fixture
def tiny_experiment(tmp_path: Path, tiny_squad_file: Path) -> Path:  # noqa: F811
    return write_experiment(tmp_path / "exp.toml", tiny_squad_file)


def invoke(settings: Settings, *args: str) -> Result:
    """Run ``ragtune <args>`` in-process on the tiny models; it must succeed."""
    from ragtune.cli.main import cli

    g = ["--data-dir", str(settings.data_dir), "--embedder", settings.embedder]
    g += ["--generator", settings.generator, "--threads", "1"]
    res = CliRunner().invoke(cli, [*g, *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res
