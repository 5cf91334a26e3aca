"""POST /v1/query: modes, streaming, and every kind of bad input (TestClient + real HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest

from ragtune.core.errors import InvalidInput
from ragtune.core.registry import get_adapter

PROBLEM = "application/problem+json"


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((name, json.loads(data)))
    return out


def test_rag_query_returns_answer_with_sources(client):
    r = client.post("/v1/query", json={"question": "Where is the Eiffel Tower?", "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "answer",
        "mode",
        "adapter",
        "index",
        "index_version",
        "sources",
        "usage",
        "timings",
        "finish_reason",
        "decision",
    }
    assert body["finish_reason"] in ("stop", "length")
    assert body["mode"] == "rag" and body["index"] == "default" and body["index_version"]
    assert body["decision"] is None  # no decision is published: the default mode answered
    assert len(body["sources"]) == 2
    assert set(body["sources"][0]) == {"chunk_id", "document", "score", "text"}
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 6
    assert set(body["timings"]) == {"retrieve_ms", "generate_ms", "total_ms"}


@pytest.mark.parametrize(
    ("payload", "sources", "adapter"),
    [
        ({"mode": "base"}, 0, None),
        ({"mode": "finetune", "adapter": "alpha"}, 0, "alpha"),
        ({"mode": "hybrid", "adapter": "alpha", "retrieval": "bm25", "top_k": 1}, 1, "alpha"),
        ({"mode": "rag", "contexts": ["The Nile is in Africa."]}, 1, None),
    ],
)
def test_modes(client, payload, sources, adapter):
    r = client.post("/v1/query", json={"question": "Where is the Nile?", **payload})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == payload["mode"]
    assert body["adapter"] == adapter
    assert len(body["sources"]) == sources


def test_adapter_changes_the_answer_and_matches_the_pipeline(client, svc_settings):
    q = {"question": "paris is in", "max_new_tokens": 6, "mode": "base"}
    base = client.post("/v1/query", json=q).json()["answer"]
    tuned = client.post("/v1/query", json=q | {"mode": "finetune", "adapter": "alpha"}).json()[
        "answer"
    ]
    assert base != tuned  # the per-request adapter really applies (random LoRA, scaled up)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   "}, "question"),
        ({"question": "x" * 4001}, "question"),  # settings.max_question_chars = 4000
        ({"question": "q", "top_k": 0}, "top_k"),
        ({"question": "q", "top_k": 101}, "top_k"),
        ({"question": "q", "max_new_tokens": 0}, "max_new_tokens"),
        ({"question": "q", "max_new_tokens": 513}, "max_new_tokens"),  # limit 512
        ({"question": "q", "temperature": 3}, "temperature"),
        ({"question": "q", "mode": "magic"}, "mode"),
        ({"question": "q", "retrieval": "grep"}, "retrieval"),
        ({"question": "q", "mode": "finetune"}, "adapter"),
        ({"question": "q", "mode": "finetune", "adapter": "../../etc"}, "adapter"),
        ({"question": "q", "index": "../secrets"}, "index"),
        ({"question": "q", "surprise": 1}, "surprise"),
        ({"top_k": 2}, "question"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_400_naming_the_field(client, payload, field):
    r = client.post("/v1/query", json=payload)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == 400 and body["field"] == field and body["detail"]


def test_unknown_adapter_and_index_are_404(client):
    r = client.post("/v1/query", json={"question": "q", "mode": "finetune", "adapter": "nope"})
    assert (r.status_code, r.json()["field"]) == (404, "adapter")
    r = client.post("/v1/query", json={"question": "q", "index": "missing"})
    assert (r.status_code, r.json()["field"]) == (404, "index")


def test_malformed_json_wrong_type_and_big_body(client, svc_settings):
    r = client.post(
        "/v1/query", content=b'{"question": "q"', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    r = client.post("/v1/query", content=b"question=q", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.headers["content-type"].startswith(PROBLEM)
    r = client.post("/v1/query", content=b'{"question": "q"}')  # no content type at all
    assert r.status_code == 415
    big = json.dumps({"question": "q", "contexts": ["x" * 10_000] * 8})
    assert len(big) > svc_settings.max_body_bytes
    r = client.post("/v1/query", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["status"] == 413


def test_no_traceback_or_path_reaches_the_client(client, svc_settings):
    # Corrupt the live index version: loading it fails inside the server.
    from ragtune.core.index_store import current_version, version_dir

    v = current_version(svc_settings, "default")
    manifest = version_dir(svc_settings, "default", v) / "manifest.json"
    bad = svc_settings.indexes_dir / "broken" / "versions" / "v1"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    (svc_settings.indexes_dir / "broken" / "CURRENT").write_text("v1")
    r = client.post("/v1/query", json={"question": "q", "index": "broken"})
    assert r.status_code == 500
    text = r.text
    assert "Traceback" not in text and str(svc_settings.data_dir) not in text
    assert "/tmp" not in text and "File " not in text
    assert manifest.is_file()


def test_unreadable_manifests_are_problem_json_and_other_artifacts_still_serve(
    client, svc_settings, caplog
):
    from ragtune.core.index_store import current_version, version_dir

    # An index written by an unknown ragtune release (schema version 99) ...
    v = current_version(svc_settings, "default")
    good = json.loads((version_dir(svc_settings, "default", v) / "manifest.json").read_text())
    newer = svc_settings.indexes_dir / "newer" / "versions" / "v1"
    newer.mkdir(parents=True)
    (newer / "manifest.json").write_text(json.dumps(good | {"schema_version": 99}))
    (svc_settings.indexes_dir / "newer" / "CURRENT").write_text("v1")
    # ... and an adapter whose manifest lost a required key.
    bad = svc_settings.adapters_dir / "broken"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    (bad / "manifest.json").write_text(json.dumps({"method": "lora"}))

    with caplog.at_level("ERROR", logger="ragtune.service"):
        r = client.post("/v1/query", json={"question": "q", "index": "newer"})
    assert r.status_code == 500 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["title"] == "Unreadable manifest" and "Traceback" not in r.text
    assert str(svc_settings.data_dir) not in r.text
    assert "has schema version 99" in caplog.text  # the operator's log names the file
    r = client.post("/v1/query", json={"question": "q", "adapter": "broken", "mode": "finetune"})
    assert r.status_code == 500 and r.json()["title"] == "Unreadable manifest"
    # The readable ones are unaffected: the registry listings skip the broken adapter.
    assert [a["name"] for a in client.get("/v1/adapters").json()["adapters"]] == ["alpha"]
    assert "broken" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
    r = client.post("/v1/query", json={"question": "Where is the Eiffel Tower?", "top_k": 1})
    assert r.status_code == 200


def test_readyz_names_an_unreadable_default_index_without_its_path(svc_settings):
    import time

    from litestar.testing import TestClient

    from ragtune.service.app import create_app

    vdir = svc_settings.indexes_dir / "default" / "versions" / "v-bad"
    vdir.mkdir()
    (vdir / "manifest.json").write_text("{")
    (svc_settings.indexes_dir / "default" / "CURRENT").write_text("v-bad")
    with TestClient(create_app(svc_settings)) as c:
        deadline = time.monotonic() + 60
        while (r := c.get("/readyz")).json()["detail"] == "models are loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert r.status_code == 503 and str(svc_settings.data_dir) not in r.text
    assert r.json()["detail"] == "index 'default': unreadable manifest (see the server log)"


def test_adapter_names_are_never_raw_paths(svc_settings):
    for name in ("..", "../x", "a/b", "/etc/passwd", ".hidden", "x" * 65):
        with pytest.raises(InvalidInput):
            get_adapter(svc_settings, name)


def test_stream_sends_tokens_then_the_answer_with_sources(client):
    q = {"question": "Where is the Eiffel Tower?", "top_k": 2, "max_new_tokens": 6}
    plain = client.post("/v1/query", json=q).json()
    r = client.post("/v1/query", json=q | {"stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[-1] == "answer" and set(names[:-1]) <= {"token"}
    final = events[-1][1]
    assert len(final["sources"]) == 2 and final["index_version"] == plain["index_version"]
    streamed = "".join(d["text"] for n, d in events if n == "token")
    assert streamed.strip() == final["answer"] == plain["answer"]


def test_stream_errors_before_the_first_token_are_statuses(client):
    r = client.post("/v1/query", json={"question": "q", "index": "missing", "stream": True})
    assert r.status_code == 404 and r.json()["field"] == "index"


def test_query_over_real_http(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/v1/query", json={"question": "Who created Python?", "top_k": 1})
        assert r.status_code == 200 and len(r.json()["sources"]) == 1
        with c.stream(
            "POST", "/v1/query", json={"question": "Who created Python?", "stream": True}
        ) as s:
            assert s.status_code == 200
            body = "".join(s.iter_text())
        assert sse_events(body)[-1][0] == "answer"
        r = c.post("/v1/query", json={"question": "q", "top_k": -1})
        assert r.status_code == 400 and r.json()["field"] == "top_k"


# --- strict bodies, deep nesting, token budgets ------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_new_tokens", "2", "Expected `int | null`, got `str`"),
        ("stream", "true", "Expected `bool`, got `str`"),
        ("top_k", 1.0, "Expected `int | null`, got `float`"),
        ("temperature", "0", "Expected `float | null`, got `str`"),
        ("contexts", "one passage", "Expected `array | null`, got `str`"),
    ],
)
def test_values_of_the_wrong_type_are_400_with_the_expected_type(client, field, value, expected):
    r = client.post("/v1/query", json={"question": "q", "mode": "base", field: value})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and r.json()["detail"] == f"{field}: {expected}"


NESTED = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    "body",
    [
        '{"question": ' + NESTED + "}",
        NESTED,
        '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "junk": ' + NESTED + "}",
    ],
)
@pytest.mark.parametrize("path", ["/v1/query", "/v1/chat/completions", "/v1/completions"])
def test_deeply_nested_json_is_a_400_on_every_json_route(server, path, body):
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "malformed JSON body (nested too deeply)"


def test_a_prompt_over_the_token_budget_is_400_naming_the_field_and_numbers(svc_settings):
    """The issue's repro: 4,000 emoji (well within max_question_chars) as a question. The
    tiny word-level tokenizer reads a run of emoji as one token, so spaces between them
    make one token each, as SmolLM2's 3 per emoji would."""
    from litestar.testing import TestClient

    from ragtune.service.app import create_app
    from tests.service.conftest import wait_ready

    settings = svc_settings.model_copy(update={"max_prompt_tokens": 1000})
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        question = "😀 " * 1999  # 3,998 characters
        r = c.post("/v1/query", json={"question": question, "mode": "base", "max_new_tokens": 1})
        assert r.status_code == 400
        body = r.json()
        assert body["field"] == "question"
        assert "more than max_prompt_tokens (1000)" in body["detail"]
        assert int(body["detail"].split(" is ")[1].split()[0]) > 1999
        # the model's context (1024 positions) bounds the prompt plus the answer
        r = c.post(
            "/v1/query", json={"question": "a " * 900, "mode": "base", "max_new_tokens": 200}
        )
        assert r.status_code == 400 and r.json()["field"] == "max_new_tokens"
        assert "context of 1024 tokens" in r.json()["detail"]
        # retrieved passages are trimmed to fit rather than refused
        long = ["the eiffel tower is in paris " * 40] * 6  # ~200 tokens each, once cut
        r = c.post("/v1/query", json={"question": "where?", "contexts": long})
        assert r.status_code == 200 and 1 <= len(r.json()["sources"]) < 6
        assert r.json()["usage"]["prompt_tokens"] <= 1000
        # the refused requests never reached the model: one request joined the batch
        assert "ragtune_prefill_rows_count 1.0" in c.get("/metrics").text


def test_prefix_cache_reuses_shared_passages_over_http(svc_settings):
    """With prefix_cache_mb, a question whose passages were seen before reuses their states
    (counted in /metrics) and gets the answer it gets from a server without the cache."""
    from litestar.testing import TestClient

    from ragtune.service.app import create_app
    from tests.service.conftest import make_settings, wait_ready

    qs = ["Where is the Eiffel Tower?", "Where is the Eiffel Tower located?"]
    body = [{"question": q, "top_k": 2, "mode": m} for q in qs for m in ("rag", "hybrid")]
    for b in body:
        if b["mode"] == "hybrid":
            b["adapter"] = "alpha"
    answers = {}
    for mb in (0.0, 64.0):
        with TestClient(create_app(make_settings(svc_settings, prefix_cache_mb=mb))) as c:
            wait_ready(c)
            answers[mb] = [c.post("/v1/query", json=b).json()["answer"] for b in body]
            metrics = c.get("/metrics").text
    assert answers[64.0] == answers[0.0]
    value = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("ragtune_prefix_cache")
    }
    # the second question of each mode: its passages' states came from the first's prompt
    assert value["ragtune_prefix_cache_hits_total"] >= 2
    assert value["ragtune_prefix_cache_reused_tokens_total"] >= 32
    assert value["ragtune_prefix_cache_bytes"] > 0
