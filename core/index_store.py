"""The on-disk index format and its read side (search).

Layout of one named index (the indexer writes it; everything else only reads)::

    <data>/indexes/<name>/
        CURRENT                 the live version id (replaced atomically)
        versions/<version>/
            manifest.json       core.manifests.IndexManifest: schema version, embedder id +
                                dim, chunker, per-document table, counts, times
            index.faiss         IndexIDMap2 over IndexFlatIP (exact) or IndexIVFFlat (approximate)
            chunks.jsonl        one chunk a line: {int_id, id, doc_id, text, span, metadata}

Vectors are L2-normalized, so inner product is cosine similarity. A reader loads a version
whole into memory, so the writer can swap CURRENT (and later delete old versions) while
requests that hold the old version finish undisturbed. ``open_index`` is the one way to load
an index (the CLI, the service's ``IndexCache`` and the tuner's RAFT builder all use it).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragtune.core.config import Settings
from ragtune.core.errors import IndexMismatch, IndexNotFound, InvalidInput
from ragtune.core.manifests import MANIFEST, IndexManifest
from ragtune.core.types import Hit, RetrievalMethod

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
FAISS_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"

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
        ManifestError: the manifest is missing, corrupt or of an unknown schema version.
    """
    version = version or current_version(settings, name)
    if version is None:
        raise _not_found(name)
    return IndexManifest.read(
        version_dir(settings, name, version) / MANIFEST,
        hint=f"remove the index with `ragtune index rm {name}` and build it again",
    )


_TOKEN_RE = re.compile(r"[a-z0-9]+")
# A short English stopword list: BM25 gains little from scoring "the" and "of".
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "how",
        "did",
        "do",
        "does",
        "you",
        "your",
        "we",
        "our",
    ]
)


_stemmers = threading.local()  # a Snowball stemmer is not thread-safe: one per thread


def _stem_words(words: list[str]) -> list[str]:
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        try:
            import Stemmer  # PyStemmer: the C Snowball stemmer, ~1 µs a word
        except ImportError:  # still works, just a little less recall (see bench/README.md)
            _stemmers.english = False
            return words
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    return stemmer.stemWords(words) if stemmer else words


def bm25_tokenize(text: str) -> list[str]:
    """Lowercase, stopword-free, Snowball-stemmed word tokens; the same at build and query time.

    Stemming matches "founded" to "founding" and "countries" to "country"; on SQuAD dev it
    lifts BM25 recall@5 by about two points (bench/README.md).
    """
    return _stem_words([t for t in _TOKEN_RE.findall(text.lower()) if t not in STOPWORDS])


def bm25_text(chunk: dict[str, Any]) -> str:
    """What BM25 indexes for a chunk: its document's title (when it has one) and its text.

    Passages often never name their subject ("It was built in 1889"); the title does.
    """
    title = (chunk.get("metadata") or {}).get("title")
    return f"{title}\n{chunk['text']}" if isinstance(title, str) and title else chunk["text"]


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


@dataclass
class LoadedIndex:
    """One version of one index, in memory, ready to search."""

    name: str
    version: str
    manifest: IndexManifest
    faiss_index: Any
    chunks: dict[int, dict[str, Any]]  # int_id -> chunk record
    embed: Callable[[list[str]], Any]  # texts -> normalized float32 [n, d]
    rrf_k: int = 60
    nprobe: int = 16
    # Hybrid fusion, tuned on SQuAD dev (bench/bench_indexer.py): fuse the top 100 of each list,
    # BM25 weighted 1.0 and dense 0.5 (BM25 is the stronger ranker there; 0.5 is best or close
    # to it for every rrf_k from 2 to 60).
    dense_weight: float = 0.5
    fusion_depth: int = 100
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    _bm25: Any = field(default=None, repr=False)
    _bm25_ids: list[int] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return len(self.chunks)

    def _bm25_model(self) -> tuple[Any, list[int]]:
        # Built lazily on first BM25 use: dense-only users never pay for it.
        with self._lock:
            if self._bm25 is None:
                import logging

                import bm25s

                logging.getLogger("bm25s").setLevel(logging.WARNING)
                ids = sorted(self.chunks)
                model = bm25s.BM25(k1=self.bm25_k1, b=self.bm25_b)
                model.index(
                    [bm25_tokenize(bm25_text(self.chunks[i])) for i in ids], show_progress=False
                )
                self._bm25, self._bm25_ids = model, ids
        return self._bm25, self._bm25_ids

    def dense_ids(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        import numpy as np

        if not self.chunks:
            return [[] for _ in queries]
        vecs = np.asarray(self.embed(queries), dtype=np.float32)
        self._set_nprobe()
        scores, ids = self.faiss_index.search(vecs, min(k, len(self.chunks)))
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_sc, strict=True) if i >= 0]
            for row_ids, row_sc in zip(ids, scores, strict=True)
        ]

    def _set_nprobe(self) -> None:
        import faiss

        try:
            faiss.extract_index_ivf(self.faiss_index).nprobe = self.nprobe
        except (RuntimeError, AttributeError):
            pass  # not an IVF index

    def bm25_ids(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        if not self.chunks:
            return [[] for _ in queries]
        model, ids = self._bm25_model()
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        tokens = [bm25_tokenize(q) for q in queries]
        asked = [i for i, t in enumerate(tokens) if t]  # a query of stopwords only finds nothing
        if not asked:
            return out
        # One call for the whole batch: bm25s scores every query against its sparse matrix.
        docs, scores = model.retrieve(
            [tokens[i] for i in asked], k=min(k, len(ids)), show_progress=False
        )
        for row, qi in enumerate(asked):
            out[qi] = [
                (ids[int(d)], float(s))
                for d, s in zip(docs[row], scores[row], strict=True)
                if s > 0
            ]
        return out

    def search_batch(
        self, queries: list[str], k: int, method: RetrievalMethod = "hybrid"
    ) -> list[list[Hit]]:
        """Top-k hits for each query. Hybrid fuses dense and BM25 rankings with RRF."""
        if k < 1:
            raise InvalidInput("k must be at least 1", field="top_k")
        if method == "dense":
            ranked = self.dense_ids(queries, k)
        elif method == "bm25":
            ranked = self.bm25_ids(queries, k)
        elif method == "hybrid":
            # Fuse deeper lists than k so that RRF can promote what both rankers agree on.
            depth = max(self.fusion_depth, 4 * k)
            dense = self.dense_ids(queries, depth)
            sparse = self.bm25_ids(queries, depth)
            ranked = [
                rrf_fuse(
                    [[i for i, _ in d], [i for i, _ in s]],
                    k=self.rrf_k,
                    weights=[self.dense_weight, 1.0],
                )[:k]
                for d, s in zip(dense, sparse, strict=True)
            ]
        else:
            raise InvalidInput(f"unknown retrieval method {method!r}", field="retrieval")
        return [[self._hit(i, s) for i, s in row] for row in ranked]

    def search(self, query: str, k: int, method: RetrievalMethod = "hybrid") -> list[Hit]:
        return self.search_batch([query], k, method)[0]

    def _hit(self, int_id: int, score: float) -> Hit:
        c = self.chunks[int_id]
        return Hit(c["id"], c["doc_id"], c["text"], float(score), dict(c.get("metadata") or {}))


def read_chunks(path: Path) -> dict[int, dict[str, Any]]:
    chunks: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                chunks[int(rec["int_id"])] = rec
    return chunks


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


def open_index(
    settings: Settings,
    name: str,
    embedder: IndexEmbedder | None,
    version: str | None = None,
) -> LoadedIndex:
    """Load the live (or a given) version of an index, ready to search.

    Args:
        settings: data dir, embedding batch size, RRF k, IVF nprobe.
        name: the index.
        embedder: the embedder queries go through; the index must have been built with it
            (same model id and dimension). None opens the index for BM25 search only, without
            loading a model.
        version: a version id; None takes the live one.

    Raises:
        IndexNotFound: no such index. ManifestError: its manifest cannot be used.
        IndexMismatch: it was built with another embedder.
    """
    import faiss

    version = version or current_version(settings, name)
    if version is None:
        raise _not_found(name)
    manifest = read_manifest(settings, name, version)
    if embedder is not None:
        check_compatible(manifest, embedder.model_id, embedder.dim)
    vdir = version_dir(settings, name, version)
    return LoadedIndex(
        name=name,
        version=version,
        manifest=manifest,
        faiss_index=faiss.read_index(str(vdir / FAISS_FILE)),
        chunks=read_chunks(vdir / CHUNKS_FILE),
        embed=_no_embedder if embedder is None else _encoder(embedder, settings.embed_batch_size),
        rrf_k=settings.rrf_k,
        nprobe=settings.ivf_nprobe,
    )


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
                cached = open_index(self.settings, name, self.embedder, version)
                self._loaded[name] = cached
        return cached

    def loaded(self) -> dict[str, str]:
        return {n: li.version for n, li in self._loaded.items()}
