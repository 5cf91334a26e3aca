"""Continuous batching through the real service over real HTTP (uvicorn, tiny models):
requests join a running batch and leave it when done, adapters in use are not unloaded,
and a client that leaves a stream frees its row."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx

LONG = 400  # tokens: the tiny model never stops early, so this row runs for a while


def steps(c: httpx.Client) -> tuple[float, float]:
    """(decode steps, rows decoded) so far, from the Prometheus metrics."""
    text = c.get("/metrics").text
    count = float(text.split("ragtune_batch_size_count ")[1].split()[0])
    rows = float(text.split("ragtune_batch_size_sum ")[1].split()[0])
    return count, rows


def wait_for_steps(c: httpx.Client, since: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while steps(c)[0] <= since + 2:
        assert time.monotonic() < deadline, "the long request never started"
        time.sleep(0.005)


def test_a_short_request_joins_and_overtakes_a_long_one(server):
    long_q = {"question": "paris is", "mode": "base", "max_new_tokens": LONG}
    short_q = {"question": "python is", "mode": "base", "max_new_tokens": 3}
    with httpx.Client(base_url=server, timeout=120) as c:
        alone_long = c.post("/v1/query", json=long_q).json()
        alone_short = c.post("/v1/query", json=short_q).json()
        assert alone_long["usage"]["completion_tokens"] == LONG
        before = steps(c)
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/v1/query", json=long_q)
            wait_for_steps(c, before[0])
            short = c.post("/v1/query", json=short_q).json()
            assert not pending.done(), "the short request waited for the long one"
            long = pending.result().json()
        after = steps(c)
    assert short["answer"] == alone_short["answer"]
    assert long["answer"] == alone_long["answer"]
    # the two rows shared decode steps: more rows than steps
    assert after[1] - before[1] > after[0] - before[0]


def test_an_adapter_in_use_is_not_unloaded(server):
    q = {"question": "paris is", "mode": "finetune", "adapter": "alpha"}
    with httpx.Client(base_url=server, timeout=120) as c:
        with c.stream("POST", "/v1/query", json=q | {"max_new_tokens": LONG, "stream": True}) as s:
            assert s.status_code == 200
            lines = s.iter_lines()
            assert any(line.startswith("data:") for line in lines)  # generating now
            r = c.delete("/v1/adapters/alpha")
            assert r.status_code == 409, r.text
            problem = r.json()
            assert problem["title"] == "Adapter in use" and "alpha" in problem["detail"]
            events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        assert "sources" in events[-1]  # the stream ran to its end
        assert c.delete("/v1/adapters/alpha").json()["loaded"] is False


def test_a_client_leaving_a_stream_frees_its_row(server):
    q = {"question": "paris is", "mode": "base", "max_new_tokens": 512, "stream": True}
    with httpx.Client(base_url=server, timeout=120) as c:
        with c.stream("POST", "/v1/query", json=q) as s:
            assert s.status_code == 200
            next(line for line in s.iter_lines() if line.startswith("data:"))
        # closed after the first token: the row leaves the batch at a following step
        deadline = time.monotonic() + 10
        while True:
            first = steps(c)[0]
            time.sleep(0.3)
            if steps(c)[0] == first:
                break
            assert time.monotonic() < deadline, "the abandoned stream kept generating"
        total = float(c.get("/metrics").text.split("ragtune_batch_size_count ")[1].split()[0])
    assert total < 512  # it never ran to its token limit
