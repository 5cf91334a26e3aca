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
    train-fit.json, validation.json, sweep/v<i>/, selection.json   with [sweep]
        (workflows.sweep: the swept adapter's variants, trained on train-fit.json and
        scored on validation.json; only the picked one is evaluated on test.json)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from ragtune.workflows.experiment_run import (
    ExperimentRun,
    count_questions,
    sample_questions,
    train_or_reuse,
    training_key,
    write_json,
)
from ragtune.workflows.experiment_state import (
    STATE_FILE,
    EmbedderStep,
    EvalInputs,
    EvalStep,
    ExperimentState,
    IndexStep,
    SplitStep,
)

__all__ = [
    "EVAL_FILES",
    "ExperimentOutcome",
    "count_questions",
    "run_experiment",
    "sample_questions",
]

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

    @property
    def selection_text(self) -> str | None:
        """Which sweep variant was picked on the validation split, and why (with [sweep])."""
        sel = self.state.selection
        return f"Picked on validation: {sel.picked} ({sel.adapter}): {sel.reason}" if sel else None


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
    swept = exp.sweep.adapter if exp.sweep else None
    for spec in exp.adapters.values():  # 3. each adapter on a sample of the train split
        if spec.key != swept:
            adapter_step(run, spec, train_raw, index_version)
    if exp.sweep is not None:  # 3a. the swept adapter: every variant, picked on validation
        from ragtune.workflows.sweep import run_sweep

        run_sweep(run, exp.sweep, train_raw, index_version)
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
) -> ExperimentRun:
    folder = Path(out_dir) if out_dir else settings.runs_dir / exp.name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exp.source, folder / "experiment.toml")
    state = ExperimentState.load(folder / STATE_FILE)
    return ExperimentRun(exp, settings, folder, state, progress, say)


# ---- 1. split ------------------------------------------------------------------------------


def split_step(run: ExperimentRun) -> dict[str, Any]:
    """Split by article: train.json feeds the tuner, test.json the eval. Returns the train side."""
    exp = run.exp
    raw = load_squad_json(exp.dataset, field="dataset")
    train_titles, test_titles = split_groups(squad_titles(raw), exp.split)
    train_raw, test_raw = subset_squad(raw, train_titles), subset_squad(raw, test_titles)
    write_json(run.folder / "train.json", train_raw)
    write_json(run.folder / "test.json", test_raw)
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


def index_step(run: ExperimentRun) -> str | None:
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
    run: ExperimentRun, spec: AdapterSpec, train_raw: dict[str, Any], index_version: str | None
) -> None:
    """Train adapter ``spec.key`` on its seeded sample of the train split, unless the run
    folder shows it was already trained with the same arguments, data and index."""
    from ragtune.tuner.args import TuneArgs

    exp, key = run.exp, spec.key
    name = exp.adapter_name(key)
    data_path = run.folder / f"train-{key}.json"
    sample = sample_questions(train_raw, spec.questions, exp.split.seed)
    write_json(data_path, sample)
    tune = {**spec.tune, "data": [str(data_path)], "name": name, "format": "squad"}
    if spec.raft:
        tune.setdefault("index", exp.index)
    args = TuneArgs.from_dict(tune)
    run_key = training_key(args, data_path, run.settings, index_version)
    kind = "RAFT-style (retrieved passages)" if spec.raft else "closed-book QA"
    what = f"{kind} on {count_questions(sample)} questions"
    step, reused = train_or_reuse(
        run, args, run_key, run.state.adapters.get(key), run.settings, what
    )
    if not reused:
        run.state.adapters[key] = step
        run.save()


# ---- 3b. the embedder ----------------------------------------------------------------------


def embedder_step(
    run: ExperimentRun, spec: EmbedderSpec, train_raw: dict[str, Any], index_version: str | None
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
    write_json(data_path, sample)
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


def tuned_index_step(run: ExperimentRun, spec: EmbedderSpec) -> str | None:
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


def eval_step(run: ExperimentRun, index_version: str | None) -> dict[str, Any]:
    """Evaluate every mode on the held-out articles; write the report; return the summary."""
    from ragtune.eval.runner import run_eval
    from ragtune.eval.targets import PipelineTarget

    names, retrieval, picked = picked_variant(run)
    config = eval_run_config(run.exp, run.folder / "test.json", names, retrieval)
    # Results answered by an older index or adapter would mix two experiments: start over.
    emb, tuned = run.state.embedder, run.state.tuned_index
    inputs = EvalInputs(
        index_version=index_version,
        adapters={k: run.state.adapters[k].version for k in run.exp.adapters},
        embedder=emb.model_id if run.exp.embedder and emb else None,
        tuned_index_version=tuned.version if run.exp.embedder and tuned else None,
        picked=picked,
    )
    if run.state.eval is not None and run.state.eval.inputs != inputs:
        for stale in EVAL_FILES:
            (run.folder / stale).unlink(missing_ok=True)
        run.say(
            "eval: the index, an adapter, the embedder or the sweep's pick changed since the "
            "last run; evaluating afresh"
        )
    run.state.eval = EvalStep(inputs)
    if run.state.selection is not None and picked not in run.state.selection.tested:
        run.state.selection.tested.append(picked or "")  # the test split meets this pick
        from ragtune.workflows.sweep import write_selection_file

        write_selection_file(run)
    run.save()
    t0 = time.perf_counter()
    target = PipelineTarget(run.pipeline)
    summary = run_eval(config, target, run.folder, progress=run.progress)
    run.state.eval.seconds = round(time.perf_counter() - t0, 1)
    run.state.eval.n = summary["n_questions"]
    return summary


def picked_variant(run: ExperimentRun) -> tuple[dict[str, str], dict[str, Any], str | None]:
    """(adapter key -> registry name, retrieval settings, variant key) of the sweep's pick;
    empty without a sweep."""
    sweep, sel = run.exp.sweep, run.state.selection
    if sweep is None or sel is None:
        return {}, {}, None
    return {sweep.adapter: sel.adapter}, dict(run.state.sweep[sel.picked].retrieval), sel.picked
