"""core.memory: a fixed glibc mmap threshold gives freed tensor memory back to the system."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from ragtune.core.config import resolve_settings

# Big tensors freed while small ones allocated between them stay alive: with glibc's dynamic
# threshold the big ones come from the heap (after the first 16 MB free raised it) and the
# small ones pin it; with a fixed threshold they are mapped, and freeing them unmaps them.
PROBE = """
import json, sys, psutil, torch
from ragtune.core.memory import set_mmap_threshold
set_ok = set_mmap_threshold(int(sys.argv[1]))
rss = lambda: psutil.Process().memory_info().rss / 2**20
big = torch.ones(4 * 2**20)  # 16 MB: its free raises the dynamic threshold to 16 MB
del big
pairs = [(torch.ones(2**21), torch.ones(2**14)) for _ in range(40)]  # 40 x 8 MB, 40 x 64 KB
peak = rss()
small = [s for _, s in pairs]
del pairs
print(json.dumps({"set": set_ok, "peak": peak, "after": rss()}))
"""


def _probe(kib: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(kib)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_fixed_threshold_returns_freed_tensors() -> None:
    default, fixed = _probe(0), _probe(1024)
    assert not default["set"] and fixed["set"]
    assert default["peak"] - default["after"] < 100  # the heap kept the 320 MB
    assert fixed["peak"] - fixed["after"] > 250  # unmapped when freed


def test_setting_defaults_and_bounds() -> None:
    settings, _ = resolve_settings(environ={})
    assert settings.malloc_mmap_threshold_kb == 1024
    off, _ = resolve_settings(environ={"RAGTUNE_MALLOC_MMAP_THRESHOLD_KB": "0"})
    assert off.malloc_mmap_threshold_kb == 0


# A real process that serves, then trains (as `ragtune demo` does): loading the models for
# inference leaves glibc's threshold alone; a training run fixes it.
ROLES = """
import json, sys
from ragtune.core import memory
from ragtune.core.config import Settings
from ragtune.core.models import load_embedder, load_generator
from ragtune.tuner.api import train_adapter
from ragtune.tuner.args import TuneArgs
settings = Settings.model_validate_json(sys.argv[1])
load_generator(settings), load_embedder(settings)
serving = memory._applied
args = TuneArgs(data=[sys.argv[2]], name="m", max_steps=1, batch_size=2, val_fraction=0.0,
                forgetting=False, r=2, alpha=4)
train_adapter(settings, args, progress=False)
print(json.dumps({"serving": serving, "training": memory._applied}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_only_training_fixes_the_threshold(tiny_settings, tmp_path) -> None:
    from tests.tuner.helpers import prompt_records, write_jsonl

    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(4))
    settings = tiny_settings.model_copy(update={"malloc_mmap_threshold_kb": 2048})
    out = subprocess.run(
        [sys.executable, "-c", ROLES, settings.model_dump_json(), str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"serving": None, "training": 2048}
