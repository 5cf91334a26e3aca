"""`ragtune demo`: the experiment on the shipped SQuAD subset, the README's main job.

The work is ``ragtune.workflows.demo``; this module parses the flags and prints.
"""

from __future__ import annotations

from pathlib import Path

import click

from ragtune.cli.context import AppContext, pass_app


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
    from ragtune.workflows.demo import load_demo, serve_hint

    outcome = run_experiment_cmd(app, load_demo(config), out, fresh, quiet)
    hint = serve_hint(outcome)
    click.echo("")
    click.echo(f"Serve the winner:  {hint.serve}")
    click.echo(f"  {hint.curl()}")
    runs = app.settings().runs_dir.resolve()
    run = outcome.folder.name if outcome.folder.resolve().parent == runs else str(outcome.folder)
    click.echo(
        f"Or make it the default for index {outcome.experiment.index}: "
        f"ragtune decisions publish {run}  (docs/decisions.md)"
    )


def register(cli: click.Group) -> None:
    cli.add_command(demo)
