"""What a run does to each document: added / updated / unchanged / removed / kept.

Documents are keyed by id and content hash. Files whose size and modification time are the
same as when they were last read are not read at all (``LoadResult.unchanged_sources``): their
documents are unchanged without being looked at, so a run costs what changed, not the corpus.

Pruning removes every indexed document this run did not produce (the index mirrors the paths
given), except documents whose file failed to load this run, and nothing at all when a given
path is missing: a typo in a path must not empty an index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragtune.core.types import Document
from ragtune.indexer.loaders import LoadIssue, LoadResult

# The fingerprint of a file whose documents are indexed but that did not load cleanly: it
# matches no real file, so the file is read again next time.
NO_FINGERPRINT = (-1, -1)


@dataclass(frozen=True)
class OldDoc:
    """An indexed document as the live version has it."""

    doc_id: str
    sha256: str
    source: str
    chunks: Sequence[int]  # its chunks' int ids
    row: int | None = None  # its row in the chunk store (None for a schema-1 version)


@dataclass(frozen=True)
class OldFile:
    """A source file of the live version: its fingerprint and how many documents it gave."""

    fingerprint: tuple[int, int]
    n_docs: int
    n_chunks: int


@dataclass
class Plan:
    """What a run will do, and what it needs to write the next version."""

    added: list[Document] = field(default_factory=list)
    updated: list[Document] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # loaded, same hash
    unchanged_loaded: dict[str, Document] = field(default_factory=dict)  # ... as loaded
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # not seen this run, not pruned
    prune_note: str | None = None
    drop: list[OldDoc] = field(default_factory=list)  # removed and updated: rows retired
    skipped_docs: int = 0  # documents of unchanged files (not read)
    skipped_chunks: int = 0
    unchanged_chunks: int = 0  # of the loaded unchanged documents
    kept_chunks: int = 0
    issues: list[LoadIssue] = field(default_factory=list)  # found while planning
    # Per source file touched by this run: (fingerprint, documents, chunks) in the next
    # version; a source with no documents left is dropped.
    files: dict[str, tuple[tuple[int, int], int, int]] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    @property
    def todo(self) -> list[Document]:
        """Documents (re-)chunked and embedded in this run."""
        return self.added + self.updated


def plan(
    loaded: LoadResult,
    old_docs: dict[str, OldDoc],
    old_files: dict[str, OldFile],
    prune: bool,
    rechunk_all: bool,
) -> Plan:
    """Sort documents into added / updated / unchanged / removed / kept.

    Args:
        loaded: what this run read (``unchanged_sources``: files it did not need to read).
        old_docs: the live version's documents of every file that was read, failed or
            vanished, and of every loaded document id (documents of unchanged files need not
            be there).
        old_files: the live version's source files.
        prune: remove documents this run did not produce.
        rechunk_all: the chunker changed: every loaded document is re-chunked.
    """
    p = Plan()
    seen: set[str] = set()
    skipped = loaded.unchanged_sources
    for doc in loaded.documents:
        old = old_docs.get(doc.id)
        if old is not None and old.source != doc.source and old.source in skipped:
            p.issues.append(
                LoadIssue(
                    doc.source,
                    f"duplicate document id {doc.id!r} (indexed from {old.source}), skipped",
                )
            )
            continue
        seen.add(doc.id)
        if old is None:
            p.added.append(doc)
        elif rechunk_all or old.sha256 != doc.sha256:
            p.updated.append(doc)
            p.drop.append(old)
        else:
            p.unchanged.append(doc.id)
            p.unchanged_loaded[doc.id] = doc
            p.unchanged_chunks += len(old.chunks)
    for src in skipped:
        f = old_files[src]
        p.skipped_docs += f.n_docs
        p.skipped_chunks += f.n_chunks
    prune_now = prune and not loaded.missing_paths
    if prune and loaded.missing_paths:
        p.prune_note = (
            "not pruning: a given path is missing (" + ", ".join(loaded.missing_paths) + ")"
        )
    kept: list[OldDoc] = []
    for doc_id, old in old_docs.items():
        if doc_id in seen or old.source in skipped:
            continue
        if prune_now and old.source not in loaded.failed_sources:
            p.removed.append(doc_id)
            p.drop.append(old)
        else:
            p.kept.append(doc_id)
            p.kept_chunks += len(old.chunks)
            kept.append(old)
    p.files = _files_after(loaded, p, old_docs, old_files, kept)
    return p


def _files_after(
    loaded: LoadResult,
    p: Plan,
    old_docs: dict[str, OldDoc],
    old_files: dict[str, OldFile],
    kept: list[OldDoc],
) -> dict[str, tuple[tuple[int, int], int, int]]:
    """The new row of every source this run touched (read, failed, vanished or left by a
    document that moved): its fingerprint when it loaded cleanly, and its counts."""
    skipped = loaded.unchanged_sources
    touched = (set(old_files) - skipped) | set(loaded.fingerprints) | loaded.failed_sources
    touched |= {d.source for d in old_docs.values() if d.source not in skipped}
    docs: Counter[str] = Counter()
    chunks: Counter[str] = Counter()
    for doc in p.added + p.updated:
        docs[doc.source] += 1  # chunk counts of new documents are filled in after chunking
    for doc_id in p.unchanged:
        old = old_docs[doc_id]
        docs[old.source] += 1
        chunks[old.source] += len(old.chunks)
    for old in kept:
        docs[old.source] += 1
        chunks[old.source] += len(old.chunks)
    out = {}
    for src in touched - skipped:
        clean = src in loaded.fingerprints and src not in loaded.failed_sources
        fp = loaded.fingerprints[src] if clean else NO_FINGERPRINT
        out[src] = (fp, docs[src], chunks[src])
    return out
