"""Decisions: the measured winner of an eval run, published for the index it was measured on.

``ragtune decisions publish RUN`` (or ``POST /v1/decisions/{index}/publish``, or ``ragtune serve
--decision RUN``) reads a finished eval run folder (an experiment's included) and writes
``<data>/decisions/<index>.json``: the winning mode and adapter, the adapter and index
versions the run measured, the retrieval settings it used, the verdict's figures, and a
snapshot of the index version (``core.index_changes``). The service then answers requests to
that index that name no mode and no adapter with the winner, and says which decision chose.

Publishing refuses a run whose winner can no longer be served as measured: the adapter is
gone or was retrained since, the index or the measured index version no longer exists. Later
the world moves on; ``decision_status`` says how:

- **ok**: the adapter and the index are as measured;
- **stale**: still servable, but no longer what was measured: the index changed since (with
  the share of chunks added / updated / removed), or the adapter was retrained;
- **broken**: cannot be served: the adapter or the index was removed (requests that rely on
  the decision get a 409 naming it; requests that name a mode are unaffected).

The run folder's files are read through the small typed views below (``config.json``'s and
``summary.json``'s keys the decision needs), so the eval harness stays free to add keys.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragtune.core.config import Settings
from ragtune.core.errors import (
    IndexNotFound,
    InvalidInput,
    ManifestError,
    NotFound,
    RagtuneError,
    UnknownAdapter,
)
from ragtune.core.index_changes import IndexChanges, IndexSnapshot, index_changes, index_snapshot
from ragtune.core.manifests import _Manifest, _Model

DECISION_SCHEMA_VERSION: Final = 1
DECISIONS_DIR = "decisions"
Mode = Literal["base", "rag", "finetune", "hybrid"]
Status = Literal["ok", "stale", "broken"]


class DecisionRefused(RagtuneError):
    """A run cannot be published as the decision for its index (it could not be served as
    it was measured)."""

    status = 409
    title = "Decision refused"


class DecisionNotFound(NotFound):
    title = "Decision not found"


class DecisionBroken(RagtuneError):
    """A request relied on a decision that can no longer be served."""

    status = 409
    title = "Decision broken"


# ---- the decision file ---------------------------------------------------------------------


class Figure(_Model):
    mean: float
    lo: float
    hi: float


class Margin(_Model):
    """The winner minus the runner-up on F1 (paired bootstrap)."""

    diff: float
    lo: float
    hi: float
    significant: bool


class Verdict(_Model):
    winner: str  # the winning variant: "hybrid:kb-raft", "rag", "rag@tuned"
    f1: Figure
    em: float
    n: int  # questions
    runner_up: str | None = None
    margin: Margin | None = None
    text: str


class Retriever(_Model):
    """A winner that retrieves from another index with another embedder (``rag@tuned``)."""

    label: str
    index: str
    embedder: str
    index_version: str | None = None


class Picked(_Model):
    """The sweep's pick, when the run chose its adapter on a validation split."""

    variant: str
    reason: str


class Decision(_Manifest):
    """``<data>/decisions/<index>.json``."""

    KIND: ClassVar[str] = "decision"
    SCHEMA_VERSION: ClassVar[int] = DECISION_SCHEMA_VERSION

    schema_version: Literal[1] = DECISION_SCHEMA_VERSION
    index: str  # requests to this index that name no mode / adapter get this decision
    run: str  # the run id (its folder's name): what answers carry
    run_path: str  # where it was published from (never shown to HTTP clients)
    published_at: str
    mode: Mode
    adapter: str | None = None
    adapter_version: str | None = None  # the version the run measured
    index_version: str  # the version the run measured
    top_k: int | None = None  # the run's retrieval settings (None: the service's own)
    retrieval: Literal["dense", "bm25", "hybrid"] | None = None
    retriever: Retriever | None = None
    verdict: Verdict
    selection: Picked | None = None
    snapshot: IndexSnapshot | None = None  # the measured index version's chunks

    @property
    def serving_index(self) -> str:
        """The index the winner retrieves from."""
        return self.retriever.index if self.retriever else self.index


# ---- the run folder, read ------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Versions(_Loose):
    adapters: dict[str, str | None] = {}
    index_version: str | None = None
    retrievers: dict[str, str | None] = {}


class _RetrieverConf(_Loose):
    index: str
    embedder: str


class _RunConfig(_Loose):
    index: str | None = None
    top_k: int | None = None
    retrieval: Literal["dense", "bm25", "hybrid"] | None = None
    retrievers: dict[str, _RetrieverConf] = {}
    versions: _Versions = _Versions()
    target: dict[str, Any] = {}


class _Summary(_Loose):
    n_questions: int
    variants: dict[str, dict[str, Any]]
    verdict: dict[str, Any]


def _read_json(path: Path, model: type[BaseModel], what: str) -> Any:
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InvalidInput(
            f"run {path.parent.name!r} has no {path.name}: not a finished eval run", field="run"
        ) from None
    except (OSError, ValueError, ValidationError) as e:
        raise InvalidInput(
            f"run {path.parent.name!r}: {path.name} is not a readable {what} ({type(e).__name__})",
            field="run",
        ) from e


def run_folder(settings: Settings, run: str) -> Path:
    """A run id (a folder under the runs dir) or, from the CLI, a run folder's path."""
    from ragtune.core.index_store import validate_name

    p = Path(run)
    if len(p.parts) > 1 or p.is_absolute():
        if not p.is_dir():
            raise DecisionNotFound(f"run folder {run} not found", field="run")
        return p.resolve()
    folder = settings.runs_dir / validate_name(run, "run")
    if not folder.is_dir():
        raise DecisionNotFound(f"run {run!r} not found in the runs folder", field="run")
    return folder


def decision_from_run(settings: Settings, folder: Path, index: str | None = None) -> Decision:
    """The decision a finished run folder makes, checked against the registry and the index.

    Raises:
        InvalidInput: not a finished run, or a run without a winner.
        DecisionRefused: the winner cannot be served as measured.
    """
    config: _RunConfig = _read_json(folder / "config.json", _RunConfig, "run config")
    summary: _Summary = _read_json(folder / "summary.json", _Summary, "run summary")
    run = folder.name
    v = summary.verdict
    winner = v.get("winner")
    if not winner:
        raise InvalidInput(f"run {run!r} has no winner to publish (no results)", field="run")
    if config.target.get("kind") == "http":
        raise DecisionRefused(
            f"run {run!r} measured a service over HTTP, which does not record the adapter and "
            "index versions it answered with; evaluate in-process to publish a decision",
            field="run",
        )
    head, _, label = str(winner).partition("@")
    mode, _, adapter = head.partition(":")
    if mode not in ("base", "rag", "finetune", "hybrid"):
        raise InvalidInput(f"run {run!r}: its winner {winner!r} is not a servable mode")
    name = index or config.index or settings.default_index
    measured = config.versions.index_version
    if index and config.index and index != config.index:
        raise InvalidInput(
            f"run {run!r} was measured on index {config.index!r}, not {index!r}", field="index"
        )
    if measured is None:
        raise DecisionRefused(f"run {run!r} records no index version", field="run")
    adapter_version = None
    if adapter:
        adapter_version = config.versions.adapters.get(adapter)
        _check_adapter(settings, run, adapter, adapter_version)
    snapshot = _check_index(settings, run, name, measured)
    retriever = None
    if label:
        conf = config.retrievers.get(label)
        if conf is None:
            raise InvalidInput(
                f"run {run!r}: its winner's retriever {label!r} is not in its config"
            )
        r_version = config.versions.retrievers.get(label)
        if r_version:
            _check_index(settings, run, conf.index, r_version)
        retriever = Retriever(
            label=label, index=conf.index, embedder=conf.embedder, index_version=r_version
        )
    stats = summary.variants.get(str(winner)) or {}
    if "f1" not in stats:
        raise InvalidInput(f"run {run!r}: its winner {winner!r} has no scores", field="run")
    margin = v.get("margin")
    return Decision(
        index=name,
        run=run,
        run_path=str(folder),
        published_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        mode=mode,  # type: ignore[arg-type]
        adapter=adapter or None,
        adapter_version=adapter_version,
        index_version=measured,
        top_k=config.top_k if config.top_k is not None else config.target.get("top_k"),
        retrieval=config.retrieval or config.target.get("retrieval"),
        retriever=retriever,
        verdict=Verdict(
            winner=str(winner),
            f1=Figure.model_validate(stats["f1"]),
            em=float((stats.get("em") or {}).get("mean", 0.0)),
            n=int(stats.get("n", summary.n_questions)),
            runner_up=v.get("runner_up"),
            margin=Margin.model_validate(margin) if margin else None,
            text=str(v.get("text", "")),
        ),
        selection=_picked(folder),
        snapshot=snapshot,
    )


def _picked(folder: Path) -> Picked | None:
    try:
        sel = json.loads((folder / "selection.json").read_text(encoding="utf-8"))
        return Picked(variant=str(sel["picked"]), reason=str(sel["reason"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_adapter(settings: Settings, run: str, name: str, measured: str | None) -> None:
    from ragtune.core.registry import get_adapter

    try:
        info = get_adapter(settings, name)
    except (UnknownAdapter, ManifestError) as e:
        raise DecisionRefused(
            f"run {run!r} chose adapter {name!r}, which no longer exists in the registry "
            f"({e.title.lower()}): re-evaluate with the adapters you have",
            field="adapter",
        ) from e
    if measured and info.version != measured:
        raise DecisionRefused(
            f"run {run!r} measured adapter {name!r} version {measured}, but the registry now "
            f"holds version {info.version} (retrained since): re-evaluate, then publish",
            field="adapter",
        )


def _check_index(settings: Settings, run: str, index: str, version: str) -> IndexSnapshot:
    from ragtune.core.index_changes import version_exists
    from ragtune.core.index_store import current_version

    if current_version(settings, index) is None:
        raise DecisionRefused(
            f"run {run!r} was measured on index {index!r}, which no longer exists", field="index"
        )
    if not version_exists(settings, index, version):
        raise DecisionRefused(
            f"run {run!r} was measured on version {version} of index {index!r}, which no "
            "longer exists (the index was updated twice since): re-evaluate, then publish",
            field="index",
        )
    return index_snapshot(settings, index, version)


# ---- the decisions folder ------------------------------------------------------------------


def decisions_dir(settings: Settings) -> Path:
    return settings.data_dir / DECISIONS_DIR


def decision_path(settings: Settings, index: str) -> Path:
    from ragtune.core.index_store import validate_name

    return decisions_dir(settings) / f"{validate_name(index)}.json"


def publish_decision(settings: Settings, decision: Decision) -> Decision | None:
    """Write the decision for its index (atomically); returns the one it replaced."""
    path = decision_path(settings, decision.index)
    old = read_decision(settings, decision.index) if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    decision.write(path)
    return old


def read_decision(settings: Settings, index: str) -> Decision | None:
    """The decision for ``index``, or None.

    Raises:
        ManifestError: the decision file cannot be read.
    """
    path = decision_path(settings, index)
    if not path.is_file():
        return None
    return Decision.read(path, hint=f"publish it again or remove it: ragtune decisions rm {index}")


def remove_decision(settings: Settings, index: str) -> Decision:
    """Delete the decision for ``index`` (DecisionNotFound when there is none)."""
    path = decision_path(settings, index)
    if not path.is_file():
        raise DecisionNotFound(f"no decision for index {index!r}", field="index")
    try:
        old = read_decision(settings, index)
    except ManifestError:
        old = None
    path.unlink()
    return old  # type: ignore[return-value]


def list_decisions(settings: Settings) -> tuple[list[Decision], list[ManifestError]]:
    """Every decision, and the problems of those whose file cannot be read."""
    root = decisions_dir(settings)
    if not root.is_dir():
        return [], []
    found, problems = [], []
    for p in sorted(root.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            found.append(Decision.read(p))
        except ManifestError as e:
            problems.append(e)
    return found, problems


# ---- status --------------------------------------------------------------------------------


class DecisionStatus(_Model):
    status: Status
    problems: list[str] = Field(default_factory=list)  # why it is broken
    notes: list[str] = Field(default_factory=list)  # why it is stale
    adapter_version_now: str | None = None
    index_version_now: str | None = None
    changes: dict[str, Any] | None = None  # IndexChanges.summary() when the index moved on


def decision_status(settings: Settings, d: Decision, *, changes: bool = True) -> DecisionStatus:
    """Whether the decision can still be served as measured. ``changes=False`` skips the
    change share (a request only needs to know whether it can be served)."""
    from ragtune.core.index_store import current_version
    from ragtune.core.registry import get_adapter

    problems: list[str] = []
    notes: list[str] = []
    adapter_now = None
    if d.adapter:
        try:
            adapter_now = get_adapter(settings, d.adapter).version
        except UnknownAdapter:
            problems.append(f"adapter {d.adapter!r} was removed from the registry")
        except ManifestError:
            problems.append(f"adapter {d.adapter!r} has an unreadable manifest")
        else:
            if d.adapter_version and adapter_now != d.adapter_version:
                notes.append(
                    f"adapter {d.adapter!r} was retrained since the decision (measured "
                    f"{d.adapter_version}, now {adapter_now})"
                )
    live = current_version(settings, d.index)
    summary = None
    if live is None:
        problems.append(f"index {d.index!r} was removed")
    elif live != d.index_version:
        found: IndexChanges | None = None
        if changes and d.snapshot is not None:
            try:
                found = index_changes(settings, d.index, d.snapshot)
            except (ManifestError, IndexNotFound):
                found = None
        if found is not None:
            summary = found.summary()
            notes.append(found.text())
        else:
            notes.append(
                f"index {d.index!r} moved on since the decision (measured {d.index_version}, "
                f"now {live})"
            )
    if d.retriever and current_version(settings, d.retriever.index) is None:
        problems.append(f"index {d.retriever.index!r} (retriever {d.retriever.label}) was removed")
    status: Status = "broken" if problems else ("stale" if notes else "ok")
    return DecisionStatus(
        status=status,
        problems=problems,
        notes=notes,
        adapter_version_now=adapter_now,
        index_version_now=live,
        changes=summary,
    )
