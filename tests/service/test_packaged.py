"""The service on the real packaged models (SmolLM2-135M + MiniLM) over real HTTP: the issue's
starvation repro and answers that end where they are cut. Slow: minutes on a CPU."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from ragtune.core.config import resolve_settings
from ragtune.service.app import create_app
from tests.service.helpers import live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packaged_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Default limits (max_prompt_tokens 2048, 512-token chunks); whole answers on the
    OpenAI routes by default (openai_answer = "full"), so a request can ask for the span."""
    settings, _ = resolve_settings(
        overrides={
            "data_dir": tmp_path_factory.mktemp("packaged") / "data",
            "torch_threads": 2,
            "openai_answer": "full",
        },
        environ={},
    )
    with live_server(create_app(settings)) as url:
        deadline = time.monotonic() + 600
        while not httpx.get(url + "/readyz").json()["models_loaded"]:  # no index: base mode
            assert time.monotonic() < deadline, "the packaged models did not load"
            time.sleep(0.5)
        yield url


def test_the_starvation_repro_is_refused_at_once_and_short_requests_are_served(packaged_server):
    """A 4,000-emoji question is 12,000+ SmolLM2 tokens: a 400 before any work. A long
    prompt within the budget is prefilled in chunks, and a short request sent once its
    first chunk ran is answered while the long one is still running."""
    with httpx.Client(base_url=packaged_server, timeout=300) as c:
        r = c.post("/v1/query", json={"question": "😀" * 4000, "mode": "base", "max_new_tokens": 1})
        assert r.status_code == 400 and r.json()["field"] == "question"
        assert "more than max_prompt_tokens (2048)" in r.json()["detail"]
        assert int(r.json()["detail"].split(" is ")[1].split()[0]) > 12_000
        long = {"question": "a " * 1900, "mode": "base", "max_new_tokens": 1}  # ~1,930 tokens
        short = {"question": "hi", "mode": "base", "max_new_tokens": 4}
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, packaged_server + "/v1/query", json=long, timeout=300)
            deadline = time.monotonic() + 60
            while "\nragtune_prefilling_rows 1.0" not in c.get("/metrics").text:  # chunk 1 ran
                assert time.monotonic() < deadline, "the long prompt never started prefilling"
                time.sleep(0.05)
            r = c.post("/v1/query", json=short)
            assert r.status_code == 200 and r.json()["answer"]
            assert not pending.done(), "the short request waited for the long prompt"
            done = pending.result()
        assert done.status_code == 200 and done.json()["usage"]["prompt_tokens"] > 1800


def test_answers_end_where_they_are_cut(packaged_server):
    """The issue's case: a multi-line answer asked for as a span stops generating at its
    first line's end (usage counts what was generated for it); as a whole answer it runs on."""
    oai = openai.OpenAI(base_url=packaged_server + "/v1", api_key="-", max_retries=0, timeout=300)
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    span = oai.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=poem,
        max_tokens=128,
        extra_body={"ragtune": {"answer": "first_line"}},
    )
    text = span.choices[0].message.content
    assert text and "\n" not in text
    assert span.choices[0].finish_reason == "stop" and span.usage.completion_tokens < 64
    whole = oai.chat.completions.create(model="SmolLM2-135M-Instruct", messages=poem, max_tokens=48)
    assert whole.choices[0].message.content.startswith(text)  # the setting: whole answers
    assert "\n" in whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 48
    chunks = list(
        oai.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=poem,
            max_tokens=128,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ragtune": {"answer": "first_line"}},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == span.usage.completion_tokens
    # the native route always answers with the span
    r = httpx.post(
        packaged_server + "/v1/query",
        json={
            "question": "Write a short poem about the sea.",
            "mode": "base",
            "max_new_tokens": 128,
        },
        timeout=300,
    )
    assert r.json()["answer"] == text and r.json()["finish_reason"] == "stop"
