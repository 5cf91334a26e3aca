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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.atomic import clean_stale, fsync_dir, staging_dir, write_text_atomic
from ragtune.core.config import Settings
from ragtune.core.errors import DataError, InsufficientResources, InvalidInput
from ragtune.core.index_store import (
    CHUNKS_FILE,
    CURRENT_FILE,
    FAISS_FILE,
    VERSIONS_DIR,
    check_compatible,
    current_version,
    index_dir,
    read_chunks,
    read_manifest,
    version_dir,
)
from ragtune.core.manifests import (
    MANIFEST,
    ChunkerConfig,
    DocumentEntry,
    IndexCounts,
    IndexManifest,
    new_version_id,
)
from ragtune.core.models import Embedder
from ragtune.core.types import Chunk, Document
from ragtune.indexer.chunking import Chunker
from ragtune.indexer.faiss_ops import IndexKind, updated_index
from ragtune.indexer.loaders import LoadResult
from ragtune.indexer.summary import IndexSummary

LOCK_FILE = ".lock"


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
    loaded: LoadResult, old_docs: dict[str, DocumentEntry], prune: bool, rechunk_all: bool
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
        elif rechunk_all or old.sha256 != doc.sha256:
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
        if prune_now and info.source not in loaded.failed_sources:
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


@dataclass(frozen=True)
class Live:
    """The version a run starts from (all None for a new index)."""

    version: str | None = None
    manifest: IndexManifest | None = None
    folder: Path | None = None

    @property
    def documents(self) -> dict[str, DocumentEntry]:
        return self.manifest.documents if self.manifest else {}

    def built_as(self, settings: Settings) -> bool:
        """Built with the index type and IVF cells the settings ask for (else: rebuild)."""
        m = self.manifest
        return m is not None and (
            m.requested_index_type == settings.index_type
            and m.ivf.requested_nlist == settings.ivf_nlist
        )


@dataclass
class Edit:
    """What the next version changes: new chunks with fresh ids, and chunk ids dropped."""

    chunks: list[Chunk]
    ids: np.ndarray  # int64 id of each new chunk, from the live version's next_int_id on
    next_int_id: int  # the first id the version after this one will give
    drop: list[int]  # chunks of removed and updated documents
    keep: list[str]  # documents whose chunks and vectors are kept as they are
    todo: list[Document]  # documents (re-)chunked in this run


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
    """Bring index ``name`` in line with ``loaded``; see the module docstring.

    lock -> clean leftovers -> read the live version -> plan -> (nothing changed: done)
    -> chunk what changed -> write the next version -> swap CURRENT -> drop old versions.
    """
    started = time.perf_counter() if started is None else started
    if not loaded.documents:
        detail = "; ".join(str(i) for i in loaded.issues[:10]) or "no supported files found"
        raise DataError(f"nothing to index: {detail}")
    idir = index_dir(settings, name)
    vroot = idir / VERSIONS_DIR
    vroot.mkdir(parents=True, exist_ok=True)
    with index_lock(idir):
        # Leftovers of killed runs: staging folders, half-removed indexes.
        cleaned = clean_stale(idir) + clean_stale(vroot) + clean_stale(settings.indexes_dir)
        live = read_live(settings, name, embedder)
        chunker = Chunker(
            embedder.tokenizer, settings.chunk_size, settings.chunk_overlap, embedder.max_seq_length
        )
        cfg = chunker.config(embedder.model_id)
        rechunk_all = live.manifest is not None and live.manifest.chunker != cfg
        p = plan(loaded, live.documents, prune, rechunk_all)
        summary = planned_summary(name, loaded, live, p, prune, cleaned)
        if live.manifest is not None and not p.changes and live.built_as(settings):
            return finished(summary, live.manifest, started)  # no new version

        edit = chunk_changes(chunker, p, live, summary)
        _check_disk(vroot, len(edit.chunks), embedder.dim, sum(len(c.text) for c in edit.chunks))
        manifest = write_version(settings, name, live, edit, cfg, embedder, progress, summary)
        # The swap: from here on readers see the new version.
        write_text_atomic(idir / CURRENT_FILE, manifest.version)
        _remove_old_versions(
            vroot, {manifest.version} | ({live.version} if live.version else set())
        )
        summary.changed = True
        return finished(summary, manifest, started)


def read_live(settings: Settings, name: str, embedder: Embedder) -> Live:
    """The live version, checked: a readable manifest, built with this embedder."""
    version = current_version(settings, name)
    if version is None:
        return Live()
    manifest = read_manifest(settings, name, version)  # ManifestError names the file
    check_compatible(manifest, embedder.model_id, embedder.dim)
    return Live(version, manifest, version_dir(settings, name, version))


def planned_summary(
    name: str, loaded: LoadResult, live: Live, p: Plan, prune: bool, cleaned: int
) -> IndexSummary:
    """The summary as far as the plan knows it: document counts, and the chunks it keeps."""
    summary = IndexSummary(
        name=name,
        version=live.version,
        previous_version=live.manifest.previous_version if live.manifest else None,
        changed=False,
        pruned=prune and p.prune_note is None,
        files=loaded.files,
        skipped_files=loaded.skipped_files,
        cleaned=cleaned,
        errors=[str(i) for i in loaded.issues] + ([p.prune_note] if p.prune_note else []),
    )
    d, c, docs = summary.documents, summary.chunks, live.documents
    d.added, d.updated, d.removed = len(p.added), len(p.updated), len(p.removed)
    d.unchanged, d.kept = len(p.unchanged), len(p.kept)
    c.unchanged = sum(len(docs[i].chunks) for i in p.unchanged)
    c.kept = sum(len(docs[i].chunks) for i in p.kept)
    return summary


def chunk_changes(chunker: Chunker, p: Plan, live: Live, summary: IndexSummary) -> Edit:
    """Chunk the added and updated documents and give the new chunks fresh ids.

    Ids are never reused, so a reader holding the old version can never confuse an old chunk
    with a new one.
    """
    todo = p.added + p.updated
    chunks = chunker.chunk_documents(todo)
    first = live.manifest.next_int_id if live.manifest else 0
    docs = live.documents
    edit = Edit(
        chunks=chunks,
        ids=np.arange(first, first + len(chunks), dtype=np.int64),
        next_int_id=first + len(chunks),
        drop=[cid for i in p.removed + [d.id for d in p.updated] for cid in docs[i].chunks],
        keep=p.unchanged + p.kept,
        todo=todo,
    )
    added_docs = {doc.id for doc in p.added}
    c = summary.chunks
    c.added = sum(1 for ch in chunks if ch.doc_id in added_docs)
    c.updated = len(chunks) - c.added
    c.removed = len(edit.drop)
    return edit


def write_version(
    settings: Settings,
    name: str,
    live: Live,
    edit: Edit,
    cfg: ChunkerConfig,
    embedder: Embedder,
    progress: bool,
    summary: IndexSummary,
) -> IndexManifest:
    """Embed, update the vectors and write the next version; returns its manifest.

    Everything goes into a staging folder beside the versions, renamed into
    ``versions/<id>`` only when whole (files fsynced), so a crash leaves no partial version.
    """
    import faiss

    vroot = index_dir(settings, name) / VERSIONS_DIR
    version = new_version_id()
    try:
        with staging_dir(vroot, f"{version}-") as tmp:
            t_embed = time.perf_counter()
            texts = [ch.text for ch in edit.chunks]
            vecs = embed_chunks(
                embedder, texts, [len(t) for t in texts], settings.embed_batch_size, progress
            )
            summary.embed_seconds = round(time.perf_counter() - t_embed, 3)
            index, kind = update_vectors(settings, live, edit, vecs, embedder.dim)
            faiss.write_index(index, str(tmp / FAISS_FILE))
            docs = _write_chunks(tmp / CHUNKS_FILE, live, edit)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            manifest = IndexManifest(
                name=name,
                version=version,
                previous_version=live.version,
                created=live.manifest.created if live.manifest else now,
                updated=now,
                embedding_model=embedder.model_id,
                embedding_dim=embedder.dim,
                index_type=kind.type,
                requested_index_type=settings.index_type,
                ivf=kind.ivf_info(settings.ivf_nlist),
                chunker=cfg,
                counts=IndexCounts(documents=len(docs), chunks=int(index.ntotal)),
                next_int_id=edit.next_int_id,
                documents=docs,
            )
            manifest.write(tmp / MANIFEST)  # fsynced by the atomic write
            for f in (FAISS_FILE, CHUNKS_FILE):
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
    return manifest


def update_vectors(
    settings: Settings, live: Live, edit: Edit, vecs: np.ndarray, dim: int
) -> tuple[Any, IndexKind]:
    """The live FAISS index with the dropped ids removed and the new vectors added; rebuilt
    from the stored vectors (never re-embedded) when the index type or IVF cells changed."""
    old_index = old_kind = None
    if live.manifest is not None and live.folder is not None:
        import faiss

        old_index = faiss.read_index(str(live.folder / FAISS_FILE))
        old_kind = IndexKind.from_manifest(live.manifest)
    return updated_index(
        old_index,
        old_kind,
        np.asarray(edit.drop, dtype=np.int64),
        edit.ids,
        vecs,
        settings.index_type,
        settings.ivf_nlist,
        dim,
        rebuild=not live.built_as(settings),
    )


def finished(summary: IndexSummary, manifest: IndexManifest, started: float) -> IndexSummary:
    """Fill in the version that is live now and its totals."""
    summary.version, summary.previous_version = manifest.version, manifest.previous_version
    summary.total_documents = len(manifest.documents)
    summary.total_chunks = manifest.counts.chunks
    summary.index_type = manifest.index_type
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _write_chunks(path: Path, live: Live, edit: Edit) -> dict[str, DocumentEntry]:
    """Write the chunk store (kept records copied, new ones appended); return the doc table."""
    old_docs = live.documents
    old_records = (
        read_chunks(live.folder / CHUNKS_FILE) if live.folder is not None and edit.keep else {}
    )
    new_chunks: dict[str, list[int]] = {doc.id: [] for doc in edit.todo}
    docs: dict[str, DocumentEntry] = {}
    with path.open("w", encoding="utf-8") as f:
        for doc_id in edit.keep:
            docs[doc_id] = old_docs[doc_id]
            for cid in old_docs[doc_id].chunks:
                f.write(json.dumps(old_records[cid], ensure_ascii=False) + "\n")
        for int_id, ch in zip(edit.ids.tolist(), edit.chunks, strict=True):
            new_chunks[ch.doc_id].append(int_id)
            f.write(json.dumps(chunk_record(int_id, ch), ensure_ascii=False) + "\n")
    for doc in edit.todo:
        docs[doc.id] = DocumentEntry(
            sha256=doc.sha256, source=doc.source, chunks=new_chunks[doc.id]
        )
    return docs
