"""A real SIGKILL during training leaves no adapter that looks valid; a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import UnknownAdapter
from ragtune.core.registry import get_adapter, list_adapters
from ragtune.tuner.api import run_dir, train_adapter
from tests.conftest import REPO
from tests.tuner.conftest import quick_args

SCRIPT = """
import json, sys
from ragtune.core.config import Settings
from ragtune.tuner.api import train_adapter
from ragtune.tuner.args import TuneArgs
settings = Settings.model_validate(json.loads(sys.argv[1]))
train_adapter(settings, TuneArgs(**json.loads(sys.argv[2])), progress=False)
"""


def test_sigkill_leaves_no_valid_adapter_and_rerun_resumes(
    tiny_settings: Settings, qa_file: Path
) -> None:
    args = quick_args(
        qa_file, "killed", max_steps=100_000, save_every=1, val_fraction=0.0, forgetting=False
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, tiny_settings.model_dump_json(), json.dumps(args.to_dict())],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = run_dir(tiny_settings, "killed") / "last" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 5:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert list_adapters(tiny_settings) == []
    with pytest.raises(UnknownAdapter):
        get_adapter(tiny_settings, "killed")
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at >= 5

    # rerun the same command: it continues from the killed run's last checkpoint
    rerun = quick_args(
        qa_file, "killed", max_steps=100_000, save_every=1, val_fraction=0.0, forgetting=False
    )
    stop_after = killed_at + 2

    def stop(step: int, loss: float) -> None:
        if step >= stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_settings, rerun, progress=False, on_step=stop)
    resumed = json.loads(state.read_text())["step"]
    assert resumed == stop_after  # continued from the killed run's checkpoint, not from 0
    assert list_adapters(tiny_settings) == []
