"""Torch work from requests runs on a thread that ends with it (``service.own_thread``), so
that only the generation thread keeps an OpenMP pool: the mechanism on the real OpenMP
runtime (in a clean process), and the service's retrieval and adapter loading over HTTP."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import threading

import httpx
import pytest

from ragtune.service.own_thread import in_own_thread
from tests.service.conftest import make_settings, wait_ready
from tests.service.helpers import live_server

WHERE: contextvars.ContextVar[str] = contextvars.ContextVar("WHERE", default="unset")


def test_the_call_returns_raises_and_sees_the_callers_context():
    WHERE.set("caller")
    seen: list[threading.Thread] = []

    def work(x: int) -> tuple[int, str]:
        seen.append(threading.current_thread())
        return x * 2, WHERE.get()

    assert in_own_thread(work, 21) == (42, "caller")
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    err = ValueError("bad")
    with pytest.raises(ValueError) as caught:
        in_own_thread(lambda: (_ for _ in ()).throw(err))
    assert caught.value is err


# A clean process with 2 torch threads: how many OS threads it has before, after a parallel
# kernel run through in_own_thread, and while a thread that ran one stays alive.
COUNT = """
import json, os, threading, time
import torch
from ragtune.service.own_thread import in_own_thread
torch.set_num_threads(2)
def threads():
    return len(os.listdir("/proc/self/task"))
def work():
    return float(torch.ones(1 << 22).mul_(2).sum())  # a parallel kernel: an OpenMP pool
def settled(n):  # a pool's workers leave a moment after their thread
    deadline = time.monotonic() + 10
    while threads() != n and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads()
before = threads()
in_own_thread(work)
after = settled(before)
ready, release = threading.Event(), threading.Event()
stays = threading.Thread(target=lambda: (work(), ready.set(), release.wait()))
stays.start()
ready.wait()
during = threads()
release.set()
stays.join()
print(json.dumps([before, after, during, settled(before)]))
"""


@pytest.mark.timeout(120)
def test_a_parallel_kernel_leaves_no_openmp_pool_behind():
    done = subprocess.run(
        [sys.executable, "-c", COUNT], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, after, during, later = json.loads(done.stdout.strip().splitlines()[-1])
    assert after == before  # its thread and that thread's pool are gone
    assert during >= before + 2  # a thread that stays keeps its pool: itself + a worker
    assert later == before


def spy(obj: object, method: str, seen: list[threading.Thread]) -> None:
    """Record the thread each call of the real ``obj.method`` runs on."""
    real = getattr(obj, method)

    def call(*args: object, **kwargs: object) -> object:
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    setattr(obj, method, call)


def test_retrieval_and_adapter_loads_run_on_threads_that_end(svc_settings):
    from ragtune.service.app import create_app

    app = create_app(make_settings(svc_settings))
    embeds: list[threading.Thread] = []
    loads: list[threading.Thread] = []
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        pipeline = app.state.services.pipeline
        spy(pipeline.embedder, "encode", embeds)
        spy(pipeline.engine, "load_adapter", loads)
        r = c.post("/v1/query", json={"question": "Where is the Eiffel Tower?", "mode": "rag"})
        assert r.status_code == 200 and r.json()["sources"], r.text
        assert c.post("/v1/adapters/alpha/load").status_code == 200
    assert embeds and loads
    for t in embeds + loads:
        assert t.name == "ragtune-torch-call" and not t.is_alive(), t
