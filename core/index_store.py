"""The on-disk index format and its read side (search).

Layout of one named index (the indexer writes it; everything else only reads)::

    <data>/indexes/<name>/
        CURRENT                 the live version id (replaced atomically)
        store.sqlite            the chunk store: texts, metadata, document table, float16
                                vectors; shared by every version (core.chunk_store)
        versions/<version>/
            manifest.json       core.manifests.IndexManifest (schema 2): embedder id + dim,
                                chunker, index type, counts, BM25 and field summaries
            index.faiss         the vectors by 64-bit chunk id (flat, IVF, IVF-SQ8, IVF-PQ)
            ids.npy             the version's chunk ids, ascending: row r of bm25/ and fields/
                                is chunk ids[r]
            bm25/               the BM25 model, built at index time (core.bm25_index)
            fields/             metadata columns for filters (core.fields)
            .readers            readers hold a shared lock on it while they use the version

Vectors are L2-normalized, so inner product is cosine similarity. A reader memory-maps the
version's files (``index_mmap``; FAISS IO_FLAG_MMAP for IVF kinds, IO_FLAG_MMAP_IFC for
flat), so processes share one copy and loading costs milliseconds, and reads chunk texts by
id from the store at search time. A version is never modified once written; the writer
deletes an old one only when no reader holds its lock, so a reader keeps working across any
number of swaps. ``open_index`` is the one way to load an index (the CLI, the service's
``IndexCache`` and the tuner's RAFT builder all use it).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragtune.core.bm25_index import BM25_DIR, STOPWORDS, Bm25Model, bm25_text, bm25_tokenize
from ragtune.core.chunk_store import STORE_FILE, ChunkStore
from ragtune.core.config import Settings
from ragtune.core.errors import (
    IndexFormatOutdated,
    IndexMismatch,
    IndexNotFound,
    InvalidInput,
    ManifestError,
)
from ragtune.core.fields import FIELDS_DIR, FieldColumns
from ragtune.core.filters import MetadataFilter, parse_filter
from ragtune.core.manifests import (
    LEGACY_INDEX_SCHEMA_VERSION,
    MANIFEST,
    IndexManifest,
    index_schema_version,
)
from ragtune.core.types import Hit, RetrievalMethod

__all__ = ["STOPWORDS", "bm25_text", "bm25_tokenize"]  # re-exported: their old home

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
FAISS_FILE = "index.faiss"
IDS_FILE = "ids.npy"
READERS_FILE = ".readers"
CHUNKS_FILE = "chunks.jsonl"  # schema 1 only

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: str, what: str = "index") -> str:
    """Index and adapter names become folder names: allow no path tricks."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '_', '-', '.'",
            field=what,
        )
    return name


def index_dir(settings: Settings, name: str) -> Path:
    return settings.indexes_dir / validate_name(name)


def current_version(settings: Settings, name: str) -> str | None:
    """The live version id of an index, or None if it does not exist."""
    try:
        return (index_dir(settings, name) / CURRENT_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def version_dir(settings: Settings, name: str, version: str) -> Path:
    return index_dir(settings, name) / VERSIONS_DIR / version


def store_path(settings: Settings, name: str) -> Path:
    return index_dir(settings, name) / STORE_FILE


def list_indexes(settings: Settings) -> list[str]:
    if not settings.indexes_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in settings.indexes_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / CURRENT_FILE).is_file()
    )


def _not_found(name: str) -> IndexNotFound:
    return IndexNotFound(
        f"index {name!r} not found (build it with: ragtune index PATH --index {name})"
    )


def read_manifest(settings: Settings, name: str, version: str | None = None) -> IndexManifest:
    """The manifest of the live (or a given) version of an index.

    Raises:
        IndexNotFound: no such index.
        IndexFormatOutdated: a schema-1 index (chunks.jsonl): an update run converts it.
        ManifestError: the manifest is missing, corrupt or of an unknown schema version.
    """
    version = version or current_version(settings, name)
    if version is None:
        raise _not_found(name)
    path = version_dir(settings, name, version) / MANIFEST
    if index_schema_version(path) == LEGACY_INDEX_SCHEMA_VERSION:
        raise outdated(name, path)
    return IndexManifest.read(
        path, hint=f"remove the index with `ragtune index rm {name}` and build it again"
    )


def read_documents(
    settings: Settings, name: str, version: str | None = None
) -> dict[str, dict[str, Any]]:
    """The document table of the live (or a given) version, from the chunk store:
    doc id -> {"sha256", "source", "chunks": [int ids]}. Reads every row: for tools and
    tests, not for serving."""
    m = read_manifest(settings, name, version)
    store = ChunkStore(store_path(settings, name))
    try:
        return store.documents(m.seq)
    finally:
        store.close()


def check_store(settings: Settings, name: str) -> Path:
    """The index's chunk store, which must exist next to a schema-2 version."""
    path = store_path(settings, name)
    if not path.is_file():
        problem = "has no chunk store"
        raise ManifestError(
            f"index {name!r} {problem} ({path} is missing); remove the index with "
            f"`ragtune index rm {name}` and build it again",
            path=str(path),
            problem=problem,
        )
    return path


def outdated(name: str, path: Path) -> IndexFormatOutdated:
    problem = "is in format 1 (chunks.jsonl, loaded whole), which this ragtune does not read"
    return IndexFormatOutdated(
        f"index {name!r} was written by an earlier ragtune: its manifest {path} {problem}; "
        f"convert it once, without re-embedding, by updating it with the paths it was built "
        f"from (`ragtune index PATH... --index {name}`), or remove it (`ragtune index rm "
        f"{name}`) and build it again",
        path=str(path),
        problem=problem,
    )


def rrf_fuse(
    rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), rank from 1."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


class ChunkMap(Mapping[int, dict[str, Any]]):
    """A version's chunks by int id, read from the store on demand (never loaded whole)."""

    def __init__(self, store: ChunkStore, ids: np.ndarray) -> None:
        self._store = store
        self._ids = ids

    def __getitem__(self, int_id: int) -> dict[str, Any]:
        rec = self._store.fetch([int_id]).get(int(int_id)) if int_id in self else None
        if rec is None:
            raise KeyError(int_id)
        return rec

    def __contains__(self, int_id: object) -> bool:
        if not isinstance(int_id, int | np.integer):
            return False
        r = int(np.searchsorted(self._ids, int_id))
        return r < len(self._ids) and int(self._ids[r]) == int_id

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def values(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        """Every chunk record, by id, fetched in batches."""
        return self._store.iter_records(self._ids)

    def items(self) -> Iterator[tuple[int, dict[str, Any]]]:  # type: ignore[override]
        return ((rec["int_id"], rec) for rec in self.values())


# Filtered IVF search probes more cells the fewer chunks pass (see LoadedIndex.dense_ids), and
# all of them when that still finds fewer than k.
def filtered_nprobe(nprobe: int, nlist: int, passing: int, total: int) -> int:
    """Cells to probe so that about as many passing vectors are scanned as without a filter."""
    return min(nlist, max(nprobe, math.ceil(nprobe * total / max(passing, 1))))


class LoadedIndex:
    """One version of one index, ready to search: files memory-mapped, chunks read by id."""

    # Hybrid fusion, tuned on SQuAD dev (bench/bench_indexer.py): fuse the top 100 of each list,
    # BM25 weighted 1.0 and dense 0.5 (BM25 is the stronger ranker there; 0.5 is best or close
    # to it for every rrf_k from 2 to 60).
    dense_weight: float = 0.5
    fusion_depth: int = 100

    def __init__(
        self,
        name: str,
        version: str,
        manifest: IndexManifest,
        folder: Path,
        faiss_index: Any,
        store: ChunkStore,
        ids: np.ndarray,
        embed: Callable[[list[str]], Any],
        *,
        rrf_k: int = 60,
        nprobe: int = 16,
        mmap: bool = True,
    ) -> None:
        import faiss

        self.name, self.version, self.manifest, self.folder = name, version, manifest, folder
        self.faiss_index = faiss_index
        self.store = store
        self.ids = ids  # ascending chunk ids: row r of BM25 and the fields is chunk ids[r]
        self.embed = embed  # texts -> normalized float32 [n, d]
        self.rrf_k = rrf_k
        self.nprobe = nprobe
        self.chunks = ChunkMap(store, ids)
        self.fields = FieldColumns(folder / FIELDS_DIR, list(manifest.fields), len(ids), mmap)
        self._mmap = mmap
        self._bm25: Bm25Model | None = None
        self._masks: OrderedDict[str, list[Any]] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self._ivf: Any = faiss.extract_index_ivf(faiss_index)
        except RuntimeError:
            self._ivf = None  # flat

    @property
    def size(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        """Release the store connection and the version's reader lock (both also go when the
        object is garbage-collected)."""
        self.store.close()
        self.release()

    def release(self) -> None:
        """Replaced by open_index with the release of the version's reader lock."""

    # --- filters ----------------------------------------------------------------------------
    # Masks of the last few distinct filters (a tenant's filter repeats): 1 byte a chunk each.
    mask_cache_size: int = 16

    def filter_mask(self, flt: MetadataFilter | dict[str, Any] | None) -> np.ndarray | None:
        """Rows (positions) that pass ``flt``; None for no filter. InvalidInput names a
        field this index does not have or a comparison its values cannot take."""
        entry = self._filter_entry(flt)
        return None if entry is None else entry[0]

    def _filter_entry(self, flt: MetadataFilter | dict[str, Any] | None) -> list[Any] | None:
        """[mask, FAISS id bitmap or None until dense search needs it], cached by filter."""
        parsed = parse_filter(flt)
        if parsed is None:
            return None
        key = parsed.key()
        with self._lock:
            entry = self._masks.get(key)
            if entry is not None:
                self._masks.move_to_end(key)
                return entry
        mask = parsed.mask(self.fields, self.name)
        mask.flags.writeable = False  # shared by every search that uses this filter
        entry = [mask, None]
        with self._lock:
            self._masks[key] = entry
            while len(self._masks) > self.mask_cache_size:
                self._masks.popitem(last=False)
        return entry

    def _bits(self, entry: list[Any] | None) -> np.ndarray | None:
        return None if entry is None else self._id_bitmap(entry)

    def _id_bitmap(self, entry: list[Any]) -> np.ndarray:
        """The filter's passing chunk ids as a bitmap over chunk ids (FAISS IDSelectorBitmap)."""
        if entry[1] is None:
            flags = np.zeros(max(self.manifest.next_int_id, 1), dtype=bool)
            flags[self.ids[entry[0]]] = True
            entry[1] = np.packbits(flags, bitorder="little")
        bits: np.ndarray = entry[1]
        return bits

    # --- dense ------------------------------------------------------------------------------
    def _search(self, vecs: np.ndarray, k: int, nprobe: int, sel: Any) -> tuple[Any, Any]:
        """FAISS search with per-call parameters (nothing on the shared index is mutated)."""
        import faiss

        if self._ivf is None:
            if sel is None:
                return self.faiss_index.search(vecs, k)
            params = faiss.SearchParameters()
            params.sel = sel
            return self.faiss_index.search(vecs, k, params=params)
        inner = faiss.SearchParametersIVF()
        inner.nprobe = nprobe
        if sel is not None:
            inner.sel = sel
        if isinstance(self.faiss_index, faiss.IndexPreTransform):  # OPQ in front of the IVF
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = inner
            return self.faiss_index.search(vecs, k, params=outer)
        return self.faiss_index.search(vecs, k, params=inner)

    def dense_ids(
        self,
        queries: list[str],
        k: int,
        mask: np.ndarray | None = None,
        bitmap: np.ndarray | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-k (chunk id, cosine) per query; with ``mask``, only passing rows compete.

        The mask becomes a FAISS ``IDSelectorBitmap`` over chunk ids (``bitmap``, when the
        caller has it already), applied inside the search (before the top-k). IVF kinds
        probe ``nprobe / fraction passing`` cells (as many passing vectors as an unfiltered
        search scans), and every cell for a query that still finds fewer than k.
        """
        import faiss

        n = self.size
        passing = n if mask is None else int(np.count_nonzero(mask))
        if not passing or not queries:
            return [[] for _ in queries]
        vecs = np.ascontiguousarray(self.embed(queries), dtype=np.float32)
        k = min(k, passing)
        sel = None
        nprobe = self.nprobe
        if mask is not None:
            if bitmap is None:
                bitmap = self._id_bitmap([mask, None])
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n: bytes
            if self._ivf is not None:
                nprobe = filtered_nprobe(self.nprobe, self._ivf.nlist, passing, n)
        scores, ids = self._search(vecs, k, nprobe, sel)
        if self._ivf is not None and nprobe < self._ivf.nlist:
            short = [q for q in range(len(queries)) if (ids[q] < 0).any()]
            if short and mask is not None:
                s2, i2 = self._search(vecs[short], k, self._ivf.nlist, sel)
                scores[short], ids[short] = s2, i2
        del bitmap  # the selector pointed into it until here
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_sc, strict=True) if i >= 0]
            for row_ids, row_sc in zip(ids, scores, strict=True)
        ]

    # --- BM25 -------------------------------------------------------------------------------
    def bm25_model(self) -> Bm25Model:
        """The persisted BM25 model, memory-mapped on first use (never rebuilt here)."""
        with self._lock:
            if self._bm25 is None:
                self._bm25 = Bm25Model(self.folder / BM25_DIR, mmap=self._mmap)
        return self._bm25

    def bm25_ids(
        self, queries: list[str], k: int, mask: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        """Top-k (chunk id, BM25 score) per query; ``mask`` removes rows before the top-k."""
        if not self.size:
            return [[] for _ in queries]
        model = self.bm25_model()
        out = []
        for q in queries:
            rows = model.top(bm25_tokenize(q), k, mask)  # stopwords only: finds nothing
            out.append([(int(self.ids[r]), s) for r, s in rows])
        return out

    # --- search -----------------------------------------------------------------------------
    def search_batch(
        self,
        queries: list[str],
        k: int,
        method: RetrievalMethod = "hybrid",
        filter: MetadataFilter | dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits for each query, among chunks whose metadata pass ``filter`` (see
        core.filters). Hybrid fuses dense and BM25 rankings with RRF."""
        if k < 1:
            raise InvalidInput("k must be at least 1", field="top_k")
        if method not in ("dense", "bm25", "hybrid"):
            raise InvalidInput(f"unknown retrieval method {method!r}", field="retrieval")
        flt = parse_filter(filter)
        entry = self._filter_entry(flt)
        mask = None if entry is None else entry[0]
        if method == "dense":
            ranked = self.dense_ids(queries, k, mask, self._bits(entry))
        elif method == "bm25":
            ranked = self.bm25_ids(queries, k, mask)
        else:
            # Fuse deeper lists than k so that RRF can promote what both rankers agree on.
            depth = max(self.fusion_depth, 4 * k)
            dense = self.dense_ids(queries, depth, mask, self._bits(entry))
            sparse = self.bm25_ids(queries, depth, mask)
            ranked = [
                rrf_fuse(
                    [[i for i, _ in d], [i for i, _ in s]],
                    k=self.rrf_k,
                    weights=[self.dense_weight, 1.0],
                )[:k]
                for d, s in zip(dense, sparse, strict=True)
            ]
        return self._hits(ranked, flt)

    def search(
        self,
        query: str,
        k: int,
        method: RetrievalMethod = "hybrid",
        filter: MetadataFilter | dict[str, Any] | None = None,
    ) -> list[Hit]:
        return self.search_batch([query], k, method, filter)[0]

    def _hits(
        self, ranked: list[list[tuple[int, float]]], flt: MetadataFilter | None
    ) -> list[list[Hit]]:
        records = self.store.fetch([i for row in ranked for i, _ in row])
        out = []
        for row in ranked:
            hits = []
            for i, s in row:
                c = records.get(i)
                # A filter compares 64-bit hashes of text values: check the real values.
                if c is None or (flt is not None and not flt.matches(c["metadata"])):
                    continue
                hits.append(Hit(c["id"], c["doc_id"], c["text"], float(s), c["metadata"]))
            out.append(hits)
        return out


def check_compatible(manifest: IndexManifest, embedder_id: str, dim: int) -> None:
    """Refuse an index built with another embedding model or dimension."""
    from ragtune.core.embed_runtime import mismatch_hint

    m_id, m_dim = manifest.embedding_model, manifest.embedding_dim
    if m_id != embedder_id or m_dim != dim:
        raise IndexMismatch(
            f"index {manifest.name!r} was built with embedder {m_id!r} ({m_dim}-d), "
            f"but the configured embedder is {embedder_id!r} ({dim}-d); rebuild the index "
            "or set the embedder it was built with" + mismatch_hint(m_id, embedder_id)
        )


class IndexEmbedder(Protocol):
    """What searching needs of an embedder (``core.models.Embedder`` is one)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], batch_size: int = ...) -> Any: ...


def _encoder(embedder: IndexEmbedder, batch_size: int) -> Callable[[list[str]], Any]:
    return lambda texts: embedder.encode(texts, batch_size=batch_size)


def _no_embedder(texts: list[str]) -> Any:
    raise InvalidInput(
        "this index was opened without an embedder: only BM25 search works", field="retrieval"
    )


class _VersionGone(Exception):
    """The version was deleted between reading CURRENT and opening it."""


def hold_version(vdir: Path) -> int | None:
    """Take a shared lock on a version (the writer deletes no version a reader holds); the
    fd to close when done. None for a version folder without a lock file."""
    try:
        fd = os.open(vdir / READERS_FILE, os.O_RDONLY)
    except FileNotFoundError:
        if not vdir.is_dir():
            raise _VersionGone from None
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not (vdir / MANIFEST).is_file():  # renamed away by the writer before we locked
            raise _VersionGone
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_faiss(path: Path, mmap: bool, flat: bool) -> Any:
    """Read an index file; memory-mapped, it is shared between processes (never modify it).

    In faiss-cpu 1.15, IO_FLAG_MMAP maps the inverted lists of the IVF kinds but still copies
    a flat index into memory; IO_FLAG_MMAP_IFC maps a flat index's vectors in place.
    """
    import faiss

    if not mmap:
        return faiss.read_index(str(path))
    flags = faiss.IO_FLAG_MMAP_IFC if flat else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


def open_index(
    settings: Settings,
    name: str,
    embedder: IndexEmbedder | None,
    version: str | None = None,
) -> LoadedIndex:
    """Load the live (or a given) version of an index, ready to search.

    Args:
        settings: data dir, embedding batch size, RRF k, IVF nprobe, index_mmap.
        name: the index.
        embedder: the embedder queries go through; the index must have been built with it
            (same model id and dimension). None opens the index for BM25 search only, without
            loading a model.
        version: a version id; None takes the live one.

    Raises:
        IndexNotFound: no such index (or version). ManifestError: its manifest cannot be used
        (IndexFormatOutdated: written by an older ragtune). IndexMismatch: it was built with
        another embedder.
    """
    for _ in range(5):  # a writer may swap and delete versions in between: read CURRENT again
        v = version or current_version(settings, name)
        if v is None:
            raise _not_found(name)
        try:
            return _open_version(settings, name, embedder, v)
        except _VersionGone:
            if version is not None:
                raise IndexNotFound(f"index {name!r} has no version {version!r}") from None
    raise IndexNotFound(f"index {name!r} kept changing while it was being opened; try again")


def _open_version(
    settings: Settings, name: str, embedder: IndexEmbedder | None, version: str
) -> LoadedIndex:
    vdir = version_dir(settings, name, version)
    if index_schema_version(vdir / MANIFEST) == LEGACY_INDEX_SCHEMA_VERSION:
        raise outdated(name, vdir / MANIFEST)
    fd = hold_version(vdir)
    try:
        manifest = read_manifest(settings, name, version)
        check_store(settings, name)
        if embedder is not None:
            check_compatible(manifest, embedder.model_id, embedder.dim)
        mmap = settings.index_mmap
        index = LoadedIndex(
            name,
            version,
            manifest,
            vdir,
            read_faiss(vdir / FAISS_FILE, mmap, flat=manifest.index_type == "flat"),
            ChunkStore(store_path(settings, name)),
            np.load(vdir / IDS_FILE, mmap_mode="r" if mmap else None),
            _no_embedder if embedder is None else _encoder(embedder, settings.embed_batch_size),
            rrf_k=settings.rrf_k,
            nprobe=settings.ivf_nprobe,
            mmap=mmap,
        )
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if fd is not None:
        index.release = weakref.finalize(index, _release, fd)  # type: ignore[method-assign]
    return index


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class IndexCache:
    """Keeps loaded indexes and swaps in a new version when CURRENT changes on disk.

    ``get`` is cheap (one small file read) and thread-safe; a request keeps the
    LoadedIndex it got, so a reload never disturbs requests in flight.
    """

    def __init__(self, settings: Settings, embedder: IndexEmbedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self._loaded: dict[str, LoadedIndex] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedIndex:
        validate_name(name)
        version = current_version(self.settings, name)
        if version is None:
            raise IndexNotFound(f"index {name!r} not found")
        cached = self._loaded.get(name)
        if cached is not None and cached.version == version:
            return cached
        with self._lock:
            cached = self._loaded.get(name)
            if cached is None or cached.version != version:
                # The live version, read again: it may have moved on since (open_index retries).
                cached = open_index(self.settings, name, self.embedder)
                self._loaded[name] = cached
        return cached

    def loaded(self) -> dict[str, str]:
        return {n: li.version for n, li in self._loaded.items()}
