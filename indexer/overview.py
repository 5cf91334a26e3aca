"""Descriptions of indexes for people and scripts: ``index list`` and ``index show``.

Both read the live version's manifest (``core.manifests.IndexManifest``) and the size of its
files; ``show`` also asks the chunk store for the sources and a few document ids. Nothing is
loaded into memory.
"""

from __future__ import annotations

from pydantic import BaseModel

from ragtune.core.chunk_store import ChunkStore
from ragtune.core.config import Settings
from ragtune.core.errors import ManifestError
from ragtune.core.index_store import (
    FAISS_FILE,
    list_indexes,
    read_manifest,
    store_path,
    version_dir,
)
from ragtune.core.manifests import ChunkerConfig, FieldInfo, IndexManifest, IvfInfo


class IndexOverview(BaseModel):
    """One index in a line (``index list``); ``model_dump()`` is its JSON."""

    name: str
    version: str
    previous_version: str | None
    documents: int
    chunks: int
    embedding_model: str
    embedding_dim: int
    index_type: str
    ivf: IvfInfo | None  # the trained cells, for an IVF index
    chunker: ChunkerConfig
    created: str
    updated: str
    fields: dict[str, FieldInfo]  # filterable metadata fields
    bytes: int  # the version's files together (the shared chunk store not included)
    faiss_bytes: int
    store_bytes: int  # the chunk store, shared by every version of the index


class IndexDescription(IndexOverview):
    """``IndexOverview`` plus where the documents came from (``index show``)."""

    sources: dict[str, int]  # file -> documents from it
    document_ids: list[str]  # the first few, sorted


def _overview(settings: Settings, name: str, m: IndexManifest) -> IndexOverview:
    vdir = version_dir(settings, name, m.version)
    store = store_path(settings, name)
    return IndexOverview(
        name=name,
        version=m.version,
        previous_version=m.previous_version,
        documents=m.counts.documents,
        chunks=m.counts.chunks,
        embedding_model=m.embedding_model,
        embedding_dim=m.embedding_dim,
        index_type=m.index_type,
        ivf=m.ivf if m.index_type == "ivf" else None,
        chunker=m.chunker,
        created=m.created,
        updated=m.updated,
        fields=m.fields,
        bytes=sum(f.stat().st_size for f in vdir.rglob("*") if f.is_file()),
        faiss_bytes=(vdir / FAISS_FILE).stat().st_size,
        store_bytes=sum(
            p.stat().st_size for p in (store, store.with_name(store.name + "-wal")) if p.is_file()
        ),
    )


def index_overview(settings: Settings, name: str) -> IndexOverview:
    """A short description of one index (no document table)."""
    return _overview(settings, name, read_manifest(settings, name))


def describe_index(settings: Settings, name: str, max_documents: int = 20) -> IndexDescription:
    """``index_overview`` plus the sources and a sample of document ids."""
    m = read_manifest(settings, name)
    store = ChunkStore(store_path(settings, name))
    try:
        sources, ids = store.sources(m.seq), store.document_ids(m.seq, max_documents)
    finally:
        store.close()
    return IndexDescription(
        **dict(_overview(settings, name, m)),
        sources=dict(sorted(sources.items())),
        document_ids=ids,
    )


def list_overviews(settings: Settings) -> tuple[list[IndexOverview], list[ManifestError]]:
    """Every index whose manifest reads, and the problems of those whose manifest does not
    (one broken index does not hide the others)."""
    found, problems = [], []
    for name in list_indexes(settings):
        try:
            found.append(index_overview(settings, name))
        except ManifestError as e:
            problems.append(e)
    return found, problems
