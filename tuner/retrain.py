"""``ragtune tune --retrain NAME``: train an adapter again, as it was trained, on the live index.

The adapter's manifest says how it was trained: ``hyperparameters`` (every ``TuneArgs``
value that shapes the weights), ``data`` (each file's path, weight, format and sha256, the
template's path), the prompt's ``max_context_chars``, whether the forgetting check ran, and
for RAFT the index and the passages per example. ``retrain_args`` turns that back into
``TuneArgs`` (flags given on the command line win, e.g. ``--data new.jsonl`` or
``--epochs 2``); the RAFT passages come from the index's live version, so the new version is
bound to it. The result replaces the adapter in the registry as a new version (its
``version`` id changes; decisions and eval runs that measured the old one say so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.config import Settings
from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.registry import AdapterInfo, get_adapter
from ragtune.tuner.args import TuneArgs


@dataclass
class RetrainPlan:
    """What a retraining will do, before it does it."""

    args: TuneArgs
    # the settings the first training's options defaulted to: the prompt's passage length,
    # RAFT's passages per example (top_k) and method (retrieval)
    settings: Settings
    previous: AdapterInfo
    notes: list[str] = field(default_factory=list)  # what differs from the first training


def retrain_args(settings: Settings, name: str, given: dict[str, Any] | None = None) -> RetrainPlan:
    """The options adapter ``name`` was trained with, flags in ``given`` on top.

    Raises:
        UnknownAdapter: no such adapter. InvalidInput / DataError: its manifest does not
        record enough to train it again (and ``given`` does not fill the gap).
    """
    from ragtune.core.adapter_binding import binding_of
    from ragtune.tuner.api import _sha256

    given = {k: v for k, v in (given or {}).items() if v is not None and v != ()}
    info = get_adapter(settings, name)
    m = info.manifest
    known = set(TuneArgs.__dataclass_fields__)
    values: dict[str, Any] = {k: v for k, v in m.hyperparameters.items() if k in known}
    notes: list[str] = []
    if "data" not in given:
        if m.data is None or not m.data.files:
            raise InvalidInput(
                f"adapter {name!r}'s manifest records no training data: give --data FILE",
                field="data",
            )
        data = []
        for f in m.data.files:
            if not f.path:
                raise InvalidInput(
                    f"adapter {name!r} was trained before ragtune recorded where its data came "
                    f"from ({f.file}): give --data FILE",
                    field="data",
                )
            path = Path(f.path)
            if not path.is_file():
                raise DataError(
                    f"adapter {name!r}'s data file {f.path} no longer exists: give --data FILE",
                    field="data",
                )
            if _sha256(path) != f.sha256:
                notes.append(f"data file {f.file} changed since the last training")
            data.append(f"{f.path}:{f.weight:g}" if f.weight != 1.0 else f.path)
        values["data"] = data
        if m.data.template and "template" not in given:
            values["template"] = m.data.template
    update: dict[str, Any] = {}  # settings the first training's options defaulted to
    if m.raft is not None:  # the same passages per example and method as the first time
        if values.get("raft_k") is None and m.raft.k != settings.top_k:
            update["top_k"] = m.raft.k
        if values.get("retrieval") is None and m.raft.retrieval != settings.retrieval:
            update["retrieval"] = m.raft.retrieval
        values.setdefault("index", m.raft.index)
        binding = binding_of(settings, info)
        if binding is not None:
            notes.append(binding.text())
    values["forgetting"] = bool(m.metrics and m.metrics.perplexity)
    args = TuneArgs.from_dict({**values, **given, "name": name, "overwrite": True})
    args.validate()
    if m.prompt is not None and m.prompt.max_context_chars != settings.max_context_chars:
        update["max_context_chars"] = m.prompt.max_context_chars
    run_settings = settings.model_copy(update=update) if update else settings
    return RetrainPlan(args, run_settings, info, notes)


def retrain_adapter(
    settings: Settings, name: str, given: dict[str, Any] | None = None, *, progress: bool = True
) -> tuple[AdapterInfo, RetrainPlan]:
    """Train ``name`` again (``retrain_args``); returns the new registry entry and the plan."""
    from ragtune.tuner.api import train_adapter

    plan = retrain_args(settings, name, given)
    return train_adapter(plan.settings, plan.args, progress=progress), plan
