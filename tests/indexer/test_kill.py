"""A reindex killed with SIGKILL mid-embedding leaves the previous index whole and usable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ragtune.core.index_store import current_version, open_index
from ragtune.indexer.api import build_index

REPO = Path(__file__).resolve().parents[2]


def test_kill_9_during_reindex(tiny_settings, tiny_embedder, corpus, tmp_path) -> None:
    first = build_index(tiny_settings, [corpus], "kb", progress=False, embedder=tiny_embedder)
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        for i in range(2000):
            f.write(json.dumps({"id": f"d{i}", "text": f"Paris river mountain number {i}."}) + "\n")
    env = {
        **os.environ,
        "RAGTUNE_EMBED_BATCH_SIZE": "1",  # thousands of tiny batches: embedding takes a while
        "RAGTUNE_CHUNK_SIZE": str(tiny_settings.chunk_size),
        "RAGTUNE_CHUNK_OVERLAP": str(tiny_settings.chunk_overlap),
    }
    env.pop("RAGTUNE_CONFIG", None)
    cmd = [
        sys.executable,
        "-m",
        "ragtune",
        "--data-dir",
        str(tiny_settings.data_dir),
        "--embedder",
        tiny_settings.embedder,
        "--threads",
        "1",
        "index",
        str(corpus),
        str(big),
        "--index",
        "kb",
    ]
    vroot = tiny_settings.indexes_dir / "kb" / "versions"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        # The staging folder appears right before the first batch is embedded.
        while not any(p.name.startswith(".tmp-") for p in vroot.iterdir()):
            assert proc.poll() is None, "the reindex ended before it could be killed"
            assert time.monotonic() < deadline, "the reindex never started embedding"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "the reindex ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # The old version is still live and whole.
    assert current_version(tiny_settings, "kb") == first.version
    idx = open_index(tiny_settings, "kb", tiny_embedder)
    assert idx.size == first.total_chunks
    assert idx.search("Everest mountain", 1, "hybrid")[0].doc_id == "docs/everest.md"
    assert any(p.name.startswith(".tmp-") for p in vroot.iterdir())  # the killed run's leftovers

    # The next run cleans up and finishes the job.
    s = build_index(tiny_settings, [corpus, big], "kb", progress=False, embedder=tiny_embedder)
    assert s.cleaned >= 1 and s.documents.added == 2000 and s.documents.unchanged == 5
    assert not any(p.name.startswith(".tmp-") for p in vroot.iterdir())
    assert current_version(tiny_settings, "kb") == s.version
