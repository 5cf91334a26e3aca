"""The experiment, end to end: split -> index -> tune adapters (and the embedder) -> evaluate
-> report -> verdict.

Driven by a TOML file (``examples/experiment-demo.toml`` is the demo; see
``workflows.experiment_config``). ``run_experiment`` reads top to bottom as its four steps.
Every step is resumable: the index updates incrementally, an adapter is reused when the run
folder says it was trained with the same arguments on the same data, and the eval continues
its results.jsonl.

Run folder (``<data>/runs/<name>`` unless ``out_dir``)::

    experiment.toml   the config as given       experiment.json  steps done, timings
    train.json        train split (SQuAD)       test.json        test split (SQuAD)
    train-<key>.json  each adapter's sample     config.json ... report.html   the eval run
    train-embedder.json  the embedder's sample (with [embedder])
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core.config import Settings
from ragtune.core.qa import load_squad_json, squad_titles
from ragtune.eval.datasets import file_sha256, subset_squad
from ragtune.eval.split import split_groups
from ragtune.workflows.experiment_config import (
    AdapterSpec,
    EmbedderSpec,
    Experiment,
    eval_run_config,
)
from ragtune.workflows.experiment_state import (
    STATE_FILE,
    AdapterStep,
    EmbedderStep,
    EvalInputs,
    EvalStep,
    ExperimentState,
    IndexStep,
    SplitStep,
)

if TYPE_CHECKING:
    from ragtune.core.registry import AdapterInfo

# Files of the eval run: they are deleted when the index or an adapter changed.
EVAL_FILES = ("results.jsonl", "summary.json", "config.json")


@dataclass(frozen=True)
class ExperimentOutcome:
    """What a finished experiment hands back to its caller (the CLI prints it)."""

    experiment: Experiment
    folder: Path  # the run folder
    state: ExperimentState  # what each step did (experiment.json)
    summary: dict[str, Any]  # the eval summary (summary.json)

    @property
    def verdict_text(self) -> str:
        return str(self.summary["verdict"]["text"])

    @property
    def winner(self) -> str | None:
        """The variant with the best F1 (``rag``, ``hybrid:<adapter>``, ...), if any."""
        winner = self.summary["verdict"].get("winner")
        return str(winner) if winner else None


@dataclass
class _Run:
    """One run of an experiment: the config, the settings, the folder and its state."""

    exp: Experiment
    settings: Settings
    folder: Path
    state: ExperimentState
    progress: bool
    say: Callable[[str], None]

    def save(self) -> None:
        self.state.save(self.folder / STATE_FILE)


def run_experiment(
    exp: Experiment,
    settings: Settings,
    out_dir: Path | None = None,
    *,
    fresh: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ExperimentOutcome:
    """Run every step (skipping what is already done) and return the outcome.

    Args:
        exp: the experiment (``load_experiment``).
        settings: the resolved settings (``experiment_settings``).
        out_dir: the run folder (default ``<runs_dir>/<experiment name>``); an existing one
            resumes.
        fresh: delete the run folder first (the index update stays incremental).
        progress: show progress bars.
        say: where the one-line step messages go.
    """
    started = time.perf_counter()
    run = _open_run(exp, settings, out_dir, fresh, progress, say)
    train_raw = split_step(run)  # 1. train.json / test.json, by article
    index_version = index_step(run)  # 2. one index over every article
    for spec in exp.adapters.values():  # 3. each adapter on a sample of the train split
        adapter_step(run, spec, train_raw, index_version)
    if exp.embedder is not None:  # 3b. the retriever too, and a second index built with it
        embedder_step(run, exp.embedder, train_raw, index_version)
        tuned_index_step(run, exp.embedder)
    summary = eval_step(run, index_version)  # 4. every mode on the test split + report
    run.state.total_seconds_last_run = round(time.perf_counter() - started, 1)
    run.save()
    return ExperimentOutcome(exp, run.folder, run.state, summary)


def _open_run(
    exp: Experiment,
    settings: Settings,
    out_dir: Path | None,
    fresh: bool,
    progress: bool,
    say: Callable[[str], None],
) -> _Run:
    folder = Path(out_dir) if out_dir else settings.runs_dir / exp.name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exp.source, folder / "experiment.toml")
    state = ExperimentState.load(folder / STATE_FILE)
    return _Run(exp, settings, folder, state, progress, say)


# ---- 1. split ------------------------------------------------------------------------------


def split_step(run: _Run) -> dict[str, Any]:
    """Split by article: train.json feeds the tuner, test.json the eval. Returns the train side."""
    exp = run.exp
    raw = load_squad_json(exp.dataset, field="dataset")
    train_titles, test_titles = split_groups(squad_titles(raw), exp.split)
    train_raw, test_raw = subset_squad(raw, train_titles), subset_squad(raw, test_titles)
    _write_json(run.folder / "train.json", train_raw)
    _write_json(run.folder / "test.json", test_raw)
    step = run.state.split = SplitStep(
        dataset=str(exp.dataset),
        dataset_sha256=file_sha256(exp.dataset),
        seed=exp.split.seed,
        test_fraction=exp.split.test_fraction,
        train_articles=train_titles,
        test_articles=test_titles,
        train_questions=count_questions(train_raw),
        test_questions=count_questions(test_raw),
    )
    run.save()
    run.say(
        f"split: {len(train_titles)} train articles ({step.train_questions} "
        f"questions), {len(test_titles)} test articles ({step.test_questions})"
    )
    return train_raw


# ---- 2. index ------------------------------------------------------------------------------


def index_step(run: _Run) -> str | None:
    """Index every article (retrieval must find test passages among all of them); returns
    the index version."""
    from ragtune.indexer.api import build_index

    exp = run.exp
    t0 = time.perf_counter()
    run.say(f"index {exp.index!r}: {exp.dataset.name}")
    summary = build_index(run.settings, [exp.dataset], exp.index, progress=run.progress)
    run.state.index = IndexStep(
        name=exp.index,
        version=summary.version,
        chunks=summary.total_chunks,
        seconds=round(time.perf_counter() - t0, 1),
    )
    run.save()
    run.say(summary.to_text())
    return summary.version


# ---- 3. adapters ---------------------------------------------------------------------------


def adapter_step(
    run: _Run, spec: AdapterSpec, train_raw: dict[str, Any], index_version: str | None
) -> None:
    """Train adapter ``spec.key`` on its seeded sample of the train split, unless the run
    folder shows it was already trained with the same arguments, data and index."""
    from ragtune.tuner.api import train_adapter
    from ragtune.tuner.args import TuneArgs

    exp, key = run.exp, spec.key
    name = exp.adapter_name(key)
    data_path = run.folder / f"train-{key}.json"
    sample = sample_questions(train_raw, spec.questions, exp.split.seed)
    _write_json(data_path, sample)
    tune = {**spec.tune, "data": [str(data_path)], "name": name, "format": "squad"}
    if spec.raft:
        tune.setdefault("index", exp.index)
    args = TuneArgs.from_dict(tune)
    # JSON round trip: the key compares equal to the one read back from experiment.json
    run_key = json.loads(
        json.dumps(
            {
                "args": args.to_dict(),
                "data_sha256": file_sha256(data_path),
                "index_version": index_version if spec.raft else None,
                "settings": {
                    k: getattr(run.settings, k) for k in ("generator", "max_context_chars", "top_k")
                },
            },
            default=str,
        )
    )
    if _reusable(run, key, name, run_key):
        run.say(f"adapter {name!r}: already trained for this run, reused")
        return
    args.overwrite = True  # the experiment owns adapters named after it
    kind = "RAFT-style (retrieved passages)" if spec.raft else "closed-book QA"
    run.say(f"adapter {name!r}: {kind} on {count_questions(sample)} questions")
    t0 = time.perf_counter()
    info = train_adapter(run.settings, args, progress=run.progress)
    version, tokens_per_s, val_loss = _manifest_facts(info)
    run.state.adapters[key] = AdapterStep(
        name=name,
        key=run_key,
        version=version,
        seconds=round(time.perf_counter() - t0, 1),
        tokens_per_s=tokens_per_s,
        val_loss=val_loss,
    )
    run.save()


def _reusable(run: _Run, key: str, name: str, run_key: dict[str, Any]) -> bool:
    """The registry still holds the adapter this run folder trained with ``run_key``."""
    from ragtune.core.errors import UnknownAdapter
    from ragtune.core.registry import get_adapter

    prev = run.state.adapters.get(key)
    if prev is None or prev.key != run_key:
        return False
    try:
        info = get_adapter(run.settings, name)
    except UnknownAdapter:
        return False
    return prev.version == _manifest_facts(info)[0]


def _manifest_facts(info: AdapterInfo) -> tuple[str | None, float | None, float | None]:
    """(version, tokens/s, validation loss) of a registry adapter: all the experiment
    reads of an adapter manifest."""
    met = info.manifest.metrics
    return info.version, met.tokens_per_s if met else None, met.val_loss if met else None


# ---- 3b. the embedder ----------------------------------------------------------------------


def embedder_step(
    run: _Run, spec: EmbedderSpec, train_raw: dict[str, Any], index_version: str | None
) -> None:
    """Tune the embedder on its seeded sample of the train split (hard negatives mined from
    the run's index; validation: held-out train articles), unless the run folder shows it was
    already tuned with the same arguments, data and index."""
    from ragtune.core.embedders import get_tuned_embedder
    from ragtune.core.errors import ModelNotFound
    from ragtune.tuner.embed_api import train_embedder
    from ragtune.tuner.embed_args import EmbedTuneArgs

    exp = run.exp
    name = exp.embedder_name
    data_path = run.folder / "train-embedder.json"
    sample = sample_questions(train_raw, spec.questions, exp.split.seed)
    _write_json(data_path, sample)
    tune = {**spec.tune, "data": [str(data_path)], "name": name, "format": "squad"}
    tune.setdefault("index", exp.index)
    args = EmbedTuneArgs.from_dict(tune)
    run_key = json.loads(
        json.dumps(
            {
                "args": args.to_dict(),
                "data_sha256": file_sha256(data_path),
                "index_version": index_version,
                "settings": {k: getattr(run.settings, k) for k in ("embedder", "top_k")},
            },
            default=str,
        )
    )
    prev = run.state.embedder
    if prev is not None and prev.key == run_key:
        try:
            if get_tuned_embedder(run.settings, name).version == prev.version:
                run.say(f"embedder {name!r}: already tuned for this run, reused")
                return
        except ModelNotFound:
            pass
    args.overwrite = True  # the experiment owns the embedder named after it
    run.say(f"embedder {name!r}: tuning the retriever on {count_questions(sample)} questions")
    t0 = time.perf_counter()
    info = train_embedder(run.settings, args, progress=run.progress)
    met = info.manifest.metrics
    k = str(met.k)
    run.state.embedder = EmbedderStep(
        name=name,
        key=run_key,
        version=info.version,
        model_id=info.model_id,
        seconds=round(time.perf_counter() - t0, 1),
        val_recall={
            "k": met.k,
            "base": met.base.recall[k] if met.base else None,
            "tuned": met.best.recall[k] if met.best else None,
        },
    )
    run.save()


def tuned_index_step(run: _Run, spec: EmbedderSpec) -> str | None:
    """Index every article again with the tuned embedder, into the second index. An index
    built by an earlier training of the embedder is rebuilt whole (never mixed)."""
    from ragtune.core.embedders import tuned_spec
    from ragtune.core.errors import IndexNotFound, ManifestError
    from ragtune.core.index_store import read_manifest
    from ragtune.indexer.api import build_index, remove_index

    exp = run.exp
    assert run.state.embedder is not None  # embedder_step ran
    settings = run.settings.model_copy(update={"embedder": tuned_spec(exp.embedder_name)})
    try:
        built_with = read_manifest(settings, spec.index).embedding_model
    except (IndexNotFound, ManifestError):
        built_with = None
    if built_with is not None and built_with != run.state.embedder.model_id:
        run.say(f"index {spec.index!r}: built by another embedder ({built_with}), rebuilding")
        remove_index(settings, spec.index)
    t0 = time.perf_counter()
    run.say(f"index {spec.index!r}: {exp.dataset.name} with {run.state.embedder.model_id}")
    summary = build_index(settings, [exp.dataset], spec.index, progress=run.progress)
    run.state.tuned_index = IndexStep(
        name=spec.index,
        version=summary.version,
        chunks=summary.total_chunks,
        seconds=round(time.perf_counter() - t0, 1),
    )
    run.save()
    return summary.version


# ---- 4. evaluate ---------------------------------------------------------------------------


def eval_step(run: _Run, index_version: str | None) -> dict[str, Any]:
    """Evaluate every mode on the held-out articles; write the report; return the summary."""
    from ragtune.core.pipeline import Pipeline
    from ragtune.eval.runner import run_eval
    from ragtune.eval.targets import PipelineTarget

    config = eval_run_config(run.exp, run.folder / "test.json")
    # Results answered by an older index or adapter would mix two experiments: start over.
    emb, tuned = run.state.embedder, run.state.tuned_index
    inputs = EvalInputs(
        index_version=index_version,
        adapters={k: run.state.adapters[k].version for k in run.exp.adapters},
        embedder=emb.model_id if run.exp.embedder and emb else None,
        tuned_index_version=tuned.version if run.exp.embedder and tuned else None,
    )
    if run.state.eval is not None and run.state.eval.inputs != inputs:
        for stale in EVAL_FILES:
            (run.folder / stale).unlink(missing_ok=True)
        run.say(
            "eval: the index, an adapter or the embedder changed since the last run; "
            "evaluating afresh"
        )
    run.state.eval = EvalStep(inputs)
    run.save()
    t0 = time.perf_counter()
    target = PipelineTarget(Pipeline(run.settings))
    summary = run_eval(config, target, run.folder, progress=run.progress)
    run.state.eval.seconds = round(time.perf_counter() - t0, 1)
    run.state.eval.n = summary["n_questions"]
    return summary


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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
