"""FAISS index construction and incremental edits: exact, IVF, and compressed IVF.

Every kind carries our 64-bit chunk ids, so an update removes and adds vectors by id
(``remove_ids``) and never re-embeds the chunks it keeps. Vectors are L2-normalized, so inner
product is cosine similarity.

| type      | FAISS                            | bytes a vector (384-d) | notes                    |
|-----------|----------------------------------|------------------------|--------------------------|
| flat      | IDMap2 over IndexFlat (IP)       | 1536                   | exact: the default       |
| ivf       | IndexIVFFlat                     | 1536                   | approximate, full floats |
| ivf_sq8   | IndexIVFScalarQuantizer (SQ8)    | 384                    | 8 bits a dimension       |
| ivf_pq    | [OPQ +] IndexIVFPQ, pq_m x 8 bit | pq_m (48)              | smallest, least recall   |

IVF cells (and SQ ranges, PQ codebooks, the OPQ rotation) are trained on a seeded random
sample (``ivf_train_points``), not the whole corpus. A corpus too small to train them gets an
exact index instead (the manifest says which was built). The cells are kept across updates
and retrained when the corpus has grown or shrunk 4x; a retrain or a change of type rebuilds
from the kept vectors: read back from an exact index, or from the chunk store's float16 copy
when the old index is lossy (decoding SQ/PQ codes and re-encoding would compound the error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput
from ragtune.core.manifests import IndexManifest, IndexType, IvfInfo

# faiss's k-means wants about 39 training points per cell; fewer cells than this is not worth
# the approximation, so a smaller corpus gets an exact index even when IVF was asked for.
MIN_POINTS_PER_CELL = 39
MIN_IVF_CELLS = 4
TRAIN_POINTS_PER_CELL = 64  # the default sample: 64 a cell ...
MIN_TRAIN_POINTS = 10_000  # ... but at least this (a PQ codebook has 256 centroids x 39)
PQ_CENTROIDS = 256  # 8-bit PQ codes
# Retrain the IVF cells when the corpus has grown or shrunk this much since they were trained.
RETRAIN_FACTOR = 4.0
IVF_TYPES = ("ivf", "ivf_sq8", "ivf_pq")
LOSSY_TYPES = ("ivf_sq8", "ivf_pq")
SAMPLE_SEED = 0


@dataclass(frozen=True)
class VectorConfig:
    """The index settings a build asks for (compared with what the live version was built as)."""

    type: IndexType
    nlist: int = 0  # 0: 4*sqrt(n)
    pq_m: int = 0  # 0: dim / 8
    opq: bool = False
    train_points: int = 0  # 0: 64 a cell, at least 10,000

    @classmethod
    def from_settings(cls, s: Settings) -> VectorConfig:
        return cls(s.index_type, s.ivf_nlist, s.pq_m, s.opq, s.ivf_train_points)


@dataclass(frozen=True)
class IndexKind:
    """What was built: the type, its cells, its training sample and PQ layout."""

    type: IndexType
    nlist: int = 0
    trained_on: int = 0  # corpus size at training (retrain when it drifts 4x)
    train_points: int = 0  # vectors in the training sample
    pq_m: int = 0
    opq: bool = False

    @property
    def lossy(self) -> bool:
        return self.type in LOSSY_TYPES

    def factory(self, dim: int) -> str:
        """The faiss.index_factory string of this kind."""
        if self.type == "flat":
            return "IDMap2,Flat"
        code = {"ivf": "Flat", "ivf_sq8": "SQ8", "ivf_pq": f"PQ{self.pq_m}"}[self.type]
        rotate = f"OPQ{self.pq_m}," if self.type == "ivf_pq" and self.opq else ""
        return f"{rotate}IVF{self.nlist},{code}"

    def ivf_info(self, want: VectorConfig) -> IvfInfo:
        """The manifest's ``ivf`` section: the settings, and the cells when this is IVF."""
        built = self.type in IVF_TYPES
        return IvfInfo(
            requested_nlist=want.nlist,
            nlist=self.nlist if built else None,
            trained_on=self.trained_on if built else None,
            train_points=self.train_points if built else None,
            requested_pq_m=want.pq_m,
            pq_m=self.pq_m if self.type == "ivf_pq" else None,
            opq=self.opq and self.type == "ivf_pq",
        )

    @classmethod
    def from_manifest(cls, m: IndexManifest) -> IndexKind:
        return cls(
            m.index_type,
            m.ivf.nlist or 0,
            m.ivf.trained_on or 0,
            m.ivf.train_points or 0,
            m.ivf.pq_m or 0,
            m.ivf.opq,
        )


def ivf_cells(n: int, requested: int) -> int:
    """Cells for an IVF over ``n`` vectors: the setting, or 4*sqrt(n), within what n can train."""
    if requested:
        return min(requested, n)
    return min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL)


def pq_subquantizers(dim: int, requested: int) -> int:
    """PQ sub-quantizers: the setting (it must divide ``dim``), or dim/8 rounded to a divisor."""
    if requested:
        if dim % requested:
            raise InvalidInput(
                f"pq_m = {requested} does not divide the embedding dimension {dim}; "
                f"use a divisor of {dim} (e.g. {pq_subquantizers(dim, 0)})",
                field="pq_m",
            )
        return requested
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def train_size(n: int, nlist: int, requested: int) -> int:
    """Vectors in the training sample: the setting, or 64 a cell but at least 10,000."""
    want = requested or max(TRAIN_POINTS_PER_CELL * nlist, MIN_TRAIN_POINTS)
    return min(n, want)


def choose_kind(want: VectorConfig, n: int, dim: int) -> IndexKind:
    """The kind to build for ``n`` vectors; exact (flat) when ``n`` is too small to train."""
    if want.type in IVF_TYPES:
        nlist = ivf_cells(n, want.nlist)
        pq_m = pq_subquantizers(dim, want.pq_m) if want.type == "ivf_pq" else 0
        points = train_size(n, nlist, want.train_points)
        enough = nlist >= MIN_IVF_CELLS and points >= nlist * MIN_POINTS_PER_CELL
        if want.type == "ivf_pq":
            enough = enough and points >= PQ_CENTROIDS * MIN_POINTS_PER_CELL
        if enough:
            return IndexKind(want.type, nlist, n, points, pq_m, want.opq and pq_m > 0)
    return IndexKind("flat")


def new_index(kind: IndexKind, dim: int, train_vecs: np.ndarray | None = None) -> Any:
    """An empty index of ``kind``, trained on ``train_vecs`` when it needs training."""
    import faiss

    index = faiss.index_factory(dim, kind.factory(dim), faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        assert train_vecs is not None
        index.train(np.ascontiguousarray(train_vecs, dtype=np.float32))
    return index


def sample_rows(n: int, size: int) -> np.ndarray:
    """A seeded random sample of ``size`` row numbers out of ``n``, sorted."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, size=size, replace=False))


def all_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) stored in an exact index (flat with ids, or IVF-Flat)."""
    import faiss

    d = index.d
    if index.ntotal == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, d), dtype=np.float32)
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vecs = index.index.reconstruct_n(0, index.ntotal)
        return ids, np.ascontiguousarray(vecs, dtype=np.float32)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    assert invlists is not None  # an IVF index always has its inverted lists
    all_ids, all_vecs = [], []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size).copy()
        all_ids.append(ids.astype(np.int64))
        all_vecs.append(codes.view(np.float32).reshape(size, d))
    return np.concatenate(all_ids), np.ascontiguousarray(np.concatenate(all_vecs))


def needs_retrain(old: IndexKind, now: IndexKind, want: VectorConfig) -> bool:
    """Keep the old cells unless the type, a setting or the corpus size changed a lot."""
    if old.type != now.type:
        return True
    if old.type not in IVF_TYPES:
        return False
    n = now.trained_on
    return (
        n > RETRAIN_FACTOR * old.trained_on
        or n * RETRAIN_FACTOR < old.trained_on
        or (want.nlist != 0 and now.nlist != old.nlist)
        or (old.pq_m, old.opq) != (now.pq_m, now.opq)
    )


# Vectors of the given ids (float32, in that order), for a rebuild from a lossy index.
VectorSource = Callable[[np.ndarray], np.ndarray]


def updated_index(
    old_index: Any | None,
    old_kind: IndexKind | None,
    old_ids: np.ndarray,
    drop_ids: np.ndarray,
    new_ids: np.ndarray,
    new_vecs: np.ndarray,
    want: VectorConfig,
    dim: int,
    stored_vectors: VectorSource,
    rebuild: bool = False,
) -> tuple[Any, IndexKind]:
    """The next index: the old one minus ``drop_ids`` plus the new vectors.

    The old index is edited in place when its kind still fits (the caller read it from disk,
    so it is a private copy); otherwise the kept vectors are gathered and a fresh index of the
    right kind is trained and filled (the first time a growing corpus is big enough for IVF,
    a 4x drift, or ``rebuild`` when the index settings changed).
    """
    import faiss

    n_after = len(old_ids) - len(drop_ids) + len(new_ids)
    kind = choose_kind(want, n_after, dim)
    if old_index is not None and old_kind is not None:
        if not rebuild and not needs_retrain(old_kind, kind, want):
            if len(drop_ids):
                old_index.remove_ids(faiss.IDSelectorBatch(drop_ids.astype(np.int64)))
            if len(new_ids):
                old_index.add_with_ids(np.ascontiguousarray(new_vecs), new_ids.astype(np.int64))
            return old_index, old_kind
        keep_ids = old_ids[~np.isin(old_ids, drop_ids)]
        if old_kind.lossy:
            keep_vecs = stored_vectors(keep_ids)
        else:
            ids, vecs = all_vectors(old_index)
            order = np.argsort(ids)
            keep_vecs = vecs[order[np.searchsorted(ids, keep_ids, sorter=order)]]
        del old_index
        new_ids = np.concatenate([keep_ids, new_ids.astype(np.int64)])
        new_vecs = np.concatenate([keep_vecs, new_vecs]) if len(new_vecs) else keep_vecs
    sample = sample_rows(len(new_ids), kind.train_points) if kind.type != "flat" else None
    index = new_index(kind, dim, new_vecs[sample] if sample is not None else None)
    if len(new_ids):
        index.add_with_ids(np.ascontiguousarray(new_vecs, dtype=np.float32), new_ids)
    return index, kind
