"""`ragtune models`: which models are configured, where their files are; prepare them."""

from __future__ import annotations

import json
import time

import click

from ragtune.cli.context import AppContext, pass_app


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Show the configured models (`ragtune models prepare` materializes them)."""
    if ctx.invoked_subcommand is not None:
        return
    from ragtune.core.models import locate_embedder, locate_generator, materialized_dir

    app = ctx.find_object(AppContext)
    assert app is not None  # the root command always sets it
    settings = app.settings()
    rows = []
    for role, spec, loc in (
        ("embedder", settings.embedder, locate_embedder(settings.embedder, settings)),
        ("generator", settings.generator, locate_generator(settings.generator)),
    ):
        row: dict[str, str | None] = {
            "role": role,
            "spec": spec,
            "kind": loc.kind,
            "location": loc.describe(),
        }
        if loc.path is not None and loc.path.suffix == ".gguf":
            mdir = materialized_dir(loc.path, settings.models_cache_dir)
            row["materialized"] = str(mdir) if (mdir / "config.json").is_file() else None
        if loc.kind == "tuned":
            row["model_id"] = loc.model_id  # name@version: what its indexes record
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['role']:<10} {r['spec']}")
        click.echo(f"{'':<10} kind: {r['kind']}; files: {r['location']}")
        if "materialized" in r:
            state = r["materialized"] or "not yet (run: ragtune models prepare)"
            click.echo(f"{'':<10} materialized: {state}")


@models.command("prepare")
@pass_app
def prepare(app: AppContext) -> None:
    """Load both models once (unpacking the GGUF generator into the cache)."""
    from ragtune.core.models import check_generator, load_embedder

    settings = app.settings()
    t0 = time.perf_counter()
    emb = load_embedder(settings)
    click.echo(f"embedder  {emb.model_id}: {emb.dim}-d ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    folder = check_generator(settings)
    click.echo(f"generator ready in {folder} ({time.perf_counter() - t0:.1f} s)")
