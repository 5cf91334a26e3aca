"""Converting a schema-1 index version (``chunks.jsonl`` + ``index.faiss``) into the chunk store.

Readers refuse a schema-1 index with a message saying how to convert it: an ordinary update
run. That run reads the old version's chunk records and exact vectors, and writes the
documents it keeps into the new store (with the metadata this run loaded for them, when it
loaded them: file type and modification time included), so nothing is re-embedded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.errors import DataError
from ragtune.core.index_store import CHUNKS_FILE, FAISS_FILE
from ragtune.core.manifests import LegacyIndexManifest
from ragtune.core.types import Document
from ragtune.indexer.faiss_ops import IndexKind, all_vectors
from ragtune.indexer.plan import OldDoc
from ragtune.indexer.store_write import DocRow, StoreWriter


@dataclass
class LegacyVersion:
    """A schema-1 live version, read whole (such indexes were small enough for that)."""

    manifest: LegacyIndexManifest
    folder: Path
    records: dict[int, dict[str, Any]]  # int_id -> chunk record

    @classmethod
    def read(cls, manifest: LegacyIndexManifest, folder: Path) -> LegacyVersion:
        records: dict[int, dict[str, Any]] = {}
        with (folder / CHUNKS_FILE).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    records[int(rec["int_id"])] = rec
        return cls(manifest, folder, records)

    def kind(self) -> IndexKind:
        m = self.manifest
        return IndexKind(m.index_type, m.ivf.nlist or 0, m.ivf.trained_on or 0)

    def old_docs(self) -> dict[str, OldDoc]:
        return {
            doc_id: OldDoc(doc_id, e.sha256, e.source, e.chunks)
            for doc_id, e in self.manifest.documents.items()
        }

    def ids(self) -> np.ndarray:
        return np.asarray(sorted(self.records), dtype=np.int64)


def carry(
    legacy: LegacyVersion,
    keep: list[str],
    loaded: dict[str, Document],
    store: StoreWriter,
    seq: int,
) -> dict[int, dict[str, Any]]:
    """Write the kept documents of ``legacy`` into ``store`` (inside its transaction) with
    their chunks and vectors; returns the metadata each kept chunk now has, by int id."""
    import faiss

    docs = legacy.manifest.documents
    meta_of: dict[int, dict[str, Any]] = {}

    def rows() -> Iterator[tuple[DocRow, str, list[tuple[int, str, str, int, int]]]]:
        for n, doc_id in enumerate(keep):
            e = docs[doc_id]
            ids = sorted(e.chunks)
            if not ids or ids != list(range(ids[0], ids[0] + len(ids))):
                raise DataError(
                    f"index {legacy.manifest.name!r}: document {doc_id!r} has chunk ids that "
                    "are not consecutive; remove the index and build it again"
                )
            recs = [legacy.records[i] for i in ids]
            meta = loaded[doc_id].metadata if doc_id in loaded else recs[0].get("metadata", {})
            for i in ids:
                meta_of[i] = meta
            row = DocRow(n, doc_id, e.sha256, e.source, ids[0], len(ids))
            chunks = [(r["int_id"], r["id"], r["text"], *r["span"]) for r in recs]
            yield row, json.dumps(meta, ensure_ascii=False, default=str), chunks

    store.add_rows(rows(), seq)
    kept_ids = np.asarray(sorted(meta_of), dtype=np.int64)
    index = faiss.read_index(str(legacy.folder / FAISS_FILE))
    ids, vecs = all_vectors(index)
    order = np.argsort(ids)
    store.add_vectors(kept_ids, vecs[order[np.searchsorted(ids, kept_ids, sorter=order)]])
    return meta_of
