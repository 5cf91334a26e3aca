"""Incremental build: load -> plan -> chunk -> embed -> store -> version files -> swap CURRENT.

A run never touches what the live version reads. Chunk rows go into the index's chunk store
(``store.sqlite``, shared by all versions) in one transaction, tagged with the new version's
number, so live readers never see them; the new version's files (FAISS index, ids, BM25
model, metadata columns, manifest) are written into a ``.tmp-`` folder beside the others,
fsynced, renamed into ``versions/<id>``, and only then is the small CURRENT file replaced
(atomically). A crash at any point (Ctrl-C, kill -9, full disk) leaves CURRENT pointing at a
whole version; the next run deletes the leftover folder and the store rows of the version
that never went live. After the swap, old versions that no reader holds are deleted (the
previous one is always kept) and so are the store rows no kept version holds.

Documents are keyed by id and content hash (``indexer.plan``): unchanged ones keep their
chunks, vectors and rows, changed ones are re-chunked and re-embedded, vanished ones are
removed when pruning; files whose size and modification time did not change are not read.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.atomic import clean_stale, fsync_dir, staging_dir, write_text_atomic
from ragtune.core.bm25_index import BM25_DIR, bm25_text
from ragtune.core.chunk_store import STORE_FILE
from ragtune.core.config import Settings
from ragtune.core.errors import DataError, InsufficientResources, InvalidInput
from ragtune.core.fields import FIELDS_DIR
from ragtune.core.index_store import (
    CURRENT_FILE,
    FAISS_FILE,
    IDS_FILE,
    READERS_FILE,
    VERSIONS_DIR,
    check_compatible,
    check_store,
    current_version,
    index_dir,
    version_dir,
)
from ragtune.core.manifests import (
    LEGACY_INDEX_SCHEMA_VERSION,
    MANIFEST,
    ChunkerConfig,
    IndexCounts,
    IndexManifest,
    LegacyIndexManifest,
    index_schema_version,
    new_version_id,
)
from ragtune.core.models import Embedder
from ragtune.core.types import Chunk
from ragtune.indexer.bm25_build import Postings, read_vocab, save_model, tokenize
from ragtune.indexer.chunking import Chunker
from ragtune.indexer.faiss_ops import IndexKind, VectorConfig, updated_index
from ragtune.indexer.fields_build import Columns, encode_documents
from ragtune.indexer.legacy import LegacyVersion, carry
from ragtune.indexer.loaders import LoadResult, load_paths
from ragtune.indexer.plan import OldDoc, OldFile, Plan, plan
from ragtune.indexer.store_write import (
    FileRow,
    NewDocument,
    StoreWriter,
    disk_full_is_clear,
)
from ragtune.indexer.summary import IndexSummary, timed

LOCK_FILE = ".lock"
# A test hook: called with each stage's name as a run reaches it (the kill tests stop there).
StageHook = Callable[[str], None]
STAGES = ("planned", "embedding", "store-write", "store-committed", "files-written", "swap")


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


@dataclass(frozen=True)
class Live:
    """The version a run starts from (all None for a new index)."""

    version: str | None = None
    manifest: IndexManifest | None = None
    legacy: LegacyVersion | None = None  # a schema-1 version, converted by this run
    folder: Path | None = None

    @property
    def seq(self) -> int:
        return self.manifest.seq if self.manifest else 0

    @property
    def next_int_id(self) -> int:
        m = self.manifest or (self.legacy.manifest if self.legacy else None)
        return m.next_int_id if m else 0

    @property
    def chunker(self) -> ChunkerConfig | None:
        m = self.manifest or (self.legacy.manifest if self.legacy else None)
        return m.chunker if m else None

    def built_as(self, settings: Settings) -> bool:
        """Built with the index settings asked for now (else: rebuild the vectors' index)."""
        m = self.manifest
        return m is not None and (
            m.requested_index_type == settings.index_type
            and m.ivf.requested_nlist == settings.ivf_nlist
            and (
                settings.index_type != "ivf_pq"
                or (m.ivf.requested_pq_m, m.ivf.opq) == (settings.pq_m, settings.opq)
            )
        )

    def old_ids(self) -> np.ndarray:
        """The live version's chunk ids, ascending (its rows' order)."""
        if self.legacy is not None:
            return self.legacy.ids()
        if self.folder is None:
            return np.zeros(0, dtype=np.int64)
        return np.load(self.folder / IDS_FILE)


@dataclass
class Edit:
    """What the next version changes: new chunks with fresh ids, and chunk ids dropped."""

    chunks: list[Chunk]
    ids: np.ndarray  # int64 id of each new chunk, from the live version's next_int_id on
    next_int_id: int  # the first id the version after this one will give
    drop: np.ndarray  # int64 ids of the chunks of removed and updated documents
    new_docs: list[NewDocument]


def update_index(
    settings: Settings,
    name: str,
    paths: Sequence[Path],
    embedder: Embedder | Callable[[], Embedder],
    *,
    prune: bool,
    progress: bool,
    started: float | None = None,
    on_stage: StageHook | None = None,
) -> IndexSummary:
    """Bring index ``name`` in line with the documents under ``paths``; see the module doc.

    ``embedder``: the embedder, or a function that loads it (called only when the run finds
    something to index).
    """
    started = time.perf_counter() if started is None else started
    stage = on_stage or (lambda _: None)
    idir = index_dir(settings, name)
    vroot = idir / VERSIONS_DIR
    vroot.mkdir(parents=True, exist_ok=True)
    with index_lock(idir):
        # Leftovers of killed runs: staging folders, half-removed indexes.
        cleaned = clean_stale(idir) + clean_stale(vroot) + clean_stale(settings.indexes_dir)
        live = read_live(settings, name)
        fresh = live.manifest is None  # no store to build on: start a new file
        if not fresh:
            check_store(settings, name)
        store = StoreWriter(idir / STORE_FILE, fresh=fresh)
        try:
            if not fresh and store.cleanup_orphans(live.seq, live.next_int_id):
                cleaned += 1
            summary = _run(settings, name, paths, embedder, live, store, prune, progress, stage)
            summary.cleaned += cleaned
        finally:
            store.close()
    return finished(summary, started)


def _run(
    settings: Settings,
    name: str,
    paths: Sequence[Path],
    get_embedder: Embedder | Callable[[], Embedder],
    live: Live,
    store: StoreWriter,
    prune: bool,
    progress: bool,
    stage: StageHook,
) -> IndexSummary:
    t0 = time.perf_counter()
    old_files = _old_files(live, store)
    skip = settings.skip_unchanged_files and live.manifest is not None
    known = {s: f.fingerprint for s, f in old_files.items()} if skip else None
    loaded = load_paths(paths, known)
    t_load = time.perf_counter() - t0
    if not loaded.documents and not loaded.unchanged_sources:
        detail = "; ".join(str(i) for i in loaded.issues[:10]) or "no supported files found"
        raise DataError(f"nothing to index: {detail}")
    embedder = _embedder(get_embedder)
    if live.manifest is not None:
        check_compatible(live.manifest, embedder.model_id, embedder.dim)
    elif live.legacy is not None:
        check_compatible(live.legacy.manifest, embedder.model_id, embedder.dim)  # type: ignore[arg-type]
    chunker = Chunker(
        embedder.tokenizer, settings.chunk_size, settings.chunk_overlap, embedder.max_seq_length
    )
    cfg = chunker.config(embedder.model_id)
    rechunk_all = live.chunker is not None and live.chunker != cfg
    t0 = time.perf_counter()
    if rechunk_all and loaded.unchanged_sources:  # every document is needed again
        loaded = load_paths(paths, None)
        t_load += time.perf_counter() - t0
        t0 = time.perf_counter()
    old_docs = _old_docs(live, store, loaded, old_files)
    p = plan(loaded, old_docs, old_files, prune, rechunk_all)
    summary = planned_summary(name, loaded, live, p, prune)
    summary.timings = {"load": round(t_load, 3), "plan": round(time.perf_counter() - t0, 3)}
    stage("planned")
    if live.manifest is not None and not p.changes and live.built_as(settings):
        _refresh_fingerprints(store, p, old_files)
        summary.version = live.version
        return _totals(summary, live.manifest)  # no new version

    with timed(summary, "chunk"):
        edit = chunk_changes(chunker, p, live, summary)
    _check_disk(index_dir(settings, name), live, edit, embedder.dim)
    manifest = write_version(
        settings, name, live, p, edit, cfg, embedder, store, progress, summary, stage
    )
    # The swap: from here on readers see the new version.
    stage("swap")
    idir = index_dir(settings, name)
    with timed(summary, "swap+gc"):
        write_text_atomic(idir / CURRENT_FILE, manifest.version)
        collect_garbage(idir / VERSIONS_DIR, store, manifest, live)
    summary.changed = True
    summary.version = manifest.version
    return _totals(summary, manifest)


def _embedder(given: Embedder | Callable[[], Embedder]) -> Embedder:
    """An embedder object, or a function that loads one (called only when there is work)."""
    return given if hasattr(given, "encode") else given()  # type: ignore[return-value]


def read_live(settings: Settings, name: str) -> Live:
    """The live version: a readable schema-2 manifest, or a schema-1 one to convert."""
    from ragtune.core.index_store import read_manifest

    version = current_version(settings, name)
    if version is None:
        return Live()
    vdir = version_dir(settings, name, version)
    if index_schema_version(vdir / MANIFEST) == LEGACY_INDEX_SCHEMA_VERSION:
        legacy = LegacyIndexManifest.read(
            vdir / MANIFEST,
            hint=f"remove the index with `ragtune index rm {name}` and build it again",
        )
        return Live(version, None, LegacyVersion.read(legacy, vdir), vdir)
    manifest = read_manifest(settings, name, version)  # ManifestError names the file
    return Live(version, manifest, None, vdir)


def _old_files(live: Live, store: StoreWriter) -> dict[str, OldFile]:
    if live.manifest is None:
        return {}
    return {
        s: OldFile((f.size, f.mtime_ns), f.n_docs, f.n_chunks)
        for s, f in store.live_files().items()
    }


def _old_docs(
    live: Live, store: StoreWriter, loaded: LoadResult, old_files: dict[str, OldFile]
) -> dict[str, OldDoc]:
    """The live documents the plan must look at: every one of a file that was read, failed or
    vanished, and every loaded id (a document may have moved to another file)."""
    if live.legacy is not None:
        return live.legacy.old_docs()
    if live.manifest is None:
        return {}
    sources = set(old_files) - loaded.unchanged_sources
    rows = store.live_docs_of_sources(sources)
    rows |= store.live_docs_by_id(d.id for d in loaded.documents if d.id not in rows)
    return {r.doc_id: OldDoc(r.doc_id, r.sha256, r.source, r.chunks, r.doc) for r in rows.values()}


def _refresh_fingerprints(store: StoreWriter, p: Plan, old_files: dict[str, OldFile]) -> None:
    """Nothing changed, but a file was touched: remember its new size and time (its content
    is what the live version holds), so the next run does not read it again."""
    changed = {
        s: fp
        for s, (fp, _, _) in p.files.items()
        if s in old_files and old_files[s].fingerprint != fp
    }
    if changed:
        with store.transaction():
            store.con.executemany(
                "UPDATE files SET size = ?, mtime_ns = ? WHERE source = ? AND died IS NULL",
                ((fp[0], fp[1], s) for s, fp in changed.items()),
            )


def planned_summary(
    name: str, loaded: LoadResult, live: Live, p: Plan, prune: bool
) -> IndexSummary:
    """The summary as far as the plan knows it: document counts, and the chunks it keeps."""
    summary = IndexSummary(
        name=name,
        version=live.version,
        previous_version=live.manifest.previous_version if live.manifest else None,
        changed=False,
        pruned=prune and p.prune_note is None,
        files=loaded.files,
        unchanged_files=len(loaded.unchanged_sources),
        skipped_files=loaded.skipped_files,
        errors=[str(i) for i in loaded.issues + p.issues]
        + ([p.prune_note] if p.prune_note else []),
    )
    d, c = summary.documents, summary.chunks
    d.added, d.updated, d.removed = len(p.added), len(p.updated), len(p.removed)
    d.unchanged, d.kept = len(p.unchanged) + p.skipped_docs, len(p.kept)
    c.unchanged = p.unchanged_chunks + p.skipped_chunks
    c.kept = p.kept_chunks
    return summary


def chunk_changes(chunker: Chunker, p: Plan, live: Live, summary: IndexSummary) -> Edit:
    """Chunk the added and updated documents and give the new chunks fresh ids.

    Ids are never reused, so a reader holding the old version can never confuse an old chunk
    with a new one; a document's chunks get consecutive ids.
    """
    todo = p.todo
    chunks = chunker.chunk_documents(todo)
    first = live.next_int_id
    by_doc: dict[str, list[Chunk]] = {d.id: [] for d in todo}
    for ch in chunks:
        by_doc[ch.doc_id].append(ch)
    new_docs, nxt = [], first
    for doc in todo:
        mine = by_doc[doc.id]
        new_docs.append(NewDocument(doc, mine, nxt, doc.metadata))
        nxt += len(mine)
        fp, nd, nc = p.files[doc.source]
        p.files[doc.source] = (fp, nd, nc + len(mine))
    ordered = [c for nd in new_docs for c in nd.chunks]
    drop = np.asarray([i for d in p.drop for i in d.chunks], dtype=np.int64)
    added_docs = {doc.id for doc in p.added}
    c = summary.chunks
    c.added = sum(1 for ch in ordered if ch.doc_id in added_docs)
    c.updated = len(ordered) - c.added
    c.removed = len(drop)
    return Edit(ordered, np.arange(first, nxt, dtype=np.int64), nxt, drop, new_docs)


def _check_disk(idir: Path, live: Live, edit: Edit, dim: int) -> None:
    """Refuse early rather than fail half-way: the new rows and vectors, and a copy of the
    live version's files (the next version rewrites them), with room to spare."""
    text = sum(len(c.text) for c in edit.chunks)
    copy = _tree_bytes(live.folder) if live.folder is not None else 0
    need = 2 * (len(edit.chunks) * (dim * 6 + 64) + text) + copy + (1 << 20)
    free = shutil.disk_usage(idir).free
    if free < need:
        raise InsufficientResources(
            f"not enough disk space to build the index ({free >> 20} MiB free, "
            f"about {need >> 20} MiB needed); the previous version is untouched"
        )


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_version(
    settings: Settings,
    name: str,
    live: Live,
    p: Plan,
    edit: Edit,
    cfg: ChunkerConfig,
    embedder: Embedder,
    store: StoreWriter,
    progress: bool,
    summary: IndexSummary,
    stage: StageHook,
) -> IndexManifest:
    """Embed, write the store rows and the next version's files; returns its manifest.

    The files go into a staging folder beside the versions, renamed into ``versions/<id>``
    only when whole (fsynced), so a crash leaves no partial version.
    """
    import faiss

    vroot = index_dir(settings, name) / VERSIONS_DIR
    version = new_version_id()
    seq = live.seq + 1
    try:
        with staging_dir(vroot, f"{version}-") as tmp, disk_full_is_clear():
            stage("embedding")
            t_embed = time.perf_counter()
            texts = [ch.text for ch in edit.chunks]
            vecs = embed_chunks(
                embedder, texts, [len(t) for t in texts], settings.embed_batch_size, progress
            )
            summary.embed_seconds = round(time.perf_counter() - t_embed, 3)
            summary.timings["embed"] = summary.embed_seconds

            note(progress, f"writing {len(edit.chunks):,} chunks to the chunk store")
            with timed(summary, "store"):
                carried = _write_rows(live, p, edit, vecs, store, seq, stage)
            stage("store-committed")

            old_ids = live.old_ids()
            keep = ~np.isin(old_ids, edit.drop)
            ids = np.concatenate([old_ids[keep], edit.ids])
            with timed(summary, "faiss"):
                index, kind = update_vectors(
                    settings, live, old_ids, edit, vecs, embedder.dim, store
                )
                faiss.write_index(index, str(tmp / FAISS_FILE))
                del index
            np.save(tmp / IDS_FILE, ids)
            note(progress, "updating the BM25 model and the metadata columns")
            with timed(summary, "bm25"):
                bm25 = _write_bm25(tmp / BM25_DIR, live, keep, old_ids, carried, edit)
            with timed(summary, "fields"):
                fields = _write_fields(tmp / FIELDS_DIR, live, keep, old_ids, carried, edit)
            (tmp / READERS_FILE).touch()
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            old = live.manifest or (live.legacy.manifest if live.legacy else None)
            manifest = IndexManifest(
                name=name,
                version=version,
                previous_version=live.version,
                seq=seq,
                created=old.created if old else now,
                updated=now,
                embedding_model=embedder.model_id,
                embedding_dim=embedder.dim,
                index_type=kind.type,
                requested_index_type=settings.index_type,
                ivf=kind.ivf_info(VectorConfig.from_settings(settings)),
                chunker=cfg,
                counts=IndexCounts(documents=_documents_after(live, p), chunks=len(ids)),
                next_int_id=edit.next_int_id,
                bm25=bm25,
                fields=fields,
            )
            manifest.write(tmp / MANIFEST)  # fsynced by the atomic write
            with timed(summary, "fsync"):
                _fsync_tree(tmp)
            stage("files-written")
            os.rename(tmp, vroot / version)
            fsync_dir(vroot)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise InsufficientResources(
                "the disk filled up while writing the index; the previous version is untouched"
            ) from e
        raise
    return manifest


def note(progress: bool, message: str) -> None:
    """One line on stderr for a step that has no progress bar (with --quiet: nothing)."""
    if progress:
        print(f"{message} ...", file=sys.stderr, flush=True)


def _documents_after(live: Live, p: Plan) -> int:
    before = live.manifest.counts.documents if live.manifest else 0
    if live.legacy is not None:
        before = len(live.legacy.manifest.documents)
    return before + len(p.added) - len(p.removed)


def _write_rows(
    live: Live,
    p: Plan,
    edit: Edit,
    vecs: np.ndarray,
    store: StoreWriter,
    seq: int,
    stage: StageHook,
) -> dict[int, dict[str, Any]]:
    """One store transaction: new documents with their chunks and vectors, dropped ones
    retired, the files' rows; a schema-1 version's kept documents carried over first."""
    carried: dict[int, dict[str, Any]] = {}
    with store.transaction():
        if live.legacy is not None:
            carried = carry(live.legacy, p.unchanged + p.kept, p.unchanged_loaded, store, seq)
        store.add_documents(edit.new_docs, vecs, seq)
        stage("store-write")
        store.retire([d.row for d in p.drop if d.row is not None], seq)
        store.retire_files(p.files, seq)
        store.add_files(
            (FileRow(s, fp[0], fp[1], nd, nc) for s, (fp, nd, nc) in p.files.items() if nd),
            seq,
        )
    return carried


def update_vectors(
    settings: Settings,
    live: Live,
    old_ids: np.ndarray,
    edit: Edit,
    vecs: np.ndarray,
    dim: int,
    store: StoreWriter,
) -> tuple[Any, IndexKind]:
    """The live FAISS index with the dropped ids removed and the new vectors added; rebuilt
    from the kept vectors (never re-embedded) when the index settings changed."""
    old_index = old_kind = None
    if live.folder is not None:
        import faiss

        old_index = faiss.read_index(str(live.folder / FAISS_FILE))  # a private, writable copy
        if live.manifest is not None:
            old_kind = IndexKind.from_manifest(live.manifest)
        elif live.legacy is not None:
            old_kind = live.legacy.kind()
    return updated_index(
        old_index,
        old_kind,
        old_ids,
        edit.drop,
        edit.ids,
        vecs,
        VectorConfig.from_settings(settings),
        dim,
        lambda ids: store.vectors(ids, dim),
        rebuild=not live.built_as(settings),
    )


def _new_texts(edit: Edit) -> list[str]:
    return [bm25_text({"text": c.text, "metadata": c.metadata}) for c in edit.chunks]


def _write_bm25(
    folder: Path,
    live: Live,
    keep: np.ndarray,
    old_ids: np.ndarray,
    carried: dict[int, dict[str, Any]],
    edit: Edit,
) -> Any:
    """The BM25 model of the next version: the kept rows' postings (from the live version,
    or tokenized once from a schema-1 version's records), plus the new chunks'."""
    if live.manifest is not None and live.folder is not None:
        src = live.folder / BM25_DIR
        vocab = read_vocab(src)
        old = Postings.load(src).keep(keep)
    elif live.legacy is not None:
        vocab = {}
        recs = live.legacy.records
        kept_ids = old_ids[keep]
        old = tokenize(
            [bm25_text({"text": recs[i]["text"], "metadata": carried[i]}) for i in kept_ids],
            vocab,
        )
    else:
        vocab, old = {}, Postings.empty()
    return save_model(folder, old.append(tokenize(_new_texts(edit), vocab)), vocab)


def _write_fields(
    folder: Path,
    live: Live,
    keep: np.ndarray,
    old_ids: np.ndarray,
    carried: dict[int, dict[str, Any]],
    edit: Edit,
) -> Any:
    """The metadata columns of the next version: the kept rows' (from the live version, or
    encoded from a schema-1 version's records) plus the new chunks'."""
    if live.manifest is not None and live.folder is not None:
        old = Columns.load(live.folder / FIELDS_DIR, list(live.manifest.fields)).keep(keep)
    elif live.legacy is not None:
        kept_ids = old_ids[keep]
        old = encode_documents([carried[i] for i in kept_ids], [1] * len(kept_ids), [])
    else:
        old = Columns.empty()
    new = encode_documents(
        [nd.metadata for nd in edit.new_docs], [len(nd.chunks) for nd in edit.new_docs], old.names
    )
    cols, infos = old.append(new).compact()
    cols.save(folder)
    return infos


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def collect_garbage(vroot: Path, store: StoreWriter, manifest: IndexManifest, live: Live) -> None:
    """Delete old versions that no reader holds (the previous one is always kept), then the
    store rows that no remaining version holds. Best effort: leftovers go next time."""
    keep = {manifest.version} | ({live.version} if live.version else set())
    held = remove_old_versions(vroot, keep)
    seqs = {manifest.seq} | ({live.manifest.seq} if live.manifest else set())
    for v in held:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            seqs.add(int(json.loads((vroot / v / MANIFEST).read_text())["seq"]))
    store.gc(seqs)


def remove_old_versions(vroot: Path, keep: set[str]) -> set[str]:
    """Delete every version folder not in ``keep`` that no reader holds; return the held ones."""
    held = set()
    for p in sorted(vroot.iterdir()):
        if not p.is_dir() or p.name in keep or p.name.startswith("."):
            continue
        try:
            fd = os.open(p / READERS_FILE, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # a schema-1 version: its readers loaded it whole
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Renamed while locked: a reader that gets the lock after us finds it gone.
            gone = vroot / f".tmp-gone-{p.name}"
            os.rename(p, gone)
        except BlockingIOError:
            held.add(p.name)
            continue
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)
    return held


def _totals(summary: IndexSummary, manifest: IndexManifest) -> IndexSummary:
    summary.previous_version = manifest.previous_version
    summary.total_documents = manifest.counts.documents
    summary.total_chunks = manifest.counts.chunks
    summary.index_type = manifest.index_type
    return summary


def finished(summary: IndexSummary, started: float) -> IndexSummary:
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
