"""What the experiment's steps share: the run (config, settings, folder, state), SQuAD
sampling, and "train this adapter unless the run folder shows it is trained already".

``workflows.experiment`` (the steps) and ``workflows.sweep`` (the sweep's steps) both use it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core.config import Settings
from ragtune.eval.datasets import file_sha256
from ragtune.workflows.experiment_config import Experiment
from ragtune.workflows.experiment_state import STATE_FILE, AdapterStep, ExperimentState

if TYPE_CHECKING:
    from ragtune.core.pipeline import Pipeline
    from ragtune.core.registry import AdapterInfo
    from ragtune.tuner.args import TuneArgs

# Settings that change what an adapter learns (its training key).
KEY_SETTINGS = ("generator", "max_context_chars", "top_k")


@dataclass
class ExperimentRun:
    """One run of an experiment: the config, the settings, the folder and its state."""

    exp: Experiment
    settings: Settings
    folder: Path
    state: ExperimentState
    progress: bool
    say: Callable[[str], None]
    _pipeline: Pipeline | None = field(default=None, repr=False)

    def save(self) -> None:
        self.state.save(self.folder / STATE_FILE)

    @property
    def pipeline(self) -> Pipeline:
        """One answer pipeline for every eval of the run (the models load once)."""
        if self._pipeline is None:
            from ragtune.core.pipeline import Pipeline

            self._pipeline = Pipeline(self.settings)
        return self._pipeline


def training_key(
    args: TuneArgs,
    data_path: Path,
    settings: Settings,
    index_version: str | None,
    key_settings: tuple[str, ...] = KEY_SETTINGS,
) -> dict[str, Any]:
    """What an adapter of the run was trained from; equal keys mean the same training."""
    # JSON round trip: the key compares equal to the one read back from experiment.json
    return json.loads(
        json.dumps(
            {
                "args": args.to_dict(),
                "data_sha256": file_sha256(data_path),
                "index_version": index_version if args.raft else None,
                "settings": {k: getattr(settings, k) for k in key_settings},
            },
            default=str,
        )
    )


def train_or_reuse(
    run: ExperimentRun,
    args: TuneArgs,
    key: dict[str, Any],
    prev: AdapterStep | None,
    settings: Settings,
    what: str,
) -> tuple[AdapterStep, bool]:
    """Train ``args.name`` with ``settings``, unless ``prev`` says the registry holds the
    adapter this run trained with ``key``. Returns (the step, whether it was reused)."""
    from ragtune.tuner.api import train_adapter

    name = args.name
    if reusable(run.settings, prev, name, key):
        assert prev is not None
        run.say(f"adapter {name!r}: already trained for this run, reused")
        return prev, True
    args.overwrite = True  # the experiment owns adapters named after it
    run.say(f"adapter {name!r}: {what}")
    t0 = time.perf_counter()
    info = train_adapter(settings, args, progress=run.progress)
    version, tokens_per_s, val_loss, tokens = manifest_facts(info)
    step = AdapterStep(
        name=name,
        key=key,
        version=version,
        seconds=round(time.perf_counter() - t0, 1),
        tokens_per_s=tokens_per_s,
        val_loss=val_loss,
        tokens=tokens,
    )
    return step, False


def reusable(settings: Settings, prev: AdapterStep | None, name: str, key: dict[str, Any]) -> bool:
    """The registry still holds the adapter this run folder trained with ``key``."""
    from ragtune.core.errors import UnknownAdapter
    from ragtune.core.registry import get_adapter

    if prev is None or prev.key != key or prev.name != name:
        return False
    try:
        info = get_adapter(settings, name)
    except UnknownAdapter:
        return False
    return prev.version == info.version


def manifest_facts(
    info: AdapterInfo,
) -> tuple[str | None, float | None, float | None, int | None]:
    """(version, tokens/s, validation loss, training tokens) of a registry adapter: all the
    experiment reads of an adapter manifest."""
    met = info.manifest.metrics
    if met is None:
        return info.version, None, None, None
    return info.version, met.tokens_per_s, met.val_loss, met.tokens


# ---- SQuAD helpers -------------------------------------------------------------------------


def sample_questions(raw: dict[str, Any], n: int | None, seed: int) -> dict[str, Any]:
    """Keep ``n`` seeded-random questions; every paragraph stays, so doc ids stay valid."""
    slots = [
        (a_i, p_i, q_i)
        for a_i, a in enumerate(raw["data"])
        for p_i, p in enumerate(a["paragraphs"])
        for q_i in range(len(p["qas"]))
    ]
    if n is not None and n < len(slots):
        keep = set(random.Random(seed).sample(slots, n))
    else:
        keep = set(slots)
    out = {k: v for k, v in raw.items() if k != "data"}
    out["data"] = [
        {
            "title": a["title"],
            "paragraphs": [
                {
                    "context": p["context"],
                    "qas": [q for q_i, q in enumerate(p["qas"]) if (a_i, p_i, q_i) in keep],
                }
                for p_i, p in enumerate(a["paragraphs"])
            ],
        }
        for a_i, a in enumerate(raw["data"])
    ]
    return out


def count_questions(raw: dict[str, Any]) -> int:
    return sum(len(p["qas"]) for a in raw["data"] for p in a["paragraphs"])


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
