"""`ragtune config show`: every resolved setting and where it came from."""

from __future__ import annotations

import json

import click

from ragtune.cli.context import AppContext, pass_app


@click.group()
def config() -> None:
    """Inspect the resolved settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def show(app: AppContext, as_json: bool) -> None:
    """Print each setting, its value and its source (default, file, env, flag)."""
    settings = app.settings()
    sources = app.sources()
    values = settings.model_dump(mode="json")
    if values.get("generator_api_key"):  # a secret: say that it is set, never what it is
        values["generator_api_key"] = "***set***"
    if as_json:
        out = {k: {"value": values[k], "source": sources[k]} for k in values}
        click.echo(json.dumps(out, indent=2))
        return
    width = max(len(k) for k in values)
    for k in values:
        v = values[k]
        if k == "api_keys" and v:
            v = [f"***{len(v)} key(s)***"]  # never print secrets
        click.echo(f"{k:<{width}}  {json.dumps(v):<40}  {sources[k]}")
