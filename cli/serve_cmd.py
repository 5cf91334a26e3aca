"""`ragtune serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import click

from ragtune.cli.context import AppContext, pass_app


@click.command("serve")
@click.option("--host", default=None, help="Bind address (setting host, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (setting port, default 8000).")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="uvicorn log level.",
)
@click.option(
    "--decision",
    "decisions",
    multiple=True,
    metavar="RUN",
    help="Publish RUN's winner as the decision for its index first (repeatable; as "
    "`ragtune decisions publish RUN`).",
)
@pass_app
def serve(
    app: AppContext,
    host: str | None,
    port: int | None,
    log_level: str,
    decisions: tuple[str, ...],
) -> None:
    """Serve the query, OpenAI-compatible, adapter and decision APIs (docs at /schema).

    Requests that name no mode and no adapter get the decision published for their index
    (`ragtune decisions publish RUN`, or --decision RUN here).

    Shutdown (SIGTERM or Ctrl-C) is graceful: new requests get 503 at once, and those in
    flight get shutdown_grace_s to finish (then 503) before the process exits.
    """
    from ragtune.service.app import create_app
    from ragtune.service.server import build_server

    settings = app.settings(host=host, port=port)
    if decisions:
        from ragtune.cli.decisions_cmd import publish_run

        for run in decisions:  # a refused run stops here, before anything is served
            publish_run(settings, run)
    server = build_server(create_app(settings), settings, log_level)
    click.echo(f"ragtune serving on http://{settings.host}:{settings.port} (docs: /schema)")
    server.run()


def register(cli: click.Group) -> None:
    cli.add_command(serve)
