"""Incremental build: plan -> chunk -> embed -> FAISS -> write a version -> swap CURRENT.

A run never touches the live version. It builds the next version in a ``.tmp-`` folder beside
the others, renames the finished folder into ``versions/<id>`` and only then replaces the small
CURRENT file (atomically). A crash at any point (Ctrl-C, kill -9, full disk) leaves CURRENT
pointing at a whole version; the next run deletes the leftovers. The version that was live
before the swap is kept, because a reader (the service) may still hold it; older ones go.

Documents are keyed by id and content hash: unchanged ones keep their chunks and vectors
(the vectors are reused from the previous FAISS index by id), changed ones are re-chunked and
re-embedded, and vanished ones are removed when pruning (see ``plan``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.atomic import clean_stale, fsync_dir, staging_dir, write_text_atomic
from ragtune.core.config import Settings
from ragtune.core.errors import DataError, IndexMismatch, InsufficientResources, InvalidInput
from ragtune.core.index_store import (
    CHUNKS_FILE,
    CURRENT_FILE,
    FAISS_FILE,
    MANIFEST,
    SCHEMA_VERSION,
    VERSIONS_DIR,
    check_compatible,
    current_version,
    index_dir,
    read_chunks,
)
from ragtune.core.models import Embedder
from ragtune.core.types import Chunk, Document
from ragtune.indexer.chunking import Chunker, ChunkerConfig
from ragtune.indexer.faiss_ops import IndexKind, updated_index
from ragtune.indexer.loaders import LoadResult
from ragtune.indexer.summary import IndexSummary

LOCK_FILE = ".lock"


def new_version_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@contextlib.contextmanager
def index_lock(idir: Path) -> Iterator[None]:
    """One writer per index at a time. The OS drops the lock when the process dies (kill -9)."""
    idir.mkdir(parents=True, exist_ok=True)
    with (idir / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise InvalidInput(
                f"index {idir.name!r} is being written by another process; try again when it ends"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Plan:
    """What a run will do to each document."""

    added: list[Document] = field(default_factory=list)
    updated: list[Document] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # not seen this run, not pruned
    prune_note: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def plan(
    loaded: LoadResult, old_docs: dict[str, dict[str, Any]], prune: bool, rechunk_all: bool
) -> Plan:
    """Sort documents into added / updated / unchanged / removed / kept.

    Pruning removes every indexed document this run did not produce (the index mirrors the
    paths given), except documents whose file failed to load this run, and nothing at all when
    a given path is missing: a typo in a path must not empty an index.
    """
    p = Plan()
    seen = set()
    for doc in loaded.documents:
        seen.add(doc.id)
        old = old_docs.get(doc.id)
        if old is None:
            p.added.append(doc)
        elif rechunk_all or old.get("sha256") != doc.sha256:
            p.updated.append(doc)
        else:
            p.unchanged.append(doc.id)
    prune_now = prune and not loaded.missing_paths
    if prune and loaded.missing_paths:
        p.prune_note = (
            "not pruning: a given path is missing (" + ", ".join(loaded.missing_paths) + ")"
        )
    for doc_id, info in old_docs.items():
        if doc_id in seen:
            continue
        if prune_now and info.get("source") not in loaded.failed_sources:
            p.removed.append(doc_id)
        else:
            p.kept.append(doc_id)
    return p


def embed_chunks(
    embedder: Embedder, texts: list[str], lengths: list[int], batch_size: int, progress: bool
) -> np.ndarray:
    """Embed in batches, longest first (as sentence-transformers does) so padding stays small."""
    from tqdm import tqdm

    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    with tqdm(
        total=len(texts),
        desc="embedding",
        unit="chunk",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = embedder.encode([texts[j] for j in idx], batch_size=batch_size)
            bar.update(len(idx))
    return out


def chunk_record(int_id: int, chunk: Chunk) -> dict[str, Any]:
    return {
        "int_id": int_id,
        "id": chunk.id,
        "doc_id": chunk.doc_id,
        "text": chunk.text,
        "span": list(chunk.span),
        "metadata": chunk.metadata,
    }


def _read_old(vdir: Path, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads((vdir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IndexMismatch(
            f"index {name!r}: its live version cannot be read ({type(e).__name__}); "
            f"remove it with: ragtune index rm {name}"
        ) from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IndexMismatch(
            f"index {name!r} has schema {manifest.get('schema_version')}, expected "
            f"{SCHEMA_VERSION}; rebuild it under a new name or remove it"
        )
    return manifest


def _check_disk(path: Path, n_chunks: int, dim: int, text_bytes: int) -> None:
    """Refuse early rather than fail half-way: vectors + chunk text, twice over for safety."""
    need = 2 * (n_chunks * dim * 4 + text_bytes) + (1 << 20)
    free = shutil.disk_usage(path).free
    if free < need:
        raise InsufficientResources(
            f"not enough disk space to build the index ({free >> 20} MiB free, "
            f"about {need >> 20} MiB needed); the previous version is untouched"
        )


def _remove_old_versions(vroot: Path, keep: set[str]) -> None:
    for p in vroot.iterdir():
        if p.is_dir() and p.name not in keep and not p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)


def update_index(
    settings: Settings,
    name: str,
    loaded: LoadResult,
    embedder: Embedder,
    *,
    prune: bool,
    progress: bool,
    started: float | None = None,
) -> IndexSummary:
    """Bring index ``name`` in line with ``loaded``; see the module docstring."""
    started = time.perf_counter() if started is None else started
    idir = index_dir(settings, name)
    vroot = idir / VERSIONS_DIR
    errors = [str(i) for i in loaded.issues]
    if not loaded.documents:
        detail = "; ".join(errors[:10]) or "no supported files found"
        raise DataError(f"nothing to index: {detail}")
    vroot.mkdir(parents=True, exist_ok=True)
    with index_lock(idir):
        # Leftovers of killed runs: staging folders, half-removed indexes.
        cleaned = clean_stale(idir) + clean_stale(vroot) + clean_stale(settings.indexes_dir)
        old_version = current_version(settings, name)
        old_manifest: dict[str, Any] | None = None
        if old_version is not None:
            old_manifest = _read_old(vroot / old_version, name)
            check_compatible(old_manifest, embedder.model_id, embedder.dim)
        chunker = Chunker(
            embedder.tokenizer, settings.chunk_size, settings.chunk_overlap, embedder.max_seq_length
        )
        cfg = ChunkerConfig(chunker.size, chunker.overlap, embedder.model_id).to_dict()
        old_docs: dict[str, dict[str, Any]] = (old_manifest or {}).get("documents", {})
        rechunk_all = old_manifest is not None and old_manifest.get("chunker") != cfg
        p = plan(loaded, old_docs, prune, rechunk_all)
        if p.prune_note:
            errors.append(p.prune_note)

        summary = IndexSummary(
            name=name,
            version=old_version,
            previous_version=(old_manifest or {}).get("previous_version"),
            changed=False,
            pruned=prune and p.prune_note is None,
            files=loaded.files,
            skipped_files=loaded.skipped_files,
            cleaned=cleaned,
            errors=errors,
        )
        d, c = summary.documents, summary.chunks
        d.added, d.updated, d.removed = len(p.added), len(p.updated), len(p.removed)
        d.unchanged, d.kept = len(p.unchanged), len(p.kept)
        c.unchanged = sum(len(old_docs[i]["chunks"]) for i in p.unchanged)
        c.kept = sum(len(old_docs[i]["chunks"]) for i in p.kept)
        same_kind = old_manifest is not None and (
            old_manifest.get("requested_index_type") == settings.index_type
            and (old_manifest.get("ivf") or {}).get("requested_nlist", 0) == settings.ivf_nlist
        )
        if old_manifest is not None and not p.changes and same_kind:
            summary.total_documents = len(old_docs)
            summary.total_chunks = int(old_manifest.get("counts", {}).get("chunks", 0))
            summary.index_type = old_manifest.get("index_type", "flat")
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary

        # Chunk what changed and give the new chunks fresh ids (ids are never reused, so a
        # reader holding the old version can never confuse an old chunk with a new one).
        todo = p.added + p.updated
        chunks = chunker.chunk_documents(todo)
        next_id = int((old_manifest or {}).get("next_int_id", 0))
        new_ids = np.arange(next_id, next_id + len(chunks), dtype=np.int64)
        next_id += len(chunks)
        added_ids = {doc.id for doc in p.added}
        c.added = sum(1 for ch in chunks if ch.doc_id in added_ids)
        c.updated = len(chunks) - c.added
        drop = [cid for i in p.removed + [x.id for x in p.updated] for cid in old_docs[i]["chunks"]]
        c.removed = len(drop)
        _check_disk(vroot, len(chunks), embedder.dim, sum(len(ch.text) for ch in chunks))

        version = new_version_id()
        try:
            with staging_dir(vroot, f"{version}-") as tmp:
                t_embed = time.perf_counter()
                lengths = [len(ch.text) for ch in chunks]
                vecs = embed_chunks(
                    embedder,
                    [ch.text for ch in chunks],
                    lengths,
                    settings.embed_batch_size,
                    progress,
                )
                summary.embed_seconds = round(time.perf_counter() - t_embed, 3)
                old_index = old_kind = None
                if old_version is not None and old_manifest is not None:
                    import faiss

                    old_index = faiss.read_index(str(vroot / old_version / FAISS_FILE))
                    old_kind = IndexKind.from_manifest(old_manifest)
                index, kind = updated_index(
                    old_index,
                    old_kind,
                    np.asarray(drop, dtype=np.int64),
                    new_ids,
                    vecs,
                    settings.index_type,
                    settings.ivf_nlist,
                    embedder.dim,
                    rebuild=not same_kind,  # index_type/ivf_nlist changed: rebuild from vectors
                )
                import faiss

                faiss.write_index(index, str(tmp / FAISS_FILE))
                docs_out = _write_chunks(
                    tmp / CHUNKS_FILE,
                    vroot / old_version / CHUNKS_FILE if old_version else None,
                    old_docs,
                    p.unchanged + p.kept,
                    chunks,
                    new_ids,
                    todo,
                )
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                manifest = {
                    "schema_version": SCHEMA_VERSION,
                    "name": name,
                    "version": version,
                    "previous_version": old_version,
                    "created": (old_manifest or {}).get("created", now),
                    "updated": now,
                    "embedding_model": embedder.model_id,
                    "embedding_dim": embedder.dim,
                    "metric": "inner_product",
                    "normalized": True,
                    "index_type": kind.type,
                    "requested_index_type": settings.index_type,
                    "ivf": (
                        {**kind.to_dict(), "requested_nlist": settings.ivf_nlist}
                        if kind.type == "ivf"
                        else {"requested_nlist": settings.ivf_nlist}
                    ),
                    "chunker": cfg,
                    "counts": {"documents": len(docs_out), "chunks": int(index.ntotal)},
                    "next_int_id": next_id,
                    "documents": docs_out,
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
                for f in (MANIFEST, FAISS_FILE, CHUNKS_FILE):
                    with open(tmp / f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.rename(tmp, vroot / version)
                fsync_dir(vroot)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise InsufficientResources(
                    "the disk filled up while writing the index; the previous version is untouched"
                ) from e
            raise
        # The swap: from here on readers see the new version.
        write_text_atomic(idir / CURRENT_FILE, version)
        _remove_old_versions(vroot, {version} | ({old_version} if old_version else set()))

        summary.version, summary.previous_version, summary.changed = version, old_version, True
        summary.total_documents = len(docs_out)
        summary.total_chunks = int(index.ntotal)
        summary.index_type = kind.type
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary


def _write_chunks(
    path: Path,
    old_chunks_path: Path | None,
    old_docs: dict[str, dict[str, Any]],
    keep_docs: list[str],
    chunks: list[Chunk],
    new_ids: np.ndarray,
    new_docs: list[Document],
) -> dict[str, dict[str, Any]]:
    """Write the chunk store (kept records copied, new ones appended); return the doc table."""
    docs_out: dict[str, dict[str, Any]] = {}
    old_records = read_chunks(old_chunks_path) if old_chunks_path and keep_docs else {}
    with path.open("w", encoding="utf-8") as f:
        for doc_id in keep_docs:
            info = old_docs[doc_id]
            docs_out[doc_id] = info
            for cid in info["chunks"]:
                f.write(json.dumps(old_records[cid], ensure_ascii=False) + "\n")
        for doc in new_docs:
            docs_out[doc.id] = {"sha256": doc.sha256, "source": doc.source, "chunks": []}
        for int_id, ch in zip(new_ids.tolist(), chunks, strict=True):
            docs_out[ch.doc_id]["chunks"].append(int_id)
            f.write(json.dumps(chunk_record(int_id, ch), ensure_ascii=False) + "\n")
    return docs_out
