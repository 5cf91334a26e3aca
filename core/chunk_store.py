"""The chunk store: every chunk's text, its document's metadata and the document table of an
index, in one SQLite file shared by all versions of the index (``<index>/store.sqlite``).

Rows are never copied into a new version. Each document row carries the version numbers
(``seq``) that hold it: ``born`` (the first version with it) and ``died`` (the first version
without it; NULL while it is current). A reindex adds rows for new and changed documents and
sets ``died`` on the rows it drops, in one transaction, before the version goes live. A reader
needs none of that: it looks chunks up by the int ids its own version's FAISS and BM25 files
return, and those rows stay until no kept version holds them (``indexer.store_write.gc``).
A crash before the CURRENT swap leaves rows tagged with a version that never went live; the
next writer removes them before it starts.

::

    documents(doc PK, doc_id, sha256, source, metadata JSON, first_chunk, n_chunks, born, died)
    chunks(int_id PK, doc, chunk_id, text, start, end)   int_id = the FAISS id
    vectors(int_id PK, vec)        float16 embedding: rebuilding a compressed index re-embeds
                                   nothing and never decodes lossy codes
    files(source, size, mtime_ns, n_docs, n_chunks, born, died)   what each file was when
                                   last read whole: an unchanged file is not read again

WAL journal: readers are never blocked by the writer and see whole transactions only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STORE_FILE = "store.sqlite"
STORE_FORMAT = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    first_chunk INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    born INTEGER NOT NULL,
    died INTEGER
);
CREATE INDEX IF NOT EXISTS documents_live_id ON documents(doc_id) WHERE died IS NULL;
CREATE INDEX IF NOT EXISTS documents_live_source ON documents(source) WHERE died IS NULL;
CREATE INDEX IF NOT EXISTS documents_born ON documents(born);
CREATE INDEX IF NOT EXISTS documents_died ON documents(died) WHERE died IS NOT NULL;
CREATE TABLE IF NOT EXISTS chunks (
    int_id INTEGER PRIMARY KEY,
    doc INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (int_id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    n_docs INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    born INTEGER NOT NULL,
    died INTEGER
);
CREATE INDEX IF NOT EXISTS files_live ON files(source) WHERE died IS NULL;
"""

# Rows held by version ``seq``: born at or before it, not dropped by then.
LIVE_AT = "born <= :seq AND (died IS NULL OR died > :seq)"
# SQLite allows 32766 bound parameters; stay well below.
BATCH = 900


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode; ``readonly`` refuses writes (a reader's guarantee)."""
    con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA busy_timeout=10000")
    if readonly:
        con.execute("PRAGMA query_only=1")
    return con


def chunk_record(row: Sequence[Any]) -> dict[str, Any]:
    """A chunk as the read side hands it out (the keys of the old chunks.jsonl records)."""
    int_id, chunk_id, text, start, end, doc_id, metadata = row
    return {
        "int_id": int_id,
        "id": chunk_id,
        "doc_id": doc_id,
        "text": text,
        "span": [start, end],
        "metadata": json.loads(metadata),
    }


_FETCH = (
    "SELECT c.int_id, c.chunk_id, c.text, c.start, c.end, d.doc_id, d.metadata "
    "FROM chunks c JOIN documents d ON d.doc = c.doc WHERE c.int_id IN ({})"
)


class ChunkStore:
    """Read access to one index's chunk store (thread-safe: one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con = connect(path, readonly=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def fetch(self, int_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The chunk records of ``int_ids`` (ids not in the store are left out)."""
        out: dict[int, dict[str, Any]] = {}
        ids = list(dict.fromkeys(int(i) for i in int_ids))
        with self._lock:
            for i in range(0, len(ids), BATCH):
                part = ids[i : i + BATCH]
                sql = _FETCH.format(",".join("?" * len(part)))
                for row in self._con.execute(sql, part):
                    out[row[0]] = chunk_record(row)
        return out

    def iter_records(
        self, int_ids: Sequence[int] | np.ndarray, batch: int = 2000
    ) -> Iterator[dict[str, Any]]:
        """Every record of ``int_ids``, in that order, fetched ``batch`` at a time."""
        for i in range(0, len(int_ids), batch):
            part = [int(x) for x in int_ids[i : i + batch]]
            got = self.fetch(part)
            for cid in part:
                if cid in got:
                    yield got[cid]

    def sources(self, seq: int) -> dict[str, int]:
        """Documents per source file in version ``seq``."""
        sql = f"SELECT source, count(*) FROM documents WHERE {LIVE_AT} GROUP BY source"
        with self._lock:
            return dict(self._con.execute(sql, {"seq": seq}).fetchall())

    def document_ids(self, seq: int, limit: int) -> list[str]:
        """The first ``limit`` document ids of version ``seq``, sorted."""
        sql = f"SELECT doc_id FROM documents WHERE {LIVE_AT} ORDER BY doc_id LIMIT :limit"
        with self._lock:
            return [r[0] for r in self._con.execute(sql, {"seq": seq, "limit": limit})]

    def documents(self, seq: int) -> dict[str, dict[str, Any]]:
        """The document table of version ``seq``: doc id -> {sha256, source, chunks}."""
        sql = f"SELECT doc_id, sha256, source, first_chunk, n_chunks FROM documents WHERE {LIVE_AT}"
        with self._lock:
            rows = self._con.execute(sql, {"seq": seq}).fetchall()
        return {
            r[0]: {"sha256": r[1], "source": r[2], "chunks": list(range(r[3], r[3] + r[4]))}
            for r in rows
        }
