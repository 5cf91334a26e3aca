"""Helpers for service tests: write an index in the documented on-disk format (real FAISS),
and run an app under real uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ragtune.core.config import Settings
from ragtune.core.models import Embedder
from tests.helpers import index_docs

DOCS = {
    "eiffel.txt": "The Eiffel Tower is in Paris, the capital of France.",
    "olympics.txt": "Paris hosted the Olympic Games in 1900, 1924 and 2024.",
    "everest.txt": "Mount Everest is the highest mountain on Earth, in the Himalayas.",
    "nile.txt": "The Nile is a river in Africa and one of the longest rivers in the world.",
    "python.txt": "Python is a programming language created by Guido van Rossum.",
}


def write_index(
    settings: Settings,
    embedder: Embedder,
    name: str = "default",
    docs: dict[str, str] | None = None,
) -> str:
    """Index ``docs`` with the real indexer (a new version goes live); returns its id."""
    return index_docs(settings, name, docs or DOCS, embedder=embedder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` on a local port (a free one unless given) in a thread, with the uvicorn
    settings and guards of ``ragtune serve`` (``service.server``); yield its base URL."""
    from ragtune.service.server import build_server

    port = port or free_port()
    settings = app.state.services.settings.model_copy(update={"host": "127.0.0.1", "port": port})
    server = build_server(app, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def back_server(settings: Settings, port: int | None = None) -> Iterator[str]:
    """A ragtune app under uvicorn as the generation backend of another (its URL), once its
    models are loaded: two models loading at once in one process is not safe in
    transformers, so tests that load models here too wait for it."""
    import httpx

    from ragtune.service.app import create_app

    with live_server(create_app(settings), port=port) as url:
        deadline = time.monotonic() + 60
        while not httpx.get(url + "/readyz").json()["models_loaded"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the back never loaded its models")
            time.sleep(0.05)
        yield url
