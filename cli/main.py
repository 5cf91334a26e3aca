"""The `ragtune` console script: one click group; each command lives in its own module.

Heavy libraries (torch, transformers, faiss, ...) are imported inside command bodies, so
`ragtune --help` and light commands start instantly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ragtune.cli.context import AppContext, run_safely


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $RAGTUNE_CONFIG or ./ragtune.toml if present).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where indexes, adapters and runs live (setting data_dir).",
)
@click.option("--embedder", default=None, help="Embedder spec (setting embedder).")
@click.option("--generator", default=None, help="Generator spec (setting generator).")
@click.option("--threads", "torch_threads", type=int, default=None, help="torch CPU threads.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.version_option(package_name="ragtune")
@click.pass_context
def cli(ctx: click.Context, /, config_file: Path | None, verbose: bool, **overrides: Any) -> None:
    """ragtune: RAG, fine-tune, or both? Measure it on your documents, then serve the winner."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = AppContext(config_file=config_file, overrides=overrides)


def _register() -> None:
    from ragtune.cli import config_cmd, models_cmd

    cli.add_command(config_cmd.config)
    cli.add_command(models_cmd.models)
    # Commands of the four packages register themselves when their CLI module exists.
    for mod_name in (
        "index_cmd",
        "tune_cmd",
        "embedder_cmd",
        "serve_cmd",
        "eval_cmd",
        "demo_cmd",
        "decisions_cmd",
        "keys_cmd",
    ):
        try:
            mod = __import__(f"ragtune.cli.{mod_name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == f"ragtune.cli.{mod_name}":
                continue
            raise
        mod.register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    run_safely(lambda: cli.main(args=argv, prog_name="ragtune", standalone_mode=False))
    sys.exit(0)


if __name__ == "__main__":
    main()
