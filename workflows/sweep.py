"""The experiment's sweep: choose one adapter's recipe without looking at the test split.

With a ``[sweep]`` section (``workflows.sweep_config``), step 3 of the experiment becomes,
for the swept adapter:

1. **validation split**: the train articles are split again, by article and seeded, into the
   articles the variants train on (``train-fit.json``) and validation articles
   (``validation.json``); the test articles are not touched;
2. **train** every variant of the grid on its sample of ``train-fit.json`` (variants whose
   training would be identical share one adapter, ``<name>-<key>-v<i>``);
3. **validate** each on the validation questions (``sweep/v<i>/``, a normal eval run folder:
   results.jsonl, summary.json, report);
4. **select** by validation F1, ties going to the cheaper variant (``eval.selection``), and
   write ``selection.json``; the experiment then evaluates only the picked variant on the
   test split, next to the other modes, and its report shows the sweep table.

Each variant's training and its validation are steps of ``experiment.json``: a rerun reuses
what is done, retrains what changed and re-validates only what was retrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.eval.datasets import subset_squad
from ragtune.eval.split import SplitSpec, split_groups
from ragtune.workflows.experiment_config import mode_list
from ragtune.workflows.experiment_run import (
    KEY_SETTINGS,
    ExperimentRun,
    count_questions,
    sample_questions,
    train_or_reuse,
    training_key,
    write_json,
)
from ragtune.workflows.experiment_state import (
    AdapterStep,
    SelectionStep,
    SweepStep,
    ValidationSplitStep,
)
from ragtune.workflows.sweep_config import SweepSpec, SweepVariant

if TYPE_CHECKING:
    from ragtune.core.config import Settings
    from ragtune.tuner.args import TuneArgs

SWEEP_DIR = "sweep"
FIT_FILE = "train-fit.json"
VALIDATION_FILE = "validation.json"
EVAL_FILES = ("results.jsonl", "summary.json", "config.json")
# Settings in a variant's training key; top_k and retrieval count as the RAFT passages they
# give (raft_k, method), so variants that differ only in how they are served share a training.
SWEEP_KEY_SETTINGS = tuple(k for k in KEY_SETTINGS if k != "top_k")
# The eval options a validation run takes from [eval] (modes, limit and index are its own).
VALIDATION_EVAL_KEYS = (
    "sample_seed",
    "batch_size",
    "max_new_tokens",
    "retrieve_k",
    "recall_ks",
    "n_boot",
    "top_k",
    "retrieval",
)


def run_sweep(
    run: ExperimentRun, spec: SweepSpec, train_raw: dict[str, Any], index_version: str | None
) -> None:
    """Every step of the sweep; afterwards ``run.state.adapters[spec.adapter]`` is the pick."""
    fit_raw = validation_split_step(run, spec, train_raw)
    aspec = run.exp.adapters[spec.adapter]
    data_path = run.folder / f"train-{spec.adapter}.json"
    write_json(data_path, sample_questions(fit_raw, aspec.questions, run.exp.split.seed))
    for variant in spec.variants:
        sweep_train_step(run, spec, variant, data_path, index_version)
    for variant in spec.variants:
        validation_step(run, spec, variant, index_version)
    selection_step(run, spec)


def validation_split_step(
    run: ExperimentRun, spec: SweepSpec, train_raw: dict[str, Any]
) -> dict[str, Any]:
    """Hold out validation articles from the train split; returns the part variants train on."""
    assert run.state.split is not None  # split_step ran
    train_titles = run.state.split.train_articles
    fit_titles, val_titles = split_groups(
        train_titles, SplitSpec(spec.validation_fraction, spec.seed)
    )
    fit_raw, val_raw = subset_squad(train_raw, fit_titles), subset_squad(train_raw, val_titles)
    write_json(run.folder / FIT_FILE, fit_raw)
    write_json(run.folder / VALIDATION_FILE, val_raw)
    step = run.state.validation_split = ValidationSplitStep(
        seed=spec.seed,
        fraction=spec.validation_fraction,
        fit_articles=fit_titles,
        validation_articles=val_titles,
        fit_questions=count_questions(fit_raw),
        validation_questions=count_questions(val_raw),
    )
    run.save()
    run.say(
        f"validation split: {len(val_titles)} of the {len(train_titles)} train articles held "
        f"out ({step.validation_questions} questions); the sweep's variants train on the other "
        f"{len(fit_titles)}"
    )
    return fit_raw


def sweep_train_step(
    run: ExperimentRun,
    spec: SweepSpec,
    variant: SweepVariant,
    data_path: Path,
    index_version: str | None,
) -> None:
    """Train one variant (or share the adapter of an earlier variant with the same training)."""
    from ragtune.tuner.args import TuneArgs

    exp = run.exp
    aspec = exp.adapters[spec.adapter]
    base_name = exp.adapter_name(spec.adapter)
    settings = run.settings.model_copy(update=variant.retrieval)
    tune = {**aspec.tune, **variant.tune, "data": [str(data_path)], "format": "squad"}
    args = TuneArgs.from_dict({**tune, "name": base_name})
    if args.raft:
        args.index = args.index or exp.index
    recipe = _recipe(args, data_path, settings, index_version)
    prev = run.state.sweep.get(variant.key)
    for other in spec.variants[: spec.variants.index(variant)]:
        done = run.state.sweep.get(other.key)
        if done is not None and done.adapter.key.get("recipe") == recipe:
            run.say(f"sweep {variant.key} ({variant.label}): the same training as {other.key}")
            _record(run, variant, done.adapter, prev)
            return
    args.name = f"{base_name}-{variant.key}"
    key = {
        **_recipe(args, data_path, settings, index_version),
        "recipe": recipe,
    }  # the training without its adapter name: what variants may share
    what = (
        f"sweep {variant.key} ({variant.label}) on "
        f"{count_questions(json.loads(data_path.read_text(encoding='utf-8')))} questions"
    )
    step, _ = train_or_reuse(run, args, key, prev.adapter if prev else None, settings, what)
    _record(run, variant, step, prev)


def _recipe(
    args: TuneArgs, data_path: Path, settings: Settings, index_version: str | None
) -> dict[str, Any]:
    key = training_key(args, data_path, settings, index_version, SWEEP_KEY_SETTINGS)
    if args.raft:
        key["raft"] = {
            "k": args.raft_k or settings.top_k,
            "retrieval": args.retrieval or settings.retrieval,
        }
    return key


def _record(
    run: ExperimentRun, variant: SweepVariant, step: AdapterStep, prev: SweepStep | None
) -> None:
    same = prev is not None and prev.adapter == step and prev.retrieval == variant.retrieval
    run.state.sweep[variant.key] = SweepStep(
        key=variant.key,
        label=variant.label,
        adapter=step,
        retrieval=dict(variant.retrieval),
        validation=prev.validation if same and prev is not None else None,
    )
    run.save()


def adapter_kind(run: ExperimentRun, key: str) -> str:
    """How [eval] evaluates the swept adapter (``hybrid`` for ``hybrid:raft``)."""
    for m in mode_list(run.exp):
        kind, _, k = m.partition(":")
        if k == key and kind != "oracle":
            return kind
    raise AssertionError("load_sweep checks that the swept adapter is evaluated")


def validation_step(
    run: ExperimentRun, spec: SweepSpec, variant: SweepVariant, index_version: str | None
) -> None:
    """Score one variant on the validation questions (a resumable eval run of its own)."""
    from ragtune.eval.runner import RunConfig, run_eval
    from ragtune.eval.targets import PipelineTarget

    step = run.state.sweep[variant.key]
    name = step.adapter.name
    folder = run.folder / SWEEP_DIR / variant.key
    inputs = {
        "adapter": name,
        "version": step.adapter.version,
        "index_version": index_version,
        "retrieval": dict(variant.retrieval),
        "questions": spec.validation_questions,
    }
    done = step.validation or {}
    if done.get("inputs") == inputs and "f1" in done and (folder / "summary.json").is_file():
        return
    if done.get("inputs") != inputs:  # answers of another adapter or setting: start over
        for stale in EVAL_FILES:
            (folder / stale).unlink(missing_ok=True)
    step.validation = {"inputs": inputs}
    run.save()
    ev = {k: run.exp.eval[k] for k in VALIDATION_EVAL_KEYS if k in run.exp.eval}
    variant_name = f"{adapter_kind(run, spec.adapter)}:{name}"
    config = RunConfig.from_mapping(
        {
            **ev,
            **variant.retrieval,
            "dataset": str(run.folder / VALIDATION_FILE),
            "modes": [variant_name],
            "index": run.exp.index,
            "split": "all",
            "limit": spec.validation_questions,
            "oracle_with_hybrid": False,
        }
    )
    run.say(f"validation {variant.key} ({variant.label}): {variant_name}")
    t0 = time.perf_counter()
    summary = run_eval(config, PipelineTarget(run.pipeline), folder, progress=run.progress)
    v = summary["variants"][variant_name]
    f1 = v.get("f1") or {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    step.validation = {
        "inputs": inputs,
        "variant": variant_name,
        "n": v["n"],
        "f1": {k: f1[k] for k in ("mean", "lo", "hi")},
        "em": (v.get("em") or {}).get("mean", 0.0),
        "prompt_tokens": v.get("prompt_tokens_mean", 0.0),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    run.save()
    run.say(
        f"validation {variant.key}: F1 {f1['mean']:.3f} [{f1['lo']:.3f}, {f1['hi']:.3f}] "
        f"on {v['n']} questions"
    )


def selection_step(run: ExperimentRun, spec: SweepSpec) -> None:
    """Pick by validation F1 (ties: the cheaper); write selection.json; the pick becomes the
    experiment's adapter for ``spec.adapter``."""
    from ragtune.eval.runner import RESULTS, read_results
    from ragtune.eval.selection import Candidate, pick

    candidates = []
    for variant in spec.variants:
        step = run.state.sweep[variant.key]
        val = step.validation or {}
        per_q = {
            r["qid"]: float(r["f1"])
            for r in read_results(run.folder / SWEEP_DIR / variant.key / RESULTS)
            if r.get("variant") == val.get("variant") and "f1" in r
        }
        candidates.append(
            Candidate(
                key=variant.key,
                label=variant.label,
                adapter=step.adapter.name,
                n=int(val.get("n", 0)),
                f1=dict(val.get("f1") or {"mean": 0.0, "lo": 0.0, "hi": 0.0}),
                em=float(val.get("em", 0.0)),
                train_tokens=int(step.adapter.tokens or 0),
                train_seconds=float(step.adapter.seconds),
                prompt_tokens=float(val.get("prompt_tokens", 0.0)),
                per_question_f1=per_q,
            )
        )
    n_boot = int(run.exp.eval.get("n_boot", 10_000))
    sel = pick(candidates, spec.tie_margin, n_boot)
    picked = run.state.sweep[sel.picked]
    prev = run.state.selection
    tested = list(prev.tested) if prev is not None else []
    run.state.selection = SelectionStep(sel.picked, picked.adapter.name, sel.reason, tested)
    run.state.adapters[spec.adapter] = picked.adapter
    split = run.state.validation_split
    assert split is not None
    data = {
        **sel.to_dict(),
        "picked_adapter": picked.adapter.name,
        "retrieval": picked.retrieval,
        "split": {
            "seed": split.seed,
            "fraction": split.fraction,
            "fit_articles": len(split.fit_articles),
            "validation_articles": len(split.validation_articles),
            "questions": candidates[0].n if candidates else 0,
            "articles": split.validation_articles,
        },
        "tested": tested,
    }
    from ragtune.eval.selection import write_selection

    write_selection(run.folder, data)
    run.save()
    run.say(f"sweep: picked {sel.picked} ({picked.adapter.name}): {sel.reason}")


def write_selection_file(run: ExperimentRun) -> None:
    """Rewrite selection.json's record of which picks met the test split."""
    from ragtune.eval.selection import read_selection, write_selection

    sel = run.state.selection
    data = read_selection(run.folder)
    if sel is not None and data is not None:
        write_selection(run.folder, {**data, "tested": list(sel.tested)})
