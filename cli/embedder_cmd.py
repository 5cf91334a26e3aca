"""`ragtune tune-embedder` (fine-tune the retriever) and `ragtune embedders list|show|rm`.

The flags are ``tuner.embed_args.EmbedTuneArgs`` fields, their help the fields' docstrings;
a flag not given is None, so a ``--config`` TOML file fills in what the command line leaves
out and the dataclass defaults fill in the rest.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from ragtune.cli.context import AppContext, pass_app
from ragtune.tuner.embed_args import EmbedTuneArgs, field_docs

_TYPES: dict[str, Any] = {
    "format": click.Choice(["auto", "prompt", "alpaca", "chat", "squad", "template"]),
    "mine_retrieval": click.Choice(["dense", "bm25", "hybrid"]),
    "schedule": click.Choice(["linear", "cosine", "constant"]),
    "template": click.Path(dir_okay=False),
}


def _options() -> list[Any]:
    """One click option per EmbedTuneArgs field, typed from its default."""
    out = []
    for f in fields(EmbedTuneArgs):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": None, "help": field_docs().get(f.name, "")}
        if f.name == "data":
            kw.update(multiple=True, metavar="FILE[:WEIGHT]")
        elif f.type in ("bool",):
            flag = f"{flag}/--no-{f.name.replace('_', '-')}"
        elif f.name in _TYPES:
            kw["type"] = _TYPES[f.name]
        elif "float" in str(f.type):
            kw["type"] = float
        elif "int" in str(f.type):
            kw["type"] = int
        out.append(click.option(flag, f.name, **kw))
    return out


def build_embed_args(config: Path | None, flags: dict[str, Any]) -> EmbedTuneArgs:
    """Flags over the TOML file over the dataclass defaults (False is a given value)."""
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "data" in given:
        given["data"] = list(given["data"])
    if config is not None:
        return EmbedTuneArgs.from_toml(config, **given)
    return EmbedTuneArgs.from_dict(given)


def tune_embedder_command() -> click.Command:
    @click.command("tune-embedder")
    @click.option(
        "--config",
        "tune_config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TOML file with these options (top level or [tune-embedder]).",
    )
    @click.option("--quiet", is_flag=True, help="No progress bars or data summary.")
    @click.option(
        "--print-args",
        is_flag=True,
        help="Check the options, print them resolved as JSON and exit without training.",
    )
    @pass_app
    def tune_embedder(
        app: AppContext, tune_config: Path | None, quiet: bool, print_args: bool, **flags: Any
    ) -> None:
        """Fine-tune the embedder (the retriever) on question/gold-passage pairs.

        In-batch negatives plus hard negatives mined from the index; validation recall@k on
        held-out groups picks the checkpoint. Use the result with --embedder tuned:NAME and
        index with it into a new index.

        \b
        Examples:
          ragtune tune-embedder --data squad.json --index docs --name docs-emb
          ragtune --embedder tuned:docs-emb index docs/ --index docs-tuned
          ragtune --embedder tuned:docs-emb search "question" --index docs-tuned
        """
        args = build_embed_args(tune_config, flags)
        if print_args:
            click.echo(json.dumps(args.validate().to_dict(), indent=2))
            return
        from ragtune.tuner.embed_api import summary_line, train_embedder

        info = train_embedder(app.settings(), args, progress=not quiet)
        click.echo(summary_line(info.manifest))

    for opt in _options():  # tune_embedder is already a Command: options append in order
        tune_embedder = opt(tune_embedder)
    return tune_embedder


@click.group("embedders")
def embedders_group() -> None:
    """List, inspect and remove tuned embedders (use one with --embedder tuned:NAME)."""


@embedders_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """One line per tuned embedder: name, model id, base, validation recall, created."""
    from ragtune.core.embedders import scan_tuned_embedders

    found, problems = scan_tuned_embedders(app.settings())
    for e in problems:
        click.echo(f"warning: {e.message}", err=True)
    rows = []
    for info in found:
        met = info.manifest.metrics
        k = str(met.k)
        rows.append(
            {
                "name": info.name,
                "model_id": info.model_id,
                "base_model": info.manifest.base_model,
                "k": met.k,
                "base_recall": met.base.recall.get(k) if met.base else None,
                "tuned_recall": met.best.recall.get(k) if met.best else None,
                "created_at": info.manifest.created_at,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows and not problems:
        click.echo(
            "no tuned embedders (train one with: ragtune tune-embedder --data FILE --name NAME)"
        )
        return
    for r in rows:
        click.echo(
            f"{r['name']:<20} {r['model_id']:<40} base {r['base_model']:<20} "
            f"val recall@{r['k']} {r['base_recall']} -> {r['tuned_recall']}  {r['created_at']}"
        )


@embedders_group.command("show")
@click.argument("name")
@pass_app
def show_cmd(app: AppContext, name: str) -> None:
    """Print a tuned embedder's manifest (JSON)."""
    from ragtune.core.embedders import get_tuned_embedder

    info = get_tuned_embedder(app.settings(), name)
    click.echo(json.dumps(info.manifest.to_json(), indent=2, sort_keys=True))


@embedders_group.command("rm")
@click.argument("name")
@pass_app
def rm_cmd(app: AppContext, name: str) -> None:
    """Remove a tuned embedder (and any interrupted training of that name)."""
    from ragtune.core.embedders import remove

    remove(app.settings(), name)
    click.echo(f"removed tuned embedder {name}")


def register(cli: click.Group) -> None:
    cli.add_command(tune_embedder_command())
    cli.add_command(embedders_group)
