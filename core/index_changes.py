"""How much an index changed since a version someone trained on or measured on.

A RAFT adapter is trained on passages from one index version, and a published decision was
measured on one. Both keep an ``IndexSnapshot`` of that version: which chunk ids each
document had (as compact id ranges) and a digest of the whole. Chunk int ids are never
reused (``IndexManifest.next_int_id``), so comparing a snapshot with the live version says
exactly what changed, whatever became of the old version's files:

- a document gone from the index: its chunks were **removed**;
- a document whose chunk ids differ: its chunks were **updated** (re-chunked, re-embedded);
- a document the snapshot does not know: its chunks were **added**.

Shares are of the snapshot's chunks (what the adapter or the measurement saw). Only
``live_documents`` knows how an index stores its per-document table; the rest works on
snapshots, so another storage format changes that one function.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ragtune.core.config import Settings
from ragtune.core.manifests import SnapshotRef, _Model

SNAPSHOT_FILE = "index-snapshot.json"  # the full snapshot beside an adapter's manifest


def encode_ranges(ids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3,7,9-10"`` (chunk ids of a document are mostly one run)."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(_run(run))
        run = [i]
    if run:
        out.append(_run(run))
    return ",".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def decode_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


class IndexSnapshot(_Model):
    """Which chunks one index version held, per document (compact)."""

    index: str
    version: str
    chunks: int
    documents: int
    digest: str  # sha256 over the sorted (document, chunk ids) pairs: equal means same chunks
    ranges: dict[str, str]  # document id -> its chunk int ids as ranges ("3-7,12")

    def ref(self) -> SnapshotRef:
        return SnapshotRef(
            index=self.index,
            version=self.version,
            chunks=self.chunks,
            documents=self.documents,
            digest=self.digest,
        )

    def write(self, path: Path) -> None:
        from ragtune.core.atomic import write_text_atomic

        write_text_atomic(path, self.model_dump_json() + "\n")

    @classmethod
    def read(cls, path: Path) -> IndexSnapshot | None:
        """The snapshot in ``path``; None when it is missing or unreadable."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            return None


class IndexChanges(_Model):
    """What changed in an index between a snapshot and its live version."""

    index: str
    since_version: str
    live_version: str | None  # None: the index no longer exists
    chunks_then: int
    chunks_now: int
    added: int  # chunks of documents the snapshot does not know
    updated: int  # the snapshot's chunks of documents whose chunks changed
    removed: int  # the snapshot's chunks of documents gone from the index
    documents_added: int
    documents_updated: int
    documents_removed: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed) or self.live_version is None

    def share(self, n: int) -> float:
        return round(n / self.chunks_then, 4) if self.chunks_then else (1.0 if n else 0.0)

    def summary(self) -> dict[str, object]:
        """The JSON the CLI and the service show."""
        return {
            "index": self.index,
            "since_version": self.since_version,
            "live_version": self.live_version,
            "changed": self.changed,
            "chunks_then": self.chunks_then,
            "chunks_now": self.chunks_now,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "added_share": self.share(self.added),
            "updated_share": self.share(self.updated),
            "removed_share": self.share(self.removed),
            "documents": {
                "added": self.documents_added,
                "updated": self.documents_updated,
                "removed": self.documents_removed,
            },
        }

    def text(self) -> str:
        if self.live_version is None:
            return f"index {self.index!r} no longer exists"
        if not self.changed:
            return f"index {self.index!r} unchanged since version {self.since_version}"
        parts = [
            f"{n} {what} ({self.share(n):.1%})"
            for n, what in (
                (self.updated, "updated"),
                (self.added, "added"),
                (self.removed, "removed"),
            )
            if n
        ]
        return (
            f"index {self.index!r} changed since version {self.since_version} "
            f"({self.chunks_then} chunks): " + ", ".join(parts)
        )


def make_snapshot(index: str, version: str, docs: Mapping[str, Sequence[int]]) -> IndexSnapshot:
    """A snapshot of ``docs`` (document id -> chunk int ids)."""
    ranges = {d: encode_ranges(ids) for d, ids in sorted(docs.items())}
    h = hashlib.sha256()
    for d, r in ranges.items():
        h.update(f"{d}\t{r}\n".encode())
    return IndexSnapshot(
        index=index,
        version=version,
        chunks=sum(len(set(ids)) for ids in docs.values()),
        documents=len(docs),
        digest=h.hexdigest(),
        ranges=ranges,
    )


def compare(
    then: IndexSnapshot, docs_now: Mapping[str, Sequence[int]] | None, live: str | None
) -> IndexChanges:
    """The changes from ``then`` to ``docs_now`` (the live version ``live``)."""
    now = {d: set(ids) for d, ids in (docs_now or {}).items()}
    added = updated = removed = d_added = d_updated = d_removed = 0
    for doc, text in then.ranges.items():
        ids = set(decode_ranges(text))
        if doc not in now:
            removed += len(ids)
            d_removed += 1
        elif now[doc] != ids:
            updated += len(ids)
            d_updated += 1
    for doc, ids in now.items():
        if doc not in then.ranges:
            added += len(ids)
            d_added += 1
    return IndexChanges(
        index=then.index,
        since_version=then.version,
        live_version=live,
        chunks_then=then.chunks,
        chunks_now=sum(len(ids) for ids in now.values()),
        added=added,
        updated=updated,
        removed=removed,
        documents_added=d_added,
        documents_updated=d_updated,
        documents_removed=d_removed,
    )


# ---- the one place that knows the index format --------------------------------------------

_docs_cache: OrderedDict[tuple[str, str, str], dict[str, list[int]]] = OrderedDict()
_lock = threading.Lock()


def live_documents(
    settings: Settings, index: str, version: str | None = None
) -> tuple[str, dict[str, list[int]]] | None:
    """(version, document id -> chunk int ids) of the live (or a given) version of ``index``;
    None when the index (or that version) does not exist.

    Raises:
        ManifestError: the version's manifest cannot be read.
    """
    from ragtune.core.index_store import current_version, read_documents, version_dir
    from ragtune.core.manifests import MANIFEST

    version = version or current_version(settings, index)
    if version is None or not (version_dir(settings, index, version) / MANIFEST).is_file():
        return None
    key = (str(settings.indexes_dir), index, version)
    with _lock:
        cached = _docs_cache.get(key)
        if cached is not None:
            _docs_cache.move_to_end(key)
            return version, cached
    # the document table lives in the chunk store (rows tagged with the versions holding them)
    docs = {d: list(e["chunks"]) for d, e in read_documents(settings, index, version).items()}
    with _lock:  # versions never change once written: a small cache is always right
        _docs_cache[key] = docs
        while len(_docs_cache) > 8:
            _docs_cache.popitem(last=False)
    return version, docs


def index_snapshot(settings: Settings, index: str, version: str | None = None) -> IndexSnapshot:
    """A snapshot of the live (or a given) version of ``index``.

    Raises:
        IndexNotFound: no such index or version. ManifestError: its manifest is unreadable.
    """
    from ragtune.core.errors import IndexNotFound

    found = live_documents(settings, index, version)
    if found is None:
        what = f"version {version} of index {index!r}" if version else f"index {index!r}"
        raise IndexNotFound(f"{what} does not exist")
    return make_snapshot(index, found[0], found[1])


def index_changes(settings: Settings, index: str, since: IndexSnapshot) -> IndexChanges:
    """What changed in ``index`` since the version ``since`` was taken of."""
    found = live_documents(settings, index)
    if found is None:
        return compare(since, None, None)
    return compare(since, found[1], found[0])


def version_exists(settings: Settings, index: str, version: str) -> bool:
    """Whether ``version`` of ``index`` is still on disk (live, or kept for readers)."""
    from ragtune.core.index_store import version_dir
    from ragtune.core.manifests import MANIFEST

    return (version_dir(settings, index, version) / MANIFEST).is_file()
