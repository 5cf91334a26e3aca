"""`ragtune tune` (train an adapter) and `ragtune adapters list|show|rm|export`.

The flags are ``tuner.args.TuneArgs`` fields and their help is the fields' docstrings.
Every flag defaults to "not given", so a ``--config`` TOML file fills in what the command
line leaves out and the dataclass defaults fill in the rest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragtune.cli.context import AppContext, pass_app
from ragtune.tuner.args import TuneArgs, field_docs, split_modules

if TYPE_CHECKING:
    from ragtune.core.manifests import AdapterManifest


def _help(name: str) -> str:
    return field_docs().get(name, "")


def _opt(*decls: str, name: str, **kw: Any) -> Any:
    return click.option(*decls, name, default=None, help=_help(name), **kw)


TUNE_OPTIONS = [
    _opt("--data", name="data", multiple=True, metavar="FILE[:WEIGHT]"),
    _opt("--name", name="name"),
    _opt(
        "--format",
        name="format",
        type=click.Choice(["auto", "prompt", "alpaca", "chat", "squad", "template"]),
    ),
    _opt("--template", name="template", type=click.Path(dir_okay=False)),
    _opt("--base", name="base", metavar="MODEL"),
    _opt("--method", name="method", type=click.Choice(["lora", "full"])),
    _opt("--init-from", name="init_from", metavar="ADAPTER"),
    _opt("--raft/--no-raft", name="raft"),
    _opt("--index", name="index"),
    _opt("--raft-k", name="raft_k", type=int),
    _opt("--p-oracle", name="p_oracle", type=float),
    _opt("--raft-quote/--no-raft-quote", name="raft_quote"),
    _opt("--retrieval", name="retrieval", type=click.Choice(["dense", "bm25", "hybrid"])),
    _opt("--r", name="r", type=int),
    _opt("--alpha", name="alpha", type=int),
    _opt("--dropout", name="dropout", type=float),
    _opt("--target-modules", name="target_modules", metavar="A,B,..."),
    _opt("--lr", name="lr", type=float),
    _opt("--schedule", name="schedule", type=click.Choice(["cosine", "linear", "constant"])),
    _opt("--warmup-ratio", name="warmup_ratio", type=float),
    _opt("--weight-decay", name="weight_decay", type=float),
    _opt("--epochs", name="epochs", type=float),
    _opt("--max-steps", name="max_steps", type=int),
    _opt("--batch-size", name="batch_size", type=int),
    _opt("--grad-accum", name="grad_accum", type=int),
    _opt("--max-length", name="max_length", type=int),
    _opt("--seed", name="seed", type=int),
    _opt("--val-fraction", name="val_fraction", type=float),
    _opt("--max-val-examples", name="max_val_examples", type=int),
    _opt("--group-by", name="group_by", metavar="FIELD"),
    _opt("--eval-every", name="eval_every", type=int),
    _opt("--patience", name="patience", type=int),
    _opt("--strategy", name="strategy", type=click.Choice(["ddp", "fsdp"])),
    _opt("--save-every", name="save_every", type=int),
    _opt("--grad-clip", name="grad_clip", type=float),
    _opt("--gradient-checkpointing/--no-gradient-checkpointing", name="gradient_checkpointing"),
    _opt("--dedup/--no-dedup", name="dedup"),
    _opt("--forgetting/--no-forgetting", name="forgetting"),
    _opt("--min-free-disk-mb", name="min_free_disk_mb", type=int),
    _opt("--restart/--no-restart", name="restart"),
    _opt("--overwrite/--no-overwrite", name="overwrite"),
]


def build_args(config: Path | None, flags: dict[str, Any]) -> TuneArgs:
    """Flags over the TOML file over the dataclass defaults.

    A flag the command line did not give is None (or () for --data); False is a given value:
    ``--no-dedup`` must override ``dedup = true`` in the file.
    """
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "data" in given:
        given["data"] = list(given["data"])
    if "target_modules" in given:
        given["target_modules"] = split_modules(given["target_modules"])
    if config is not None:
        return TuneArgs.from_toml(config, **given)
    return TuneArgs.from_dict(given)


def tune_command() -> click.Command:
    @click.command("tune")
    @click.option(
        "--config",
        "tune_config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TOML file with tune options (top level or [tune]).",
    )
    @click.option("--quiet", is_flag=True, help="No progress bar or data summary.")
    @click.option(
        "--nproc",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Train data-parallel over N processes on this machine under torchrun (gloo on "
        "the CPU, NCCL with one GPU each): torch DDP, or FSDP2 with --strategy fsdp (the "
        "model sharded over the processes, for a base too big for one device). For several "
        "machines run `torchrun --nnodes ... -m ragtune tune ...` on each (docs/tuner.md).",
    )
    @click.option(
        "--retrain",
        "retrain",
        default=None,
        metavar="NAME",
        help="Train adapter NAME again with the options and data its manifest records (flags "
        "given here win), on the live index: a new version of NAME.",
    )
    @click.option(
        "--print-args",
        is_flag=True,
        help="Check the options, print them resolved (flags over --config over defaults) "
        "as JSON and exit without training.",
    )
    @pass_app
    def tune(
        app: AppContext,
        tune_config: Path | None,
        quiet: bool,
        nproc: int,
        retrain: str | None,
        print_args: bool,
        **flags: Any,
    ) -> None:
        """Train a LoRA adapter (or --method full model) and add it to the registry.

        \b
        Examples:
          ragtune tune --data qa.jsonl --name support-v1 --epochs 3
          ragtune tune --data squad.json --raft --index docs --name docs-raft
          ragtune tune --data a.jsonl:2 --data b.jsonl:0.5 --name mix --max-steps 200
          ragtune tune --data reviews.csv --template examples/templates/reviews.toml --name rev
          ragtune tune --config tune.toml --no-dedup --print-args
          ragtune tune --retrain docs-raft          # again, on the live index: a new version
        """
        if retrain:
            if nproc > 1 or flags.get("strategy"):
                raise click.UsageError(
                    "--retrain runs in one process: leave --nproc and --strategy out"
                )
            _retrain(app, retrain, tune_config, quiet, print_args, flags)
            return
        args = build_args(tune_config, flags)
        if print_args:
            click.echo(json.dumps(args.validate().to_dict(), indent=2))
            return
        from ragtune.tuner.distributed import Parallel

        parallel = Parallel.from_env(os.environ, args.strategy)  # torchrun: each rank
        if args.strategy == "fsdp" and nproc < 2 and not parallel.active:
            raise click.UsageError(
                "--strategy fsdp shards the model over processes: give --nproc 2 or more"
            )
        if nproc > 1 and not parallel.active:
            args.validate()  # a bad flag fails here, once, not in N workers
            sys.exit(_launch(nproc))
        from ragtune.tuner.api import train_adapter

        with parallel.naming_lost_peers():
            info = train_adapter(app.settings(), args, progress=not quiet, parallel=parallel)
        if parallel.is_writer:
            _print_summary(info.name, info.manifest)

    for opt in TUNE_OPTIONS:  # tune is already a Command: options append in this order
        tune = opt(tune)
    return tune


def _launch(nproc: int) -> int:
    """Run this same command in ``nproc`` workers under torchrun's agent on this machine
    (``torch.distributed.run``, a free rendezvous port); returns 0, or 1 when a worker
    failed (the agent then stops the others; each worker prints its own error)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # The command's own flags go to the workers as they are (torchrun's parser would take
    # "--r" for one of its abbreviations), so only the launcher's options are parsed.
    launch = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "ragtune"]
    )
    launch.training_script_args = _without_nproc(sys.argv[1:])
    try:
        run(launch)
    except ChildFailedError as e:  # its failures are keyed by global rank
        ranks = sorted(
            e.failures.items(), key=lambda rf: (_likely_consequence(rf[1].exitcode), rf[0])
        )
        failed = ", ".join(f"rank {rank} ({_exit(f.exitcode)})" for rank, f in ranks)
        click.echo(f"error: data-parallel training failed: {failed}", err=True)
        return 1
    return 0


def _likely_consequence(code: int) -> int:
    """Orders the failed ranks, the cause first: a rank killed by SIGKILL (``kill -9``, the
    OOM killer), then by another signal (a crash; SIGABRT also ends a rank whose peer went
    away), then one that exited with an error (it may have lost its peer), then the SIGTERMs
    that the agent sends to stop the rest."""
    import signal

    if code == -signal.SIGKILL:
        return 0
    if code == -signal.SIGTERM:
        return 3
    return 1 if code < 0 else 2


def _exit(code: int) -> str:
    """A worker's exit status in words (negative: the signal that ended it)."""
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _retrain(
    app: AppContext,
    name: str,
    tune_config: Path | None,
    quiet: bool,
    print_args: bool,
    flags: dict[str, Any],
) -> None:
    from ragtune.core.errors import InvalidInput
    from ragtune.tuner.api import train_adapter
    from ragtune.tuner.retrain import retrain_args

    if tune_config is not None:
        raise InvalidInput("--retrain takes its options from the adapter, not --config")
    if flags.get("name") not in (None, name):
        raise InvalidInput("--retrain NAME trains NAME again: leave --name out", field="name")
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "data" in given:
        given["data"] = list(given["data"])
    if "target_modules" in given:
        given["target_modules"] = split_modules(given["target_modules"])
    plan = retrain_args(app.settings(), name, given)
    if print_args:
        click.echo(json.dumps(plan.args.to_dict(), indent=2))
        return
    old = plan.previous.version
    click.echo(f"retraining {name} (version {old}) with the options it was trained with")
    for note in plan.notes:
        click.echo(f"  {note}")
    info = train_adapter(plan.settings, plan.args, progress=not quiet)
    _print_summary(info.name, info.manifest)
    click.echo(f"  version  {old} -> {info.version}")


def _print_summary(name: str, m: AdapterManifest) -> None:
    click.echo(f"adapter {name}: {m.method} on {m.base_model}")
    if m.data:
        click.echo(f"  data     {m.data.counts.train} train / {m.data.counts.val} val examples")
    met = m.metrics
    if met:
        click.echo(
            f"  loss     train {met.train_loss}  val {met.val_loss} "
            f"(best step {met.best_step} of {met.steps})"
        )
        ppl = met.perplexity
        if ppl:
            click.echo(
                f"  general-text perplexity  base {ppl.base}  tuned {ppl.tuned} (x{ppl.ratio})"
            )
        click.echo(f"  speed    {met.tokens_per_s} tokens/s; peak RSS {met.peak_rss_mb} MB")
    if m.raft:
        r = m.raft
        click.echo(f"  raft     index {r.index}@{r.index_version} k={r.k} p_oracle={r.p_oracle}")
        if r.snapshot:
            click.echo(
                f"           bound to {r.snapshot.chunks} chunks of {r.snapshot.documents} "
                f"documents (digest {r.snapshot.digest[:12]})"
            )


@click.group("adapters")
def adapters() -> None:
    """List, inspect, remove and export adapters in the registry."""


@adapters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """One line per adapter: name, method, base model, validation loss, created; for a RAFT
    adapter, its index and whether (and how much) the index changed since it was trained."""
    from ragtune.core.adapter_binding import binding_of
    from ragtune.core.registry import scan_adapters

    settings = app.settings()
    found, problems = scan_adapters(settings)
    for e in problems:  # a broken adapter is named, the others still listed
        click.echo(f"warning: {e.message}", err=True)
    rows = []
    for info in found:
        m = info.manifest
        binding = binding_of(settings, info)
        rows.append(
            {
                "name": info.name,
                "method": info.method,
                "base_model": info.base_model,
                "version": info.version,
                "val_loss": m.metrics.val_loss if m.metrics else None,
                "raft_index": m.raft.index if m.raft else None,
                "index_binding": binding.to_dict() if binding else None,
                "created_at": m.created_at,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows and not problems:
        click.echo("no adapters (train one with: ragtune tune --data FILE --name NAME)")
        return
    for r in rows:
        raft = f" raft:{r['raft_index']}" if r["raft_index"] else ""
        b = r["index_binding"]
        stale = " [stale]" if isinstance(b, dict) and b["stale"] else ""
        click.echo(
            f"{r['name']:<24} {r['method']:<5} {r['base_model']:<24} "
            f"val_loss={r['val_loss']}{raft}{stale}  {r['created_at']}"
        )
        if stale and isinstance(b, dict):
            click.echo(f"  {b['text']} (ragtune tune --retrain {r['name']})")


@adapters.command("show")
@click.argument("name")
@pass_app
def show_cmd(app: AppContext, name: str) -> None:
    """Print an adapter's manifest (JSON); for a RAFT adapter also ``index_binding``: its
    index version and how much of the index changed since (added / updated / removed)."""
    from ragtune.core.adapter_binding import binding_of
    from ragtune.core.registry import get_adapter

    settings = app.settings()
    info = get_adapter(settings, name)
    out = info.manifest.to_json()
    binding = binding_of(settings, info)
    if binding is not None:
        out["index_binding"] = binding.to_dict()
    click.echo(json.dumps(out, indent=2, sort_keys=True))


@adapters.command("rm")
@click.argument("name")
@pass_app
def rm_cmd(app: AppContext, name: str) -> None:
    """Remove an adapter (and any interrupted run of that name)."""
    from ragtune.tuner.api import remove_adapter

    cleaned = remove_adapter(app.settings(), name)
    click.echo(f"removed adapter {name}")
    if cleaned:
        click.echo(f"cleaned {cleaned} leftover(s) of an interrupted run")


@adapters.command("export")
@click.argument("name")
@click.option(
    "--merged", is_flag=True, help="Fold the adapter into the base weights: a plain model folder."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Destination folder (must not exist or be empty).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@pass_app
def export_cmd(app: AppContext, name: str, merged: bool, out: Path, overwrite: bool) -> None:
    """Export an adapter: as is (a peft folder), or --merged into a full model folder."""
    settings = app.settings()
    if merged:
        from ragtune.tuner.export import export_merged

        export_merged(settings, name, out, overwrite=overwrite)
    else:
        from ragtune.tuner.export import export_plain

        export_plain(settings, name, out, overwrite=overwrite)
    click.echo(f"exported {name} to {out}")


def register(cli: click.Group) -> None:
    cli.add_command(tune_command())
    cli.add_command(adapters)
