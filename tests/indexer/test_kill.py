"""A reindex killed with SIGKILL at any stage leaves the previous index whole and usable, and
the next run cleans up after it (staging folders and the chunk store rows it wrote)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragtune.core.errors import IndexNotFound
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


def _store_rows(settings) -> tuple[int, int, int]:
    """(documents, live documents, chunks) rows in the chunk store."""
    import sqlite3

    con = sqlite3.connect(settings.indexes_dir / "kb" / "store.sqlite")
    try:
        docs = con.execute("SELECT count(*) FROM documents").fetchone()[0]
        live = con.execute("SELECT count(*) FROM documents WHERE died IS NULL").fetchone()[0]
        chunks = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
    finally:
        con.close()
    return docs, live, chunks


def _kill_at(stage: str, settings, paths: list[Path], tmp_path: Path) -> None:
    """Run a build in a subprocess, SIGKILL it when it reaches ``stage``."""
    marker = tmp_path / f"reached-{stage}"
    env = {k: v for k, v in os.environ.items() if k != "RAGTUNE_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "tests.indexer.kill_helper",
        str(settings.data_dir),
        settings.embedder,
        stage,
        str(marker),
        *map(str, paths),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the build ended before {stage}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"the build never reached {stage}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["store-write", "store-committed", "files-written", "swap"])
def test_kill_9_at_every_stage_of_an_update(
    stage, tiny_settings, tiny_embedder, corpus, tmp_path
) -> None:
    """Killed inside the store transaction, after it committed, with the version's files
    written, and right before the CURRENT swap: the live version stays whole and usable,
    and the next run removes what the killed one left (folders and store rows)."""
    first = build_index(tiny_settings, [corpus], "kb", progress=False, embedder=tiny_embedder)
    rows_before = _store_rows(tiny_settings)
    (corpus / "paris.txt").write_text("The Eiffel Tower was finished in 1889 in Paris.")
    (corpus / "nile.html").unlink()
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "".join(
            json.dumps({"id": f"e{i}", "text": f"Glacier number {i} melts.", "metadata": {"n": i}})
            + "\n"
            for i in range(50)
        )
    )
    _kill_at(stage, tiny_settings, [corpus, extra], tmp_path)

    # The old version is live and whole: every method, a filter, its chunk rows.
    assert current_version(tiny_settings, "kb") == first.version
    idx = open_index(tiny_settings, "kb", tiny_embedder)
    assert idx.size == first.total_chunks
    assert idx.search("Everest mountain", 1, "hybrid")[0].doc_id == "docs/everest.md"
    assert idx.search("Nile river", 1, "bm25")[0].doc_id == "docs/nile.html"
    assert idx.search("Eiffel", 1, "dense", {"file_type": "txt"})[0].text.startswith("The Eiffel")
    assert all(h.doc_id != "e1" for h in idx.search("Glacier", 5, "bm25"))
    del idx

    s = build_index(tiny_settings, [corpus, extra], "kb", progress=False, embedder=tiny_embedder)
    assert s.changed and s.cleaned >= 1 and s.documents.added == 50
    assert (s.documents.updated, s.documents.removed) == (1, 1)
    vroot = tiny_settings.indexes_dir / "kb" / "versions"
    assert not any(p.name.startswith(".tmp-") for p in vroot.iterdir())
    docs, live, chunks = _store_rows(tiny_settings)
    # Rows: the 5 of the first version (2 now dropped but held by the previous version) and
    # 51 new ones; nothing of the killed run is left (it would have added 51 more).
    assert (docs, live, chunks) == (rows_before[0] + 51, 54, rows_before[2] + 51)
    idx = open_index(tiny_settings, "kb", tiny_embedder)
    assert idx.search("Glacier number 7", 1, "bm25", {"n": {"gte": 7, "lt": 8}})[0].doc_id == "e7"
    assert idx.search("finished 1889", 1, "bm25")[0].doc_id == "docs/paris.txt"


def test_kill_9_during_the_first_build(tiny_settings, tiny_embedder, corpus, tmp_path) -> None:
    """No live version yet: the killed build leaves no index, and the next one starts clean."""
    _kill_at("store-committed", tiny_settings, [corpus], tmp_path)
    assert current_version(tiny_settings, "kb") is None
    with pytest.raises(IndexNotFound):
        open_index(tiny_settings, "kb", tiny_embedder)
    s = build_index(tiny_settings, [corpus], "kb", progress=False, embedder=tiny_embedder)
    assert s.documents.added == 5 and _store_rows(tiny_settings)[:2] == (5, 5)
