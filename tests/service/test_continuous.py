"""Continuous batching through the real service over real HTTP (uvicorn, tiny models):
requests join a running batch and leave it when done, adapters in use are not unloaded,
and a client that leaves a stream frees its row."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import time

import httpx

from tests.service.conftest import make_settings, wait_ready
from tests.service.helpers import live_server

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


# --- long prompts: chunked prefill, and work that stops with its request -----------------------
# A 32k-position tiny generator and 16-token prefill chunks: a 12,000-token question is
# prefilled in 750 chunks, long enough to watch it; its answer is a single token.
LONG_Q = {"question": "a " * 12_000, "mode": "base", "max_new_tokens": 1}
SHORT_Q = {"question": "python is", "mode": "base", "max_new_tokens": 3}


@contextlib.contextmanager
def long_prompt_server(tiny_settings, tmp_path, **update):
    from ragtune.core.models import load_embedder
    from ragtune.service.app import create_app
    from tests.service.helpers import write_index
    from tests.tiny_models import build_tiny_generator

    generator = build_tiny_generator(tmp_path / "long" / "generator", max_positions=32768)
    settings = make_settings(
        tiny_settings,
        generator=str(generator),
        prefill_chunk_tokens=16,
        max_prompt_tokens=30_000,
        max_question_chars=100_000,
        max_body_bytes=200_000,
        **update,
    )
    write_index(settings, load_embedder(settings))
    with live_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield url


def gauge(c: httpx.Client, name: str) -> float:
    return float(c.get("/metrics").text.split(f"\n{name} ")[1].split()[0])


def prefilled(c: httpx.Client) -> float:
    """Prompt positions the server has prefilled so far."""
    return gauge(c, "ragtune_prefill_tokens_total")


def wait_for(c: httpx.Client, name: str, value: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while gauge(c, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        time.sleep(0.01)


def test_a_short_request_is_answered_while_a_long_prompt_is_prefilled(tiny_settings, tmp_path):
    """The issue's starvation repro: a huge question, then a short one; the short one is
    answered between two chunks of the long one's prefill."""
    with (
        long_prompt_server(tiny_settings, tmp_path) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        alone = c.post("/v1/query", json=SHORT_Q).json()
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/query", json=LONG_Q, timeout=120)
            wait_for(c, "ragtune_prefilling_rows", 1.0)
            short = c.post("/v1/query", json=SHORT_Q)
            assert short.status_code == 200 and short.json()["answer"] == alone["answer"]
            assert gauge(c, "ragtune_prefilling_rows") == 1.0, "the long prompt was not chunked"
            assert not pending.done()
            long = pending.result()
        assert long.status_code == 200, long.text
        assert long.json()["usage"]["prompt_tokens"] > 12_000


def test_a_timed_out_long_prompt_frees_its_row_and_memory(tiny_settings, tmp_path):
    with (
        long_prompt_server(tiny_settings, tmp_path, request_timeout_s=0.2) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        r = c.post("/v1/query", json=LONG_Q)
        assert r.status_code == 504 and r.json()["title"] == "Generation timed out"
        wait_for(c, "ragtune_batch_rows", 0.0, timeout=10)  # within a chunk or so
        assert gauge(c, "ragtune_kv_cache_bytes") == 0.0
        stopped_at = prefilled(c)
        assert stopped_at < 12_000  # the prompt was not prefilled to its end
        time.sleep(0.2)
        assert prefilled(c) == stopped_at  # and nothing more runs for it
        assert c.post("/v1/query", json=SHORT_Q).status_code == 200


def test_a_client_that_leaves_stops_its_long_prompt(tiny_settings, tmp_path):
    import json
    import socket
    from urllib.parse import urlsplit

    with (
        long_prompt_server(tiny_settings, tmp_path) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        where = urlsplit(url)
        for body in (LONG_Q, LONG_Q | {"stream": True}):
            data = json.dumps(body).encode()
            start = prefilled(c)
            with socket.create_connection((where.hostname, where.port)) as s:
                s.sendall(
                    b"POST /v1/query HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                wait_for(c, "ragtune_prefilling_rows", 1.0)
            # the connection is closed mid-prefill: the row leaves within a chunk or so
            wait_for(c, "ragtune_batch_rows", 0.0, timeout=10)
            assert gauge(c, "ragtune_kv_cache_bytes") == 0.0
            assert prefilled(c) - start < 12_000  # it stopped before its prompt's end
        text = c.get("/metrics").text
        assert 'route="/v1/query",status="499"} 2.0' in text


# --- a burst: prefill passes within prefill_batch_tokens ---------------------------------------
BURST = [
    "where is the eiffel tower and who built it",
    "what is the longest river in the world",
    "who wrote the theory of relativity and when",
    "why is the sky blue on a clear day",
]


def settled(c: httpx.Client) -> float:
    """The prefilled-positions counter once the idle worker has recorded its last step."""
    last = prefilled(c)
    while True:
        time.sleep(0.2)
        now = prefilled(c)
        if now == last:
            return now
        last = now


def burst(url: str) -> tuple[list[dict], float, float, list[dict]]:
    """The questions one at a time, then all at once: (the answers alone, positions they
    took, positions the burst took, the burst's answers in question order)."""
    ask = [{"question": q, "mode": "base", "max_new_tokens": 3} for q in BURST]
    with httpx.Client(base_url=url, timeout=120) as c:
        wait_ready(c)
        start = settled(c)
        alone = [c.post("/v1/query", json=body).json() for body in ask]
        before = settled(c)
        with cf.ThreadPoolExecutor(len(ask)) as pool:  # all within the 1.5 s batch window
            together = list(pool.map(lambda b: c.post("/v1/query", json=b).json(), ask))
        return alone, before - start, settled(c) - before, together


def test_a_burst_is_prefilled_in_passes_within_the_budget(svc_settings):
    from ragtune.service.app import create_app

    got = {}
    for budget in (4096, 16):
        settings = make_settings(svc_settings, batch_window_ms=1500.0, prefill_batch_tokens=budget)
        with live_server(create_app(settings)) as url:
            got[budget] = burst(url)
    alone, one_by_one, one_pass, together = got[4096]
    prompt = [a["usage"]["prompt_tokens"] for a in alone]
    # one pass pads every row to the longest; the shared preamble comes from its cache
    preamble = max(prompt) - one_pass / len(BURST)
    new = [n - preamble for n in prompt]
    assert one_by_one == sum(new)  # the counter adds up across batches
    assert min(new) > 8 and len(set(new)) > 1  # no two fit one 16-position pass
    alone16, _, passes, together16 = got[16]
    assert passes == sum(new)  # a pass each: no padding
    answers = [a["answer"] for a in alone]
    assert [a["answer"] for a in alone16] == answers
    assert [a["answer"] for a in together] == [a["answer"] for a in together16] == answers


def test_a_prompt_that_fills_a_pass_does_not_wait_for_the_batch_window(svc_settings):
    """With a 1.5 s window, a second request 0.3 s after the first would join its prefill,
    unless the first prompt is over half a pass (16 positions here): then each is prefilled
    as it comes, in a pass of its own, and the window does not delay it."""
    from ragtune.service.app import create_app

    joins = {}
    for budget in (4096, 16):
        settings = make_settings(svc_settings, batch_window_ms=1500.0, prefill_batch_tokens=budget)
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
            wait_ready(c)
            ask = [{"question": q, "mode": "rag", "max_new_tokens": 2} for q in BURST[:2]]
            with cf.ThreadPoolExecutor(2) as pool:
                first = pool.submit(c.post, "/v1/query", json=ask[0])
                time.sleep(0.3)
                second = pool.submit(c.post, "/v1/query", json=ask[1])
                assert first.result().status_code == second.result().status_code == 200
            assert first.result().json()["usage"]["prompt_tokens"] > 8
            joins[budget] = (
                gauge(c, "ragtune_prefill_rows_count"),
                gauge(c, "ragtune_prefill_rows_sum"),
            )
    assert joins[4096] == (1.0, 2.0)  # the first waited, and the second joined it
    assert joins[16] == (2.0, 2.0)  # each joined alone, as it came
