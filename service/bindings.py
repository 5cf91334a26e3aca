"""Which index a RAFT adapter was trained on, and how much of it changed since (for the
adapter listings and model cards). One small cache: a comparison is redone only when the
adapter or the live index version changes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ragtune.core.adapter_binding import binding_of
from ragtune.service.schemas import IndexBinding

if TYPE_CHECKING:
    from ragtune.core.registry import AdapterInfo

_cache: dict[tuple[str, str | None, str | None], IndexBinding | None] = {}
_lock = threading.Lock()


def adapter_binding(svc: Any, info: AdapterInfo) -> IndexBinding | None:
    """The adapter's index binding (None for an adapter trained without RAFT)."""
    from ragtune.core.index_store import current_version

    raft = info.manifest.raft
    if raft is None:
        return None
    key = (str(info.path), info.version, current_version(svc.settings, raft.index))
    with _lock:
        if key in _cache:
            return _cache[key]
    b = binding_of(svc.settings, info)
    out = (
        None
        if b is None
        else IndexBinding(
            index=b.index,
            index_version=b.index_version,
            stale=b.stale,
            live_version=b.live_version,
            changes=b.changes.summary() if b.changes else None,
        )
    )
    with _lock:
        if len(_cache) > 256:
            _cache.clear()
        _cache[key] = out
    return out
