"""A RAFT adapter is bound to the index version its passages came from.

The tuner records the index name and version in the manifest's ``raft`` block, with a
snapshot reference (the version's chunk digest and counts) and the snapshot itself in
``index-snapshot.json`` beside the manifest (``core.index_changes``). ``binding_of`` says
whether the live index has moved on since, and by how much; ``ragtune adapters list/show``,
``/v1/models`` and ``/v1/adapters`` show it, and ``ragtune tune --retrain NAME`` trains the
adapter again on the live index.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragtune.core.config import Settings
from ragtune.core.errors import IndexNotFound, ManifestError
from ragtune.core.index_changes import SNAPSHOT_FILE, IndexChanges, IndexSnapshot, index_changes
from ragtune.core.registry import AdapterInfo


@dataclass(frozen=True)
class AdapterBinding:
    index: str
    index_version: str  # the version the adapter's passages came from
    live_version: str | None  # None: the index no longer exists
    changes: IndexChanges | None  # None: no snapshot to compare with (an older adapter)

    @property
    def stale(self) -> bool:
        return self.live_version != self.index_version

    def text(self) -> str:
        if not self.stale:
            return f"trained on the live version of index {self.index!r}"
        if self.changes is not None:
            return f"stale: {self.changes.text()}"
        if self.live_version is None:
            return f"stale: index {self.index!r} no longer exists"
        return (
            f"stale: index {self.index!r} moved on since version {self.index_version} "
            f"(now {self.live_version})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "index_version": self.index_version,
            "live_version": self.live_version,
            "stale": self.stale,
            "changes": self.changes.summary() if self.changes else None,
            "text": self.text(),
        }


def adapter_snapshot(info: AdapterInfo) -> IndexSnapshot | None:
    """The index snapshot stored with the adapter, if it has one."""
    return IndexSnapshot.read(info.path / SNAPSHOT_FILE)


def binding_of(settings: Settings, info: AdapterInfo) -> AdapterBinding | None:
    """The adapter's index binding; None for an adapter trained without RAFT."""
    from ragtune.core.index_store import current_version

    raft = info.manifest.raft
    if raft is None:
        return None
    live = current_version(settings, raft.index)
    changes = None
    snap = adapter_snapshot(info)
    if snap is not None and (live != raft.index_version):
        try:
            changes = index_changes(settings, raft.index, snap)
        except (ManifestError, IndexNotFound):
            changes = None
    return AdapterBinding(raft.index, raft.index_version, live, changes)
