"""`ragtune keys add|list|rm`: scoped API keys in the key file (hashed at rest)."""

from __future__ import annotations

import json

import click

from ragtune.cli.context import AppContext, pass_app

SCOPE_CHOICES = ("query", "read", "metrics", "adapters:manage", "decisions:manage")


@click.group("keys")
def keys() -> None:
    """Scoped API keys for `ragtune serve` (the file api_keys_file, <data>/api-keys.json).

    \b
    The file keeps a SHA-256 of each key, never the key; the service rereads it when it
    changes. Keys in RAGTUNE_API_KEYS keep working, with every scope.
      ragtune keys add team-a --index kb-a --adapter kb-a-raft     # query + read on kb-a
      ragtune keys add ops --scope metrics --scope adapters:manage --scope decisions:manage
      ragtune keys list
      ragtune keys rm team-a
    """


@keys.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPE_CHOICES),
    help="What the key may do (repeatable; default: query and read).",
)
@click.option(
    "--index", "indexes", multiple=True, help="An index it may use (repeatable; default: all)."
)
@click.option(
    "--adapter", "adapters", multiple=True, help="An adapter it may use (repeatable; default: all)."
)
@pass_app
def add_cmd(
    app: AppContext,
    name: str,
    scopes: tuple[str, ...],
    indexes: tuple[str, ...],
    adapters: tuple[str, ...],
) -> None:
    """Create a key and print it (once: only its hash is stored)."""
    from ragtune.service.keys import DEFAULT_SCOPES, add_key, key_file

    settings = app.settings()
    token, rec = add_key(
        settings, name, scopes or DEFAULT_SCOPES, indexes or ("*",), adapters or ("*",)
    )
    click.echo(token)
    click.echo(
        f"key {rec.name}: scopes {', '.join(rec.scopes)}; indexes {', '.join(rec.indexes)}; "
        f"adapters {', '.join(rec.adapters)} (in {key_file(settings)}). Keep it: it is not "
        "stored and cannot be shown again.",
        err=True,
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """The keys in the key file: name, scopes, indexes, adapters, created (never the key)."""
    from ragtune.service.keys import list_keys

    rows = [k.model_dump(exclude={"sha256"}) for k in list_keys(app.settings())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no keys in the key file (add one with: ragtune keys add NAME)")
        return
    for r in rows:
        click.echo(
            f"{r['name']:<20} scopes {','.join(r['scopes']):<40} indexes {','.join(r['indexes'])}"
            f"  adapters {','.join(r['adapters'])}  {r['created_at']}"
        )


@keys.command("rm")
@click.argument("name")
@pass_app
def rm_cmd(app: AppContext, name: str) -> None:
    """Remove a key: a running service refuses it from its next request on."""
    from ragtune.service.keys import remove_key

    remove_key(app.settings(), name)
    click.echo(f"removed key {name}")


def register(cli: click.Group) -> None:
    cli.add_command(keys)
