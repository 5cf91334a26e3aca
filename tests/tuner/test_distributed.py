"""Data-parallel training (`ragtune tune --nproc N`: torch DDP under torchrun, gloo on the CPU):
the same losses and weights as one process on the same global batch, one writer, and a
registry that a kill -9 of any rank leaves consistent, with a resume that works."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ragtune.core.errors import UnknownAdapter
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.core.registry import get_adapter, list_adapters
from ragtune.tuner.distributed import Parallel
from tests.tuner.helpers import prompt_records, write_jsonl

REPO = Path(__file__).resolve().parents[2]
# Dropout off: with it, one process and two draw different masks for the same example.
TUNE = ["--batch-size", "2", "--grad-accum", "2", "--dropout", "0", "--no-forgetting"]
TUNE += ["--r", "4", "--alpha", "8", "--lr", "0.01", "--quiet"]


def tune(settings, data: Path, name: str, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(settings.data_dir)]
    cmd += ["--generator", settings.generator, "--embedder", settings.embedder, "--threads", "1"]
    cmd += ["tune", "--data", str(data), "--name", name, *TUNE, *extra]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def history(settings, name: str) -> list[dict]:
    return get_adapter(settings, name).manifest.metrics.history  # type: ignore[union-attr]


def test_micro_batches_cover_the_step_once_with_equal_counts():
    chunk = list(range(9))
    for world in (1, 2, 3, 4):
        shares = [Parallel(rank=r, world=world).micro_batches(chunk, 2) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # the same number of micro-batches
        real = [x for s in shares for mb in s if not mb.padding for x in mb.examples]
        assert sorted(real) == chunk
        assert all(len(mb.examples) <= 2 for s in shares for mb in s)
    assert Parallel().micro_batches(chunk, 4)[-1].examples == [8]


def test_from_env_reads_torchruns_variables():
    assert not Parallel.from_env({}).active
    p = Parallel.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (p.rank, p.world, p.local_rank, p.is_writer, p.active) == (1, 2, 1, False, True)


def one_and_two_processes(settings, tmp_path: Path, steps: list[str], parallel: list[str]):
    """Train adapter "one" in one process and "two" with ``parallel`` on the same data;
    check that they log the same losses and end with the same LoRA weights (returned)."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(16))
    one = tune(settings, data, "one", *steps)
    assert one.returncode == 0, one.stderr[-3000:]
    two = tune(settings, data, "two", *steps, *parallel)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("adapter two: lora") == 1  # one summary: rank 0's
    a, b = history(settings, "one"), history(settings, "two")
    assert [h.step for h in a] == [h.step for h in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):  # the same global batch: the same losses
        assert abs(x.train_loss - y.train_loss) / x.train_loss < 1e-3
        assert abs(x.val_loss - y.val_loss) / x.val_loss < 1e-3
    wa = load_file(str(get_adapter(settings, "one").path / "adapter_model.safetensors"))
    wb = load_file(str(get_adapter(settings, "two").path / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    return wa, wb


@pytest.mark.timeout(600)
def test_two_processes_train_what_one_does(tiny_settings, tmp_path):
    steps = ["--max-steps", "4", "--val-fraction", "0.25", "--eval-every", "1"]
    one_and_two_processes(tiny_settings, tmp_path, steps, ["--nproc", "2"])
    # it loads and answers, as the one-process adapter does
    pipeline = Pipeline(tiny_settings)
    ask = [QueryRequest("Who created Python?", mode="finetune", adapter=n) for n in ("one", "two")]
    answers = pipeline.answer_batch(ask)
    assert answers[0].answer == answers[1].answer and answers[1].adapter == "two"
    assert not (tiny_settings.adapters_dir / ".runs" / "two").exists()  # checkpoints cleaned


def worker(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> psutil.Process:
    """The torchrun worker of ``rank`` under ``launcher``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "ragtune" in " ".join(
                    child.cmdline()
                ):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank}")


def test_a_failing_worker_is_one_clear_error_naming_its_rank(tiny_settings, tmp_path):
    """Rank 0 refuses the data (it alone reads it); the launcher stops the job and says which
    ranks failed and how, after the worker's own message, without a traceback of its own."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n{"bar": 2}\n', encoding="utf-8")
    done = tune(tiny_settings, bad, "bad", "--max-steps", "2", "--nproc", "2")
    assert done.returncode == 1
    assert "bad.jsonl:1" in done.stderr  # rank 0's data error, with file:line
    last = done.stderr.strip().splitlines()[-1]
    # rank 1 may lose its peer and exit first, and rank 0 be stopped by the agent then
    assert last.startswith("error: data-parallel training failed: rank "), last
    assert re.search(r"rank 0 \((exit code [12]|killed by SIGTERM)\)", last), last
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert list_adapters(tiny_settings) == []


def checkpoint_step(settings, name: str) -> int:
    state = settings.adapters_dir / ".runs" / name / "last" / "state.json"
    try:
        return int(json.loads(state.read_text())["step"])
    except (OSError, ValueError):
        return 0


def kill_after(settings, launcher: subprocess.Popen, name: str, rank: int, past: int) -> int:
    """SIGKILL ``rank`` once a checkpoint past step ``past`` is on disk; returns that step."""
    victim = worker(launcher, rank)
    deadline = time.monotonic() + 300
    while (step := checkpoint_step(settings, name)) <= past:
        assert launcher.poll() is None, launcher.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert launcher.wait(120) == 1  # torchrun stopped the other rank and failed
    said = launcher.stdout.read().decode()  # type: ignore[union-attr]
    failed = [line for line in said.splitlines() if "data-parallel training failed:" in line]
    # its peer may crash on the lost connection (SIGABRT in gloo) before the agent stops it
    # and be named too (after it: test_lost_peer.py); the killed rank must be named
    assert failed and f"rank {rank} (killed by SIGKILL)" in failed[-1], said[-3000:]
    return step


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_of_any_rank_leaves_the_registry_consistent_and_resume_works(
    tiny_settings, tmp_path
):
    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(32))
    args = ["--max-steps", "60", "--save-every", "2", "--val-fraction", "0", "--nproc", "2"]
    stopped = 0
    for rank in (1, 0):  # the one that only computes, then the one that writes
        launcher = tune(tiny_settings, data, "ddp", *args, wait=False)
        stopped = kill_after(tiny_settings, launcher, "ddp", rank, past=stopped + 2)
        with pytest.raises(UnknownAdapter):
            get_adapter(tiny_settings, "ddp")  # nothing half-published
        assert [a.name for a in list_adapters(tiny_settings)] == []
    done = tune(tiny_settings, data, "ddp", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = get_adapter(tiny_settings, "ddp").manifest.metrics
    assert metrics is not None and metrics.steps == 60
    assert metrics.resumed_from_step is not None and metrics.resumed_from_step >= stopped
    answer = Pipeline(tiny_settings).answer(
        QueryRequest("Where is the Nile?", mode="finetune", adapter="ddp")
    )
    assert answer.adapter == "ddp" and answer.usage.completion_tokens >= 1
    leftovers = [p.name for p in tiny_settings.adapters_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
