"""Descriptions of indexes for people and scripts: ``index list`` and ``index show``.

Both read the live version's manifest (``core.manifests.IndexManifest``) and the size of its
files; nothing is loaded into memory.
"""

from __future__ import annotations

from pydantic import BaseModel

from ragtune.core.config import Settings
from ragtune.core.errors import ManifestError
from ragtune.core.index_store import FAISS_FILE, list_indexes, read_manifest, version_dir
from ragtune.core.manifests import ChunkerConfig, IndexManifest, IvfInfo


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
    bytes: int  # the version's files together
    faiss_bytes: int


class IndexDescription(IndexOverview):
    """``IndexOverview`` plus where the documents came from (``index show``)."""

    sources: dict[str, int]  # file -> documents from it
    document_ids: list[str]  # the first few, sorted


def _overview(settings: Settings, name: str, m: IndexManifest) -> IndexOverview:
    vdir = version_dir(settings, name, m.version)
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
        bytes=sum(f.stat().st_size for f in vdir.iterdir() if f.is_file()),
        faiss_bytes=(vdir / FAISS_FILE).stat().st_size,
    )


def index_overview(settings: Settings, name: str) -> IndexOverview:
    """A short description of one index (no document table)."""
    return _overview(settings, name, read_manifest(settings, name))


def describe_index(settings: Settings, name: str, max_documents: int = 20) -> IndexDescription:
    """``index_overview`` plus the sources and a sample of document ids."""
    m = read_manifest(settings, name)
    sources: dict[str, int] = {}
    for info in m.documents.values():
        sources[info.source] = sources.get(info.source, 0) + 1
    return IndexDescription(
        **dict(_overview(settings, name, m)),
        sources=dict(sorted(sources.items())),
        document_ids=sorted(m.documents)[:max_documents],
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
