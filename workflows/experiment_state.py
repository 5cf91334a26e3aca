"""``experiment.json``: what each step of an experiment did, so a rerun can skip it.

One typed record per step. The file is rewritten (atomically) after every step; a rerun reads
it back to decide whether an adapter can be reused and whether the eval results still belong
to the current index and adapters. Layout (keys sorted on disk)::

    {"steps": {"split": {...}, "index": {...}, "adapter:<key>": {...},
               "embedder": {...}, "tuned_index": {...},
               "validation_split": {...}, "sweep:<variant>": {...}, "selection": {...},
               "eval": {...}},
     "total_seconds_last_run": 123.4}

The sweep's steps (``validation_split``, one ``sweep:v<i>`` per variant, ``selection``) are
there only when the experiment has a ``[sweep]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ragtune.core.atomic import write_json_atomic
from ragtune.core.errors import InvalidInput

STATE_FILE = "experiment.json"
ADAPTER_PREFIX = "adapter:"
SWEEP_PREFIX = "sweep:"


@dataclass
class SplitStep:
    """The by-article split (train.json / test.json in the run folder)."""

    dataset: str
    dataset_sha256: str
    seed: int
    test_fraction: float
    train_articles: list[str]
    test_articles: list[str]
    train_questions: int
    test_questions: int


@dataclass
class IndexStep:
    name: str
    version: str | None  # None only if the index holds no version (nothing to index)
    chunks: int
    seconds: float


@dataclass
class AdapterStep:
    """One trained adapter; reused while ``key`` and the registry's ``version`` match."""

    name: str
    key: dict[str, Any]  # the training arguments, data hash, index version, settings (as JSON)
    version: str | None = None  # AdapterInfo.version of the training
    seconds: float = 0.0
    tokens_per_s: float | None = None
    val_loss: float | None = None
    tokens: int | None = None  # tokens the training processed (a sweep's cost measure)


@dataclass
class ValidationSplitStep:
    """The sweep's validation split: held-out TRAIN articles (validation.json)."""

    seed: int
    fraction: float
    fit_articles: list[str]  # the variants train on these (train-fit.json)
    validation_articles: list[str]
    fit_questions: int
    validation_questions: int  # in validation.json (the eval may sample fewer)


@dataclass
class SweepStep:
    """One variant of the sweep: its training, then its validation eval."""

    key: str  # v1, v2, ...
    label: str
    adapter: AdapterStep  # the trained adapter (shared by variants with one training)
    retrieval: dict[str, Any] = field(default_factory=dict)  # top_k / retrieval
    validation: dict[str, Any] | None = None  # inputs, n, f1, em, prompt_tokens, seconds


@dataclass
class SelectionStep:
    picked: str  # the variant key
    adapter: str  # its adapter's registry name
    reason: str
    tested: list[str] = field(default_factory=list)  # picks the test split was evaluated for


@dataclass
class EmbedderStep:
    """The tuned embedder; reused while ``key`` and the registry's ``version`` match."""

    name: str
    key: dict[str, Any]  # the training arguments, data hash, index version, settings (as JSON)
    version: str | None = None
    model_id: str | None = None  # name@version: what the tuned index records
    seconds: float = 0.0
    val_recall: dict[str, Any] = field(default_factory=dict)  # k, base, tuned (validation)


@dataclass(frozen=True)
class EvalInputs:
    """What the eval results were answered by: a change means they are stale."""

    index_version: str | None
    adapters: dict[str, str | None]  # adapter key -> adapter version
    embedder: str | None = None  # the tuned embedder's model id (name@version)
    tuned_index_version: str | None = None
    picked: str | None = None  # the sweep's picked variant (its retrieval settings too)


@dataclass
class EvalStep:
    inputs: EvalInputs
    seconds: float | None = None  # None until the eval has finished
    n: int | None = None  # questions evaluated

    def to_dict(self) -> dict[str, Any]:
        # the tuned-embedder keys only when there is one (files of older runs round-trip)
        inputs = {
            k: v
            for k, v in asdict(self.inputs).items()
            if v is not None or k not in ("embedder", "tuned_index_version", "picked")
        }
        out: dict[str, Any] = {"inputs": inputs}
        if self.seconds is not None:
            out.update(seconds=self.seconds, n=self.n)
        return out


@dataclass
class ExperimentState:
    """All steps so far (a fresh run folder has none)."""

    split: SplitStep | None = None
    index: IndexStep | None = None
    adapters: dict[str, AdapterStep] = field(default_factory=dict)  # by adapter key
    embedder: EmbedderStep | None = None
    tuned_index: IndexStep | None = None  # the index built with the tuned embedder
    validation_split: ValidationSplitStep | None = None
    sweep: dict[str, SweepStep] = field(default_factory=dict)  # by variant key
    selection: SelectionStep | None = None
    eval: EvalStep | None = None
    total_seconds_last_run: float | None = None

    @classmethod
    def load(cls, path: Path) -> ExperimentState:
        """The state in ``path``, or an empty one if there is none yet."""
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_dict(raw)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise InvalidInput(
                f"{path} is not a readable experiment state ({type(e).__name__}: {e}): "
                "delete it or start over with --fresh",
                field="out",
            ) from e

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> ExperimentState:
        steps = raw.get("steps") or {}
        ev = steps.get("eval")
        return cls(
            split=_build(SplitStep, steps["split"]) if "split" in steps else None,
            index=_build(IndexStep, steps["index"]) if "index" in steps else None,
            adapters={
                k.removeprefix(ADAPTER_PREFIX): _build(AdapterStep, v)
                for k, v in steps.items()
                if k.startswith(ADAPTER_PREFIX)
            },
            embedder=_build(EmbedderStep, steps["embedder"]) if "embedder" in steps else None,
            tuned_index=_build(IndexStep, steps["tuned_index"]) if "tuned_index" in steps else None,
            validation_split=_build(ValidationSplitStep, steps["validation_split"])
            if "validation_split" in steps
            else None,
            sweep={
                k.removeprefix(SWEEP_PREFIX): _sweep_step(v)
                for k, v in steps.items()
                if k.startswith(SWEEP_PREFIX)
            },
            selection=_build(SelectionStep, steps["selection"]) if "selection" in steps else None,
            eval=EvalStep(EvalInputs(**ev["inputs"]), seconds=ev.get("seconds"), n=ev.get("n"))
            if ev
            else None,
            total_seconds_last_run=raw.get("total_seconds_last_run"),
        )

    def to_dict(self) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        if self.split is not None:
            steps["split"] = asdict(self.split)
        if self.index is not None:
            steps["index"] = asdict(self.index)
        for key, step in self.adapters.items():
            steps[ADAPTER_PREFIX + key] = _adapter_dict(step)
        if self.embedder is not None:
            steps["embedder"] = asdict(self.embedder)
        if self.tuned_index is not None:
            steps["tuned_index"] = asdict(self.tuned_index)
        if self.validation_split is not None:
            steps["validation_split"] = asdict(self.validation_split)
        for key, sweep in self.sweep.items():
            steps[SWEEP_PREFIX + key] = {**asdict(sweep), "adapter": _adapter_dict(sweep.adapter)}
        if self.selection is not None:
            steps["selection"] = asdict(self.selection)
        if self.eval is not None:
            steps["eval"] = self.eval.to_dict()
        out: dict[str, Any] = {"steps": steps}
        if self.total_seconds_last_run is not None:
            out["total_seconds_last_run"] = self.total_seconds_last_run
        return out

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    def step_seconds(self) -> list[tuple[str, float]]:
        """(step, seconds) of the index, each adapter and the eval, in run order."""
        out = [("index", self.index.seconds if self.index else 0.0)]
        # the swept adapter is the picked variant: its training counts once, under the sweep
        swept = {s.adapter.name for s in self.sweep.values()}
        out += [(k, s.seconds) for k, s in self.adapters.items() if s.name not in swept]
        if self.embedder is not None:
            out.append(("embedder", self.embedder.seconds))
        if self.tuned_index is not None:
            out.append(("tuned index", self.tuned_index.seconds))
        trained: set[str] = set()  # variants that share a training count it once
        for key, sweep in self.sweep.items():
            first = sweep.adapter.name not in trained
            trained.add(sweep.adapter.name)
            out.append((f"{key} train", sweep.adapter.seconds if first else 0.0))
            out.append((f"{key} validation", (sweep.validation or {}).get("seconds") or 0.0))
        out.append(("eval", (self.eval.seconds if self.eval else None) or 0.0))
        return out


_T = TypeVar("_T")


def _adapter_dict(step: AdapterStep) -> dict[str, Any]:
    # "tokens" only when known (files of older runs round-trip)
    return {k: v for k, v in asdict(step).items() if v is not None or k != "tokens"}


def _sweep_step(data: dict[str, Any]) -> SweepStep:
    return SweepStep(
        key=data["key"],
        label=data["label"],
        adapter=_build(AdapterStep, data["adapter"]),
        retrieval=dict(data.get("retrieval") or {}),
        validation=data.get("validation"),
    )


def _build(cls: type[_T], data: dict[str, Any]) -> _T:
    """A step record from its JSON; keys this version does not know are ignored."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if cls is AdapterStep and "version" not in data:
        # written before adapters had versions: the one recorded then was created_at, which
        # is also what AdapterInfo.version says for an adapter of that time
        data = {**data, "version": data.get("created_at")}
    return cls(**{k: v for k, v in data.items() if k in known})
