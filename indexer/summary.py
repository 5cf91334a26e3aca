"""What one indexing run did, for people (``to_text``) and machines (``to_dict``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Counts:
    """Documents or chunks by what happened to them."""

    added: int = 0  # new in this run
    updated: int = 0  # content changed: old chunks dropped, new ones embedded
    removed: int = 0  # pruned (documents) or dropped (chunks of removed and updated documents)
    unchanged: int = 0  # same content hash: vectors reused, nothing embedded
    kept: int = 0  # in the index but not seen in this run, and not pruned


@dataclass
class IndexSummary:
    """The result of :func:`indexer.api.build_index`."""

    name: str
    version: str | None  # the live version after the run
    previous_version: str | None
    changed: bool  # False when nothing differed and no new version was written
    documents: Counts = field(default_factory=Counts)
    chunks: Counts = field(default_factory=Counts)
    total_documents: int = 0
    total_chunks: int = 0
    index_type: str = "flat"
    pruned: bool = True  # whether vanished documents were removed in this run
    files: int = 0  # files read
    unchanged_files: int = 0  # files not read: size and modification time as last time
    skipped_files: int = 0
    cleaned: int = 0  # leftovers of interrupted runs removed
    seconds: float = 0.0
    embed_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step of the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        d, c = self.documents, self.chunks
        lines = [
            f"index {self.name!r}: "
            + (
                f"version {self.version}" if self.changed else f"unchanged (version {self.version})"
            ),
            f"  documents: {d.added} added, {d.updated} updated, {d.removed} removed, "
            f"{d.unchanged} unchanged" + (f", {d.kept} kept" if d.kept else ""),
            f"  chunks:    {c.added} added, {c.updated} updated, {c.removed} removed, "
            f"{c.unchanged} unchanged" + (f", {c.kept} kept" if c.kept else ""),
            f"  total:     {self.total_documents} documents, {self.total_chunks} chunks "
            f"({self.index_type} index); {self.files} files read"
            + (f", {self.unchanged_files} unchanged (not read)" if self.unchanged_files else "")
            + (f", {self.skipped_files} skipped (unsupported type)" if self.skipped_files else ""),
            f"  time:      {self.seconds:.1f} s (embedding {self.embed_seconds:.1f} s)",
        ]
        if self.cleaned:
            lines.append(f"  cleaned:   {self.cleaned} leftover(s) of an interrupted run")
        if self.errors:
            lines.append(f"  problems ({len(self.errors)}):")
            lines.extend(f"    {e}" for e in self.errors)
        return "\n".join(lines)


@contextlib.contextmanager
def timed(summary: IndexSummary, step: str) -> Iterator[None]:
    """Add the time spent in the block to ``summary.timings[step]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        summary.timings[step] = round(summary.timings.get(step, 0.0) + time.perf_counter() - t0, 3)
