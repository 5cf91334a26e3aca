"""The experiment, end to end: split -> index -> tune adapters -> evaluate -> report -> verdict.

Driven by a TOML file (``examples/experiment-demo.toml`` is the demo). This module lives in
the CLI because it is the one place allowed to import the indexer, the tuner and eval
together. Every step is resumable: the index updates incrementally, an adapter is reused
when the run folder says it was trained with the same arguments on the same data, and the
eval continues its results.jsonl.

Run folder (``<data>/runs/<name>`` unless ``--out``)::

    experiment.toml   the config as given       experiment.json  steps done, timings
    train.json        train split (SQuAD)       test.json        test split (SQuAD)
    train-<key>.json  each adapter's sample     config.json ... report.html   the eval run
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.atomic import write_json_atomic
from ragtune.core.config import Settings, read_toml, resolve_settings
from ragtune.core.errors import InvalidInput
from ragtune.core.qa import load_squad_json, squad_titles
from ragtune.eval.datasets import file_sha256, subset_squad
from ragtune.eval.split import SplitSpec, split_groups

TOP_KEYS = {"name", "description", "settings", "data", "index", "adapters", "eval"}
DATA_KEYS = {"dataset", "test_fraction", "seed", "test_groups"}
ADAPTER_KEYS = {"questions", "tune"}
EVAL_KEYS = {
    "modes",
    "limit",
    "sample_seed",
    "batch_size",
    "top_k",
    "retrieval",
    "max_new_tokens",
    "retrieve_k",
    "recall_ks",
    "n_boot",
}


@dataclass
class AdapterSpec:
    key: str
    questions: int | None  # sampled from the train split (None = all)
    tune: dict[str, Any]  # tuner.args.TuneArgs fields

    @property
    def raft(self) -> bool:
        return bool(self.tune.get("raft"))


@dataclass
class Experiment:
    name: str
    source: Path
    settings: dict[str, Any]
    dataset: Path
    split: SplitSpec
    index: str
    adapters: dict[str, AdapterSpec]
    eval: dict[str, Any] = field(default_factory=dict)

    def adapter_name(self, key: str) -> str:
        return f"{self.name}-{key}"


def _unknown(section: str, got: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise InvalidInput(f"experiment [{section}]: unknown key(s) {', '.join(extra)}")


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment TOML; paths in it are relative to the file."""
    path = Path(path)
    raw = read_toml(path, "experiment config")
    _unknown("top level", raw, TOP_KEYS)
    data = raw.get("data") or {}
    _unknown("data", data, DATA_KEYS)
    if "dataset" not in data:
        raise InvalidInput("experiment [data]: 'dataset' is required")
    dataset = Path(data["dataset"])
    if not dataset.is_absolute():
        dataset = (path.parent / dataset).resolve()
    groups = data.get("test_groups")
    split = SplitSpec(
        float(data.get("test_fraction", 0.25)),
        int(data.get("seed", 0)),
        tuple(groups) if groups else None,
    )
    adapters = {}
    for key, spec in (raw.get("adapters") or {}).items():
        _unknown(f"adapters.{key}", spec, ADAPTER_KEYS)
        adapters[key] = AdapterSpec(key, spec.get("questions"), dict(spec.get("tune") or {}))
    ev = dict(raw.get("eval") or {})
    _unknown("eval", ev, EVAL_KEYS)
    name = str(raw.get("name") or path.stem)
    from ragtune.core.index_store import validate_name

    validate_name(name, "experiment")
    return Experiment(
        name=name,
        source=path,
        settings=dict(raw.get("settings") or {}),
        dataset=dataset,
        split=split,
        index=str((raw.get("index") or {}).get("name") or f"{name}-index"),
        adapters=adapters,
        eval=ev,
    )


def experiment_settings(
    exp: Experiment, config_file: Path | None, flags: dict[str, Any]
) -> Settings:
    """defaults < settings file < env < the experiment's [settings] < command-line flags."""
    merged = {**exp.settings, **{k: v for k, v in flags.items() if v is not None}}
    return resolve_settings(config_file, merged)[0]


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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _count_questions(raw: dict[str, Any]) -> int:
    return sum(len(p["qas"]) for a in raw["data"] for p in a["paragraphs"])


def eval_modes(exp: Experiment) -> list[str]:
    """The eval modes with adapter keys (``hybrid:raft``) turned into registry names."""
    modes = exp.eval.get("modes") or ["base", "rag", "oracle"]
    if isinstance(modes, str):
        modes = modes.split(",")
    out = []
    for m in modes:
        kind, _, key = m.strip().partition(":")
        if key:
            if key not in exp.adapters:
                raise InvalidInput(f"experiment [eval] mode {m!r}: no [adapters.{key}]")
            out.append(f"{kind}:{exp.adapter_name(key)}")
        else:
            out.append(kind)
    return out


def run_experiment(
    exp: Experiment,
    settings: Settings,
    out_dir: Path | None = None,
    *,
    fresh: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every step (skipping what is already done) and return the eval summary."""
    from ragtune.core.errors import UnknownAdapter
    from ragtune.core.pipeline import Pipeline
    from ragtune.core.registry import get_adapter
    from ragtune.eval.runner import RunConfig, run_eval
    from ragtune.eval.targets import PipelineTarget
    from ragtune.indexer.api import build_index
    from ragtune.tuner.api import train_adapter
    from ragtune.tuner.args import TuneArgs

    out = Path(out_dir) if out_dir else settings.runs_dir / exp.name
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exp.source, out / "experiment.toml")
    state_path = out / "experiment.json"
    state: dict[str, Any] = (
        json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    )
    steps: dict[str, Any] = state.setdefault("steps", {})
    started = time.perf_counter()

    def save() -> None:
        write_json_atomic(state_path, state)

    # 1. split by article: train.json feeds the tuner, test.json the eval
    raw = load_squad_json(exp.dataset, field="dataset")
    train_titles, test_titles = split_groups(squad_titles(raw), exp.split)
    train_raw, test_raw = subset_squad(raw, train_titles), subset_squad(raw, test_titles)
    _write_json(out / "train.json", train_raw)
    _write_json(out / "test.json", test_raw)
    steps["split"] = {
        "dataset": str(exp.dataset),
        "dataset_sha256": file_sha256(exp.dataset),
        "seed": exp.split.seed,
        "test_fraction": exp.split.test_fraction,
        "train_articles": train_titles,
        "test_articles": test_titles,
        "train_questions": _count_questions(train_raw),
        "test_questions": _count_questions(test_raw),
    }
    save()
    say(
        f"split: {len(train_titles)} train articles ({steps['split']['train_questions']} "
        f"questions), {len(test_titles)} test articles ({steps['split']['test_questions']})"
    )

    # 2. the index over every article (retrieval must find test passages among all of them)
    t0 = time.perf_counter()
    say(f"index {exp.index!r}: {exp.dataset.name}")
    summary = build_index(settings, [exp.dataset], exp.index, progress=progress)
    steps["index"] = {
        "name": exp.index,
        "version": summary.version,
        "chunks": summary.total_chunks,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save()
    say(summary.to_text())

    # 3. adapters, each on a seeded sample of the train split
    for key, spec in exp.adapters.items():
        name = exp.adapter_name(key)
        data_path = out / f"train-{key}.json"
        _write_json(data_path, sample_questions(train_raw, spec.questions, exp.split.seed))
        tune = {**spec.tune, "data": [str(data_path)], "name": name, "format": "squad"}
        if spec.raft:
            tune.setdefault("index", exp.index)
        args = TuneArgs.from_dict(tune)
        key_now = {
            "args": args.to_dict(),
            "data_sha256": file_sha256(data_path),
            "index_version": steps["index"]["version"] if spec.raft else None,
            "settings": {
                k: getattr(settings, k) for k in ("generator", "max_context_chars", "top_k")
            },
        }
        prev = steps.get(f"adapter:{key}")
        try:
            info = get_adapter(settings, name)
        except UnknownAdapter:
            info = None
        if (
            prev
            and info is not None
            and prev.get("key") == json.loads(json.dumps(key_now, default=str))
            and prev.get("created_at") == info.manifest.get("created_at")
        ):
            say(f"adapter {name!r}: already trained for this run, reused")
            continue
        args.overwrite = True  # the experiment owns adapters named after it
        say(
            f"adapter {name!r}: {'RAFT-style (retrieved passages)' if spec.raft else 'closed-book QA'}"
            f" on {_count_questions(json.loads(data_path.read_text()))} questions"
        )
        t0 = time.perf_counter()
        info = train_adapter(settings, args, progress=progress)
        m = info.manifest.get("metrics", {})
        steps[f"adapter:{key}"] = {
            "name": name,
            "key": json.loads(json.dumps(key_now, default=str)),
            "created_at": info.manifest.get("created_at"),
            "seconds": round(time.perf_counter() - t0, 1),
            "tokens_per_s": m.get("tokens_per_s"),
            "val_loss": m.get("val_loss"),
        }
        save()

    # 4. evaluate every mode on the held-out articles
    config = RunConfig.from_mapping(
        {
            **exp.eval,
            "dataset": str(out / "test.json"),
            "modes": eval_modes(exp),
            "index": exp.index,
            "split": "all",
        }
    )
    # Results answered by an older index or adapter would mix two experiments: start over.
    inputs = {
        "index_version": steps["index"]["version"],
        "adapters": {k: steps[f"adapter:{k}"]["created_at"] for k in exp.adapters},
    }
    if (steps.get("eval") or {}).get("inputs") not in (None, inputs):
        for stale in ("results.jsonl", "summary.json", "config.json"):
            (out / stale).unlink(missing_ok=True)
        say("eval: the index or an adapter changed since the last run; evaluating afresh")
    steps["eval"] = {"inputs": inputs}
    save()
    t0 = time.perf_counter()
    result = run_eval(config, PipelineTarget(Pipeline(settings)), out, progress=progress)
    steps["eval"].update(seconds=round(time.perf_counter() - t0, 1), n=result["n_questions"])
    state["total_seconds_last_run"] = round(time.perf_counter() - started, 1)
    save()
    return result
