"""The write side of the chunk store (``core.chunk_store`` describes the tables).

Only the indexer writes, under the index's writer lock. Rows of a version that never went
live (a killed run) are removed before anything else (``cleanup_orphans``); rows no kept
version holds any more are removed after the swap (``gc``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.chunk_store import BATCH, SCHEMA, STORE_FORMAT, connect
from ragtune.core.errors import InsufficientResources
from ragtune.core.types import Chunk, Document


@dataclass(frozen=True)
class DocRow:
    """A live document row: what the incremental plan compares and reuses."""

    doc: int  # row id
    doc_id: str
    sha256: str
    source: str
    first_chunk: int
    n_chunks: int

    @property
    def chunks(self) -> range:
        return range(self.first_chunk, self.first_chunk + self.n_chunks)


@dataclass(frozen=True)
class FileRow:
    """What a file was when it was last read whole and without problems."""

    source: str
    size: int
    mtime_ns: int
    n_docs: int
    n_chunks: int


@dataclass(frozen=True)
class NewDocument:
    """A document to insert with its chunks (ids ``first_chunk`` .. + len(chunks) - 1)."""

    doc: Document
    chunks: list[Chunk]
    first_chunk: int
    metadata: dict[str, Any]


def remove_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()


@contextlib.contextmanager
def disk_full_is_clear() -> Iterator[None]:
    """SQLite's "database or disk is full" becomes the same error as a full disk elsewhere."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "full" in str(e):
            raise InsufficientResources(
                "the disk filled up while writing the index; the previous version is untouched"
            ) from e
        raise


class StoreWriter:
    """The writer's connection to ``store.sqlite``."""

    def __init__(self, path: Path, *, fresh: bool) -> None:
        """Open (``fresh``: delete any old file first: an index without a live version)."""
        if fresh:
            remove_store(path)
        self.path = path
        self.con = connect(path)
        # FULL: the commit is on disk before the CURRENT swap makes the version live.
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("PRAGMA cache_size=-131072")  # 128 MiB while writing
        self.con.executescript(SCHEMA)
        self.con.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (STORE_FORMAT,)
        )

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change: committed whole or rolled back (also by a crash)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # --- reads for the plan ---------------------------------------------------------------
    def live_files(self) -> dict[str, FileRow]:
        rows = self.con.execute(
            "SELECT source, size, mtime_ns, n_docs, n_chunks FROM files WHERE died IS NULL"
        )
        return {r[0]: FileRow(*r) for r in rows}

    def live_docs_of_sources(self, sources: Iterable[str]) -> dict[str, DocRow]:
        return self._live_docs("source", list(sources))

    def live_docs_by_id(self, doc_ids: Iterable[str]) -> dict[str, DocRow]:
        return self._live_docs("doc_id", list(doc_ids))

    def _live_docs(self, column: str, values: list[str]) -> dict[str, DocRow]:
        out: dict[str, DocRow] = {}
        for i in range(0, len(values), BATCH):
            part = values[i : i + BATCH]
            sql = (
                "SELECT doc, doc_id, sha256, source, first_chunk, n_chunks FROM documents "
                f"WHERE died IS NULL AND {column} IN ({','.join('?' * len(part))})"
            )
            for r in self.con.execute(sql, part):
                out[r[1]] = DocRow(*r)
        return out

    def live_documents(self) -> int:
        return int(
            self.con.execute("SELECT count(*) FROM documents WHERE died IS NULL").fetchone()[0]
        )

    def vectors(self, int_ids: np.ndarray, dim: int) -> np.ndarray:
        """The stored (float16) vectors of ``int_ids``, as float32 in that order."""
        out = np.empty((len(int_ids), dim), dtype=np.float32)
        pos = {int(i): r for r, i in enumerate(int_ids)}
        ids = list(pos)
        for i in range(0, len(ids), BATCH):
            part = ids[i : i + BATCH]
            sql = f"SELECT int_id, vec FROM vectors WHERE int_id IN ({','.join('?' * len(part))})"
            for int_id, blob in self.con.execute(sql, part):
                out[pos[int_id]] = np.frombuffer(blob, dtype=np.float16)
        return out

    def live_rows(self) -> Iterator[tuple[int, str, str]]:
        """(int_id, text, document metadata JSON) of every live chunk, by int id."""
        yield from self.con.execute(
            "SELECT c.int_id, c.text, d.metadata FROM chunks c JOIN documents d ON d.doc = c.doc "
            "WHERE d.died IS NULL ORDER BY c.int_id"
        )

    # --- writes -----------------------------------------------------------------------------
    def cleanup_orphans(self, live_seq: int, next_int_id: int) -> int:
        """Remove what a killed run wrote for a version after ``live_seq``; rows removed."""
        n = 0
        with self.transaction():
            for sql, args in (
                ("DELETE FROM chunks WHERE int_id >= ?", (next_int_id,)),
                ("DELETE FROM vectors WHERE int_id >= ?", (next_int_id,)),
                ("DELETE FROM documents WHERE born > ?", (live_seq,)),
                ("UPDATE documents SET died = NULL WHERE died > ?", (live_seq,)),
                ("DELETE FROM files WHERE born > ?", (live_seq,)),
                ("UPDATE files SET died = NULL WHERE died > ?", (live_seq,)),
            ):
                n += self.con.execute(sql, args).rowcount
        return n

    def add_documents(
        self, new: Sequence[NewDocument], vecs: np.ndarray, seq: int
    ) -> dict[str, DocRow]:
        """Insert documents with their chunks and vectors (``vecs`` in chunk order)."""
        first_doc = int(
            self.con.execute("SELECT coalesce(max(doc), -1) + 1 FROM documents").fetchone()[0]
        )
        rows = {
            nd.doc.id: DocRow(
                first_doc + i,
                nd.doc.id,
                nd.doc.sha256,
                nd.doc.source,
                nd.first_chunk,
                len(nd.chunks),
            )
            for i, nd in enumerate(new)
        }
        self.con.executemany(
            "INSERT INTO documents(doc, doc_id, sha256, source, metadata, first_chunk, n_chunks, "
            "born) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    r.doc,
                    r.doc_id,
                    r.sha256,
                    r.source,
                    json.dumps(nd.metadata, ensure_ascii=False, default=str),
                    r.first_chunk,
                    r.n_chunks,
                    seq,
                )
                for nd in new
                for r in (rows[nd.doc.id],)
            ),
        )
        self.con.executemany(
            "INSERT INTO chunks(int_id, doc, chunk_id, text, start, end) VALUES (?, ?, ?, ?, ?, ?)",
            (
                (nd.first_chunk + j, rows[nd.doc.id].doc, c.id, c.text, c.span[0], c.span[1])
                for nd in new
                for j, c in enumerate(nd.chunks)
            ),
        )
        ids = (nd.first_chunk + j for nd in new for j in range(len(nd.chunks)))
        self.con.executemany(
            "INSERT INTO vectors(int_id, vec) VALUES (?, ?)",
            # float16, one row at a time: no second copy of every vector
            ((i, vecs[r].astype(np.float16).tobytes()) for r, i in enumerate(ids)),
        )
        return rows

    def add_rows(
        self, rows: Iterable[tuple[DocRow, str, list[tuple[int, str, str, int, int]]]], seq: int
    ) -> None:
        """Insert documents whose chunks already have ids (a converted schema-1 version):
        (document row, metadata JSON, [(int_id, chunk_id, text, start, end)])."""
        for d, meta, chunks in rows:
            self.con.execute(
                "INSERT INTO documents(doc, doc_id, sha256, source, metadata, first_chunk, "
                "n_chunks, born) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d.doc, d.doc_id, d.sha256, d.source, meta, d.first_chunk, d.n_chunks, seq),
            )
            self.con.executemany(
                "INSERT INTO chunks(int_id, doc, chunk_id, text, start, end) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((i, d.doc, cid, text, a, b) for i, cid, text, a, b in chunks),
            )

    def add_vectors(self, int_ids: np.ndarray, vecs: np.ndarray) -> None:
        self.con.executemany(
            "INSERT INTO vectors(int_id, vec) VALUES (?, ?)",
            ((int(i), vecs[r].astype(np.float16).tobytes()) for r, i in enumerate(int_ids)),
        )

    def retire(self, docs: Iterable[int], seq: int) -> None:
        """Mark document rows (by row id) as dropped from version ``seq`` on."""
        self.con.executemany(
            "UPDATE documents SET died = ? WHERE doc = ?", ((seq, d) for d in docs)
        )

    def retire_files(self, sources: Iterable[str], seq: int) -> None:
        self.con.executemany(
            "UPDATE files SET died = ? WHERE source = ? AND died IS NULL",
            ((seq, s) for s in sources),
        )

    def add_files(self, files: Iterable[FileRow], seq: int) -> None:
        self.con.executemany(
            "INSERT INTO files(source, size, mtime_ns, n_docs, n_chunks, born) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ((f.source, f.size, f.mtime_ns, f.n_docs, f.n_chunks, seq) for f in files),
        )

    def gc(self, kept: set[int]) -> int:
        """Delete rows that no version in ``kept`` holds; documents removed."""
        if not kept:
            return 0
        held = " OR ".join(f"(born <= {int(k)} AND died > {int(k)})" for k in sorted(kept))
        dead = f"died IS NOT NULL AND NOT ({held})"
        with self.transaction():
            ranges = self.con.execute(
                f"SELECT first_chunk, first_chunk + n_chunks - 1 FROM documents WHERE {dead}"
            ).fetchall()
            for table in ("chunks", "vectors"):
                self.con.executemany(f"DELETE FROM {table} WHERE int_id BETWEEN ? AND ?", ranges)
            self.con.execute(f"DELETE FROM documents WHERE {dead}")
            self.con.execute(f"DELETE FROM files WHERE {dead}")
        return len(ranges)
