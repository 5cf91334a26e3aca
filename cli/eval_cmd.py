"""`ragtune eval run | compare | experiment`: measure base, RAG, fine-tuned and hybrid answers.

Heavy imports (torch, the pipeline, matplotlib) happen inside the command bodies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragtune.cli.context import AppContext, pass_app

if TYPE_CHECKING:
    from ragtune.workflows.experiment import ExperimentOutcome
    from ragtune.workflows.experiment_config import Experiment

RUN_FLAGS = (
    "dataset",
    "index",
    "modes",
    "adapters",
    "finetune_adapters",
    "hybrid_adapters",
    "limit",
    "split",
    "test_fraction",
    "split_seed",
    "sample_seed",
    "top_k",
    "retrieval",
    "filter",
    "max_new_tokens",
    "batch_size",
    "n_boot",
    "url",
    "retrievers",
    "oracle_with_hybrid",
)


def parse_retriever(spec: str) -> tuple[str, dict[str, str]]:
    """``LABEL=INDEX,EMBEDDER`` (e.g. ``tuned=kb-tuned,tuned:kb-emb``) -> (label, retriever)."""
    from ragtune.core.errors import InvalidInput

    label, _, rest = spec.partition("=")
    index, _, embedder = rest.partition(",")
    if not (label.strip() and index.strip() and embedder.strip()):
        raise InvalidInput(
            f"--retriever {spec!r}: use LABEL=INDEX,EMBEDDER (e.g. tuned=kb-tuned,tuned:kb-emb)",
            field="retrievers",
        )
    return label.strip(), {"index": index.strip(), "embedder": embedder.strip()}


class RunOption(click.Option):
    """An `eval run` option whose help ends with its ``RunConfig`` default.

    ``RunConfig`` holds the defaults; they are looked up when help is printed, so that
    building the CLI does not import the eval runner. The option's own default stays None:
    a flag not given must not override the --config file.
    """

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from ragtune.eval.runner import RunConfig

        record = super().get_help_record(ctx)
        if record is None or self.name is None:
            return record
        default = getattr(RunConfig(dataset=""), self.name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        return record[0], f"{record[1].rstrip('.')} (default: {shown})."


@click.group("eval")
def eval_group() -> None:
    """Evaluate modes on held-out questions; compare runs; run a whole experiment.

    \b
      ragtune eval run --dataset qa.json --index kb --modes base,rag,hybrid --adapter raft --out runs/x
      ragtune eval compare runs/x runs/y
      ragtune eval experiment examples/experiment-demo.toml
    """


def _eval_config_file(path: Path) -> dict[str, Any]:
    from ragtune.core.config import read_toml

    raw = read_toml(path, "--config file", field="config")
    return dict(raw.get("eval", raw))


# Keys of a run's config.json that describe the run, not its options.
RUN_RECORD_KEYS = ("dataset_sha256", "variants", "target", "versions", "started")


def _rerun_values(folder: Path) -> dict[str, Any]:
    """The options of a finished run (its config.json), to evaluate them again."""
    from ragtune.core.errors import InvalidInput

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInput(f"--rerun {folder}: no readable config.json", field="rerun") from e
    return {k: v for k, v in raw.items() if k not in RUN_RECORD_KEYS}


def build_run_config(
    config_file: Path | None, flags: dict[str, Any], rerun: Path | None = None
) -> Any:
    """The eval config: the TOML file (top level or [eval]), or the config of a run to
    evaluate again (``rerun``), with flags given on top.

    A dataset path in the file is relative to the file; one given as a flag, to the
    current folder.
    """
    from ragtune.core.errors import InvalidInput
    from ragtune.eval.runner import RunConfig

    values: dict[str, Any] = {}
    base_dir = None
    if rerun is not None:
        if config_file is not None:
            raise InvalidInput("give --rerun or --config, not both", field="rerun")
        values = _rerun_values(rerun)
    if config_file is not None:
        values = _eval_config_file(config_file)
        base_dir = config_file.parent
        out = values.pop("out", None)
        if out is not None and not flags.get("out"):
            flags["out"] = str((base_dir / out).resolve())
    for k in RUN_FLAGS:
        v = flags.get(k)
        if v is None or v == ():
            continue
        if k == "modes":
            v = [m for m in v.split(",") if m.strip()]
        elif k == "retrievers":
            v = {**values.get("retrievers", {}), **dict(parse_retriever(r) for r in v)}
        elif k == "dataset":
            v = str(Path(v).resolve())
        elif k == "filter":
            from ragtune.core.filters import parse_filter_text

            flt = parse_filter_text(v)
            v = flt.to_json() if flt is not None else None
        elif isinstance(v, tuple):
            v = list(v)
        values[k] = v
    if "dataset" not in values:
        raise InvalidInput("give --dataset FILE (or a --config file naming one)", field="dataset")
    return RunConfig.from_mapping(values, base_dir)


def _print_end(out: Path, verdict: str) -> None:
    click.echo("")
    click.echo(verdict)
    click.echo("")
    click.echo(f"report: {out / 'report.html'}  (also report.md, summary.json)")


@eval_group.command("run")
@click.option(
    "--dataset",
    "-d",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="SQuAD .json or JSONL {question, answers[], gold_doc_ids?, group?, context?}.",
)
@click.option("--index", "-i", default=None, help="Index for rag/hybrid (setting default_index).")
@click.option(
    "--modes",
    "-m",
    cls=RunOption,
    default=None,
    help="Comma list of base, rag, finetune, hybrid, oracle; kind:ADAPTER picks an adapter.",
)
@click.option(
    "--adapter",
    "-a",
    "adapters",
    multiple=True,
    help="Adapter for finetune and hybrid (repeat: one variant per adapter).",
)
@click.option(
    "--finetune-adapter",
    "finetune_adapters",
    multiple=True,
    help="Adapter(s) for the finetune mode only.",
)
@click.option(
    "--hybrid-adapter",
    "hybrid_adapters",
    multiple=True,
    help="Adapter(s) for the hybrid mode only.",
)
@click.option(
    "--limit", "-n", type=int, default=None, help="Evaluate a seeded sample of N questions."
)
@click.option(
    "--split",
    type=click.Choice(["all", "train", "test"]),
    cls=RunOption,
    default=None,
    help="Which side of the seeded by-article split.",
)
@click.option(
    "--test-fraction", cls=RunOption, type=float, default=None, help="Share of groups held out."
)
@click.option("--split-seed", cls=RunOption, type=int, default=None, help="Seed of the split.")
@click.option(
    "--sample-seed", cls=RunOption, type=int, default=None, help="Seed of the --limit sample."
)
@click.option("--top-k", type=int, default=None, help="Passages per prompt (setting top_k).")
@click.option(
    "--retrieval",
    type=click.Choice(["dense", "bm25", "hybrid"]),
    default=None,
    help="Retrieval method (setting retrieval).",
)
@click.option(
    "--filter",
    default=None,
    help='Metadata filter on retrieval, JSON: \'{"file_type": "pdf", "year": {"gte": 2020}}\'.',
)
@click.option("--max-new-tokens", type=int, default=None, help="Answer length limit.")
@click.option(
    "--batch-size", cls=RunOption, type=int, default=None, help="Questions generated together."
)
@click.option("--n-boot", cls=RunOption, type=int, default=None, help="Bootstrap resamples.")
@click.option(
    "--retriever",
    "retrievers",
    multiple=True,
    metavar="LABEL=INDEX,EMBEDDER",
    help="An extra retriever: every rag/hybrid mode also runs on INDEX searched with EMBEDDER "
    "(e.g. tuned=kb-tuned,tuned:kb-emb gives rag@tuned); repeatable.",
)
@click.option(
    "--oracle-with-hybrid/--no-oracle-with-hybrid",
    "oracle_with_hybrid",
    default=None,
    help="Run oracle:A beside every hybrid:A, to split its F1 gap into retrieval and reading "
    "loss (default: on).",
)
@click.option("--url", default=None, help="Evaluate a running service instead (http://host:port).")
@click.option(
    "--api-key",
    envvar="RAGTUNE_EVAL_API_KEY",
    default=None,
    help="Bearer token for --url (or $RAGTUNE_EVAL_API_KEY); never written to the run.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run folder (default: <data>/runs/<time>-<dataset>); an existing one resumes.",
)
@click.option(
    "--config",
    "eval_config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML holding these options (top level or [eval]).",
)
@click.option(
    "--rerun",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Evaluate a finished run's options again (its config.json: dataset, modes, "
    "adapters, limits) with today's adapters and index, into a new --out; then "
    "`eval compare` the two.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@pass_app
def run_cmd(
    app: AppContext,
    eval_config: Path | None,
    api_key: str | None,
    out: Path | None,
    rerun: Path | None,
    quiet: bool,
    **flags: Any,
) -> None:
    """Answer every question in every mode; write results, summary and report into --out."""
    from ragtune.core.errors import InvalidInput
    from ragtune.eval.runner import run_eval

    if rerun is not None and (out is None or out.resolve() == rerun.resolve()):
        raise InvalidInput("--rerun needs a new --out folder (the old run stays)", field="out")
    flags["out"] = str(out) if out else None
    config = build_run_config(eval_config, flags, rerun)
    config.validate()
    settings = app.settings()
    if flags.get("out"):
        out = Path(flags["out"])
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = settings.runs_dir / f"{stamp}-{Path(config.dataset).stem}"
    if config.url:
        from ragtune.eval.targets import HttpTarget

        target: Any = HttpTarget(config.url, api_key)
    else:
        from ragtune.core.pipeline import Pipeline
        from ragtune.eval.targets import PipelineTarget

        target = PipelineTarget(Pipeline(settings))
    summary = run_eval(config, target, out, progress=not quiet)
    _print_end(out, summary["verdict"]["text"])


@eval_group.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare_cmd(run_a: Path, run_b: Path, as_json: bool) -> None:
    """Metric deltas B - A per mode, with a paired F1 test on shared questions."""
    from ragtune.eval.compare import compare_runs, format_comparison

    c = compare_runs(run_a, run_b)
    click.echo(json.dumps(c, indent=2) if as_json else format_comparison(c))


def run_experiment_cmd(
    app: AppContext, exp: Experiment, out: Path | None, fresh: bool, quiet: bool
) -> ExperimentOutcome:
    """Shared by `eval experiment` and `demo`: run it, then print the verdict and timings."""
    from ragtune.workflows.experiment import run_experiment
    from ragtune.workflows.experiment_config import experiment_settings

    t0 = time.perf_counter()
    settings = experiment_settings(exp, app.config_file, app.overrides)
    outcome = run_experiment(
        exp,
        settings,
        out,
        fresh=fresh,
        progress=not quiet,
        say=lambda m: click.echo(m, err=True),
    )
    _print_end(outcome.folder, outcome.verdict_text)
    if outcome.selection_text:
        click.echo(outcome.selection_text)
    parts = ", ".join(f"{step} {s:.0f} s" for step, s in outcome.state.step_seconds())
    click.echo(f"time: {time.perf_counter() - t0:.0f} s ({parts})")
    return outcome


@eval_group.command("experiment")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run folder (default: <data>/runs/<experiment name>); an existing one resumes.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Delete the run folder first and redo every step (the index update stays incremental).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@pass_app
def experiment_cmd(
    app: AppContext, config: Path, out: Path | None, fresh: bool, quiet: bool
) -> None:
    """Split, index, tune the adapters, evaluate every mode, report and print the verdict."""
    from ragtune.workflows.experiment_config import load_experiment

    run_experiment_cmd(app, load_experiment(config), out, fresh, quiet)


def register(cli: click.Group) -> None:
    cli.add_command(eval_group)
