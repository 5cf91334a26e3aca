"""`ragtune demo`: the experiment on the shipped SQuAD subset, the README's main job.

Builds an index over 12 Wikipedia articles, trains a closed-book QA adapter and a RAFT-style
adapter on 9 of them, evaluates base / RAG / fine-tuned / hybrid / oracle on held-out
questions from the other 3, writes the report and prints the verdict. Sized to finish in
under 30 minutes on 2 CPU cores (examples/experiment-demo.toml says how).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import click

from ragtune.cli.context import AppContext, pass_app

# Shipped as package data (ragtune.examples), so the demo runs from a wheel as from a checkout.
DEMO_CONFIG = Path(str(files("ragtune.examples").joinpath("experiment-demo.toml")))


@click.command("demo")
@click.option(
    "--experiment",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Experiment TOML (default: the shipped examples/experiment-demo.toml).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run folder (default: <data>/runs/demo); an existing one resumes.",
)
@click.option("--fresh", is_flag=True, help="Delete the run folder first and redo every step.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@pass_app
def demo(app: AppContext, config: Path | None, out: Path | None, fresh: bool, quiet: bool) -> None:
    """Index, tune, evaluate and report on a small SQuAD subset; print the verdict."""
    from ragtune.cli.eval_cmd import run_experiment_cmd
    from ragtune.core.errors import InvalidInput

    config = config or DEMO_CONFIG
    if not config.is_file():
        raise InvalidInput(f"experiment config not found: {config}", field="experiment")
    res = run_experiment_cmd(app, config, out, fresh, quiet)
    exp, summary = res["experiment"], res["summary"]
    winner = summary["verdict"].get("winner") or "rag"
    kind, _, adapter = winner.partition(":")
    body = f'"question": "...", "mode": "{kind}", "index": "{exp.index}"'
    if adapter:
        body += f', "adapter": "{adapter}"'
    click.echo("")
    click.echo("Serve the winner:  ragtune serve")
    click.echo(
        f"  curl -s localhost:8000/v1/query -H 'content-type: application/json' -d '{{{body}}}'"
    )


def register(cli: click.Group) -> None:
    cli.add_command(demo)
