"""Applying a published decision to a request (``service.decisions`` has the routes)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from ragtune.core.config import Settings
from ragtune.core.decisions import (
    Decision,
    DecisionBroken,
    decision_path,
    decision_status,
    read_decision,
)
from ragtune.core.errors import ManifestError
from ragtune.core.pipeline import RETRIEVAL_MODES, QueryRequest

if TYPE_CHECKING:
    from ragtune.core.pipeline import Pipeline

log = logging.getLogger("ragtune.service")
DECISION_MODEL_PREFIX = "decision:"  # OpenAI model id of a decision: decision:<index>


class DecisionCache:
    """Decision files, reread when they change (one stat per request)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], Decision]] = {}
        self._lock = threading.Lock()

    def get(self, settings: Settings, index: str) -> Decision | None:
        path = decision_path(settings, index)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(index)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        d = read_decision(settings, index)  # ManifestError: a broken decision, reported as one
        if d is not None:
            with self._lock:
                self._cache[index] = (stamp, d)
        return d


def apply_decision(
    settings: Settings,
    cache: DecisionCache,
    pipeline: Pipeline,
    req: QueryRequest,
    index: str | None,
) -> tuple[QueryRequest, str]:
    """The request with the decision for ``index`` (default: the default index) applied:
    its mode, adapter, and retrieval settings the request leaves open. Returns the request
    as is with "" when there is no decision.

    Raises:
        DecisionBroken: the decision cannot be served (409 naming what broke).
    """
    name = index or settings.default_index
    try:
        d = cache.get(settings, name)
    except ManifestError as e:
        log.error("decision for index %s: %s", name, e.message)
        raise DecisionBroken(
            f"the decision for index {name!r} cannot be read (see the server log); publish it "
            "again, or name mode and adapter in the request",
            field="index",
        ) from e
    if d is None:
        return req, ""
    st = decision_status(settings, d, changes=False)
    if st.status == "broken":
        raise DecisionBroken(
            f"the decision for index {name!r} (run {d.run!r}) cannot be served: "
            f"{'; '.join(st.problems)}. Publish a new decision (ragtune decisions publish RUN), "
            "remove it, or name mode and adapter in the request",
            field="index",
        )
    retrieves = d.mode in RETRIEVAL_MODES
    if d.retriever is not None and retrieves:  # the winner searched another index
        pipeline.index_embedders[d.retriever.index] = d.retriever.embedder
    return (
        replace(
            req,
            mode=d.mode,
            adapter=d.adapter,
            index=d.serving_index if retrieves else None,
            top_k=req.top_k if req.top_k is not None else d.top_k,
            retrieval=req.retrieval or d.retrieval,
        ),
        d.run,
    )
