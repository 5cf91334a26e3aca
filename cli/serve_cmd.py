"""`ragtune serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import click

from ragtune.cli.context import AppContext, pass_app

# After SIGTERM/Ctrl-C uvicorn stops accepting connections and waits for the requests in
# flight; generation can take up to request_timeout_s, so wait that long plus a margin.
SHUTDOWN_MARGIN_S = 5.0


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
@pass_app
def serve(app: AppContext, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the query, OpenAI-compatible and adapter APIs (docs at /schema).

    Shutdown (SIGTERM or Ctrl-C) is graceful: new connections are refused, and requests
    in flight and in the queue are answered before the process exits.
    """
    import uvicorn

    from ragtune.service.app import create_app

    settings = app.settings(host=host, port=port)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.request_timeout_s + SHUTDOWN_MARGIN_S),
        # The app limits its own body size and concurrency; keep-alive idles briefly.
        timeout_keep_alive=5,
    )
    click.echo(f"ragtune serving on http://{settings.host}:{settings.port} (docs: /schema)")
    uvicorn.Server(config).run()


def register(cli: click.Group) -> None:
    cli.add_command(serve)
