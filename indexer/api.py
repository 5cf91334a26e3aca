"""The indexer's public API: build/update an index, list, describe and remove indexes.

Other packages (through the CLI) call these; searching lives in ``core.index_store`` because
the service and the eval harness read indexes too.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ragtune.core.config import Settings
from ragtune.core.errors import IndexNotFound
from ragtune.core.index_store import VERSIONS_DIR, current_version, index_dir, validate_name
from ragtune.core.models import Embedder
from ragtune.indexer.build import StageHook, index_lock, update_index
from ragtune.indexer.overview import (
    IndexDescription,
    IndexOverview,
    describe_index,
    index_overview,
    list_overviews,
)
from ragtune.indexer.summary import Counts, IndexSummary

__all__ = [
    "Counts",
    "IndexDescription",
    "IndexOverview",
    "IndexSummary",
    "build_index",
    "describe_index",
    "index_overview",
    "list_overviews",
    "remove_index",
]


def build_index(
    settings: Settings,
    paths: Sequence[Path],
    name: str,
    *,
    prune: bool | None = None,
    progress: bool = True,
    embedder: Embedder | None = None,
    on_stage: StageHook | None = None,
) -> IndexSummary:
    """Index ``paths`` into the named index, incrementally.

    Args:
        settings: chunk size/overlap, batch size, index type, data dir, embedder spec.
        paths: files and folders (folders recurse) to load.
        name: the index name (a folder under ``<data_dir>/indexes``).
        prune: remove indexed documents this run did not produce; None takes ``settings.prune``
            (default True: the index mirrors the paths given). See ``indexer.plan``.
        progress: show a tqdm progress bar on stderr while embedding.
        embedder: an already loaded embedder (callers that index repeatedly load it once);
            None loads the configured one when the run finds something to index.
        on_stage: called with each stage's name as the run reaches it
            (``indexer.build.STAGES``; the crash tests stop a run there).

    Returns:
        What changed, the live version and the problems met (files that could not be used).

    Raises:
        DataError: nothing at all could be loaded (the index is left as it was).
        IndexMismatch: the index was built with another embedder or dimension.
    """
    started = time.perf_counter()
    validate_name(name)

    def load() -> Embedder:
        from ragtune.core.models import load_embedder

        return load_embedder(settings)

    return update_index(
        settings,
        name,
        list(paths),
        embedder if embedder is not None else load,
        prune=settings.prune if prune is None else prune,
        progress=progress,
        started=started,
        on_stage=on_stage,
    )


def remove_index(settings: Settings, name: str) -> str:
    """Delete an index and every version of it; returns the version that was live."""
    idir = index_dir(settings, validate_name(name))
    version = current_version(settings, name)
    if version is None and not (idir / VERSIONS_DIR).is_dir():
        raise IndexNotFound(f"index {name!r} not found")
    with index_lock(idir):
        # Rename first: the index disappears at once, even if deleting the files takes a while
        # or is interrupted (a leftover .tmp- folder is cleaned by the next build).
        trash = settings.indexes_dir / f".tmp-rm-{name}-{time.time_ns()}"
        idir.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return version or ""
