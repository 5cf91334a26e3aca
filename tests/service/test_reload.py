"""Index reload: a rebuilt index is served without a restart and without failing requests
that are in flight while it is swapped."""

from __future__ import annotations

import shutil
import threading
import time

import httpx

from ragtune.core.index_store import version_dir
from ragtune.core.models import load_embedder
from tests.service.helpers import write_index

NEW_DOCS = {
    "wall.txt": "The Great Wall of China was built over many centuries.",
    "curie.txt": "Marie Curie won Nobel Prizes in physics and in chemistry.",
}


def test_rebuild_while_requests_run(server, svc_settings):
    from ragtune.core.index_store import current_version

    old = current_version(svc_settings, "default")
    embedder = load_embedder(svc_settings)
    results: list[tuple[int, str | None, list[str]]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/query", json={"question": "who won nobel prizes?", "top_k": 2})
                body = r.json()
                results.append(
                    (
                        r.status_code,
                        body.get("index_version"),
                        [s["document"] for s in body.get("sources", [])],
                    )
                )

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    new = write_index(svc_settings, embedder, docs=NEW_DOCS)
    # the indexer may delete the old version once CURRENT moved on: requests must not care
    shutil.rmtree(version_dir(svc_settings, "default", old))
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)

    assert results and all(status == 200 for status, _, _ in results), results[:5]
    versions = [v for _, v, _ in results]
    assert old in versions and new in versions
    assert versions.index(new) > versions.index(old)
    # every answer is consistent with the version it reports
    for _, v, docs in results:
        assert set(docs) <= (set(NEW_DOCS) if v == new else set(docs) - set(NEW_DOCS))
    with httpx.Client(base_url=server) as c:
        ready = c.get("/readyz").json()
        assert ready["index_version"] == new
