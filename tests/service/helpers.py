"""Helpers for service tests: write an index in the documented on-disk format (real FAISS),
and run an app under real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.atomic import write_text_atomic
from core.config import Settings
from core.index_store import (
    CHUNKS_FILE,
    CURRENT_FILE,
    FAISS_FILE,
    MANIFEST,
    SCHEMA_VERSION,
    index_dir,
    version_dir,
)
from core.models import Embedder

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
    version: str | None = None,
) -> str:
    """Write one version of an index (as the indexer does) and make it CURRENT."""
    import faiss
    import numpy as np

    docs = docs or DOCS
    version = version or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    vdir = version_dir(settings, name, version)
    vdir.mkdir(parents=True)
    texts = list(docs.values())
    vecs = np.asarray(embedder.encode(texts), dtype=np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dim))
    index.add_with_ids(vecs, np.arange(len(texts), dtype=np.int64))
    faiss.write_index(index, str(vdir / FAISS_FILE))
    with (vdir / CHUNKS_FILE).open("w", encoding="utf-8") as f:
        for i, (doc, text) in enumerate(docs.items()):
            rec = {"int_id": i, "id": f"{doc}#0", "doc_id": doc, "text": text}
            f.write(json.dumps(rec | {"span": [0, len(text)], "metadata": {}}) + "\n")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "embedding_model": embedder.model_id,
        "embedding_dim": embedder.dim,
        "metric": "ip",
        "counts": {"documents": len(docs), "chunks": len(docs)},
    }
    (vdir / MANIFEST).write_text(json.dumps(manifest))
    write_text_atomic(index_dir(settings, name) / CURRENT_FILE, version)
    return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
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
