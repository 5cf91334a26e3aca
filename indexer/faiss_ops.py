"""FAISS index construction and incremental edits (flat exact, or IVF approximate).

Both kinds carry our 64-bit chunk ids (``IndexIDMap2`` over ``IndexFlatIP``; ``IndexIVFFlat``
stores ids natively), so an update removes and adds vectors by id and never re-embeds the
chunks it keeps. Vectors are L2-normalized, so inner product is cosine similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ragtune.core.manifests import IndexManifest, IvfInfo

# faiss's k-means wants about 39 training points per cell; fewer cells than this is not worth
# the approximation, so a smaller corpus gets an exact index even when IVF was asked for.
MIN_POINTS_PER_CELL = 39
MIN_IVF_CELLS = 4
# Retrain the IVF cells when the corpus has grown or shrunk this much since they were trained.
RETRAIN_FACTOR = 4.0


@dataclass(frozen=True)
class IndexKind:
    """What was built: ``flat`` or ``ivf`` (with its cell count and training-set size)."""

    type: Literal["flat", "ivf"]
    nlist: int = 0
    trained_on: int = 0

    def ivf_info(self, requested_nlist: int) -> IvfInfo:
        """The manifest's ``ivf`` section: the setting, and the cells when this is IVF."""
        if self.type == "ivf":
            return IvfInfo(
                requested_nlist=requested_nlist,
                type="ivf",
                nlist=self.nlist,
                trained_on=self.trained_on,
            )
        return IvfInfo(requested_nlist=requested_nlist)

    @classmethod
    def from_manifest(cls, manifest: IndexManifest) -> IndexKind:
        return cls(manifest.index_type, manifest.ivf.nlist or 0, manifest.ivf.trained_on or 0)


def ivf_cells(n: int, requested: int) -> int:
    """Cells for an IVF over ``n`` vectors: the setting, or 4*sqrt(n), within what n can train."""
    if requested:
        return min(requested, n)
    return min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL)


def choose_kind(requested_type: str, n: int, requested_nlist: int) -> IndexKind:
    if requested_type == "ivf":
        nlist = ivf_cells(n, requested_nlist)
        if nlist >= MIN_IVF_CELLS:
            return IndexKind("ivf", nlist, n)
    return IndexKind("flat")


def new_index(kind: IndexKind, dim: int, train_vecs: np.ndarray | None = None) -> Any:
    import faiss

    if kind.type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, kind.nlist, faiss.METRIC_INNER_PRODUCT)
    # The quantizer must outlive this function: tell SWIG the IVF owns it.
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # SWIG proxy attribute
    assert train_vecs is not None
    index.train(train_vecs)
    return index


def all_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) stored in a flat-with-ids or IVF-Flat index."""
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


def needs_retrain(old: IndexKind, kind_now: IndexKind, requested_nlist: int) -> bool:
    """Keep the old IVF cells unless the corpus size changed a lot or the cell count setting did."""
    if old.type != kind_now.type:
        return True
    if old.type != "ivf":
        return False
    n = kind_now.trained_on
    return (
        n > RETRAIN_FACTOR * old.trained_on
        or n * RETRAIN_FACTOR < old.trained_on
        or (requested_nlist != 0 and kind_now.nlist != old.nlist)
    )


def updated_index(
    old_index: Any | None,
    old_kind: IndexKind | None,
    drop_ids: np.ndarray,
    new_ids: np.ndarray,
    new_vecs: np.ndarray,
    requested_type: str,
    requested_nlist: int,
    dim: int,
    rebuild: bool = False,
) -> tuple[Any, IndexKind]:
    """The next index: the old one minus ``drop_ids`` plus the new vectors.

    The old index is edited in place when its kind still fits (the caller read it from disk,
    so it is a private copy); otherwise every kept vector is taken out of it and a fresh index
    of the right kind is built (e.g. the first time a growing corpus is big enough for IVF, or
    ``rebuild`` when the index type settings changed).
    """
    import faiss

    n_after = (old_index.ntotal if old_index is not None else 0) - len(drop_ids) + len(new_ids)
    kind = choose_kind(requested_type, n_after, requested_nlist)
    if old_index is not None and old_kind is not None:
        if not rebuild and not needs_retrain(old_kind, kind, requested_nlist):
            if len(drop_ids):
                old_index.remove_ids(faiss.IDSelectorBatch(drop_ids.astype(np.int64)))
            if len(new_ids):
                old_index.add_with_ids(new_vecs, new_ids.astype(np.int64))
            return old_index, old_kind
        ids, vecs = all_vectors(old_index)
        keep = ~np.isin(ids, drop_ids)
        new_ids = np.concatenate([ids[keep], new_ids.astype(np.int64)])
        new_vecs = np.concatenate([vecs[keep], new_vecs]) if len(new_vecs) else vecs[keep]
    index = new_index(kind, dim, new_vecs if kind.type == "ivf" else None)
    if len(new_ids):
        index.add_with_ids(np.ascontiguousarray(new_vecs, dtype=np.float32), new_ids)
    return index, kind
