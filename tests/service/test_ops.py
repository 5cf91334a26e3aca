"""Health, readiness, metrics, API keys, the OpenAPI schema, back-pressure and timeouts."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from litestar.testing import TestClient

from ragtune.service.app import create_app
from tests.service.conftest import make_settings, wait_ready
from tests.service.helpers import free_port


def test_healthz_and_readyz(svc_settings):
    with TestClient(create_app(svc_settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        wait_ready(c)
        body = c.get("/readyz").json()
        assert body["status"] == "ready" and body["models_loaded"] and body["index_version"]


def test_not_ready_without_an_index(tiny_settings):
    settings = make_settings(tiny_settings)
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            r = c.get("/readyz")
            if r.json()["models_loaded"]:
                break
            time.sleep(0.05)
        assert r.status_code == 503
        assert "does not exist" in r.json()["detail"]
        # base mode works without any index
        assert c.post("/v1/query", json={"question": "q", "mode": "base"}).status_code == 200


def test_metrics_count_routes_statuses_tokens_and_queue(client):
    client.post("/v1/query", json={"question": "where is paris?"})
    client.post("/v1/query", json={"question": "q", "top_k": 0})
    client.post("/v1/adapters/alpha/load")
    text = client.get("/metrics").text
    assert 'ragtune_http_requests_total{method="POST",route="/v1/query",status="200"} 1.0' in text
    assert 'ragtune_http_requests_total{method="POST",route="/v1/query",status="400"} 1.0' in text
    assert 'route="/v1/adapters/{name}/load"' in text
    assert "ragtune_http_request_duration_seconds_bucket" in text
    assert 'ragtune_generated_tokens_total{mode="rag"}' in text
    assert "ragtune_queue_depth 0.0" in text
    for name in ("hits", "misses", "evictions"):
        assert f"ragtune_adapter_cache_{name}_total" in text


def test_api_keys(svc_settings):
    settings = make_settings(svc_settings, api_keys=["s3cret", "other"])
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200  # health stays open
        wait_ready(c)
        for method, path in [
            ("POST", "/v1/query"),
            ("GET", "/v1/models"),
            ("GET", "/v1/adapters"),
            ("GET", "/metrics"),
            ("GET", "/schema/openapi.json"),
        ]:
            r = c.request(method, path, json={"question": "q"})
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.headers["content-type"].startswith("application/problem+json")
        bad = {"Authorization": "Bearer wrong"}
        assert c.get("/v1/models", headers=bad).status_code == 401
        ok = {"Authorization": "Bearer other"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        r = c.post("/v1/query", json={"question": "where?"}, headers=ok)
        assert r.status_code == 200
        schema = c.get("/schema/openapi.json", headers=ok).json()
        assert schema["security"] == [{"bearer": []}]


def test_openapi_schema_is_served_and_describes_the_api(client):
    from openapi_spec_validator import validate

    schema = client.get("/schema/openapi.json").json()
    validate(schema)
    paths = schema["paths"]
    for path in (
        "/v1/query",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/adapters",
        "/v1/adapters/{name}/load",
        "/v1/adapters/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    query = paths["/v1/query"]["post"]
    assert {"200", "400", "404", "413", "415", "503", "504"} <= set(query["responses"])
    assert "application/problem+json" in query["responses"]["400"]["content"]
    body = schema["components"]["schemas"]["QueryBody"]["properties"]
    assert body["question"]["maxLength"] == 4000  # the running settings, not the hard cap
    assert body["max_new_tokens"]["maximum"] == 512
    assert body["top_k"]["minimum"] == 1 and body["top_k"]["maximum"] == 100
    assert body["temperature"]["minimum"] == 0


def test_full_queue_is_503_with_retry_after(svc_settings):
    # A long batch window keeps the first request waiting in the queue.
    settings = make_settings(svc_settings, queue_size=1, batch_window_ms=1500.0)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        with cf.ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/v1/query", json={"question": "one", "mode": "base"})
            for _ in range(100):
                if "ragtune_queue_depth 1.0" in c.get("/metrics").text:
                    break
                time.sleep(0.02)
            r = c.post("/v1/query", json={"question": "two", "mode": "base"})
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["status"] == 503
            assert first.result().status_code == 200
        assert "ragtune_rejected_total 1.0" in c.get("/metrics").text


def test_request_timeout_is_504(svc_settings):
    settings = make_settings(svc_settings, request_timeout_s=0.2, batch_window_ms=1000.0)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/v1/query", json={"question": "slow", "mode": "base"})
        assert r.status_code == 504 and r.json()["title"] == "Generation timed out"
        # the timed-out request was dropped from its batch; the next one is served
        time.sleep(1.2)
        assert c.post("/v1/query", json={"question": "again", "mode": "base"}).status_code == 504
        assert c.get("/metrics").text.count("ragtune_batch_size_count 0.0") == 1


@contextlib.contextmanager
def ragtune_serve(settings, cwd, **env: str):
    """``ragtune serve`` in a child process on a free port (settings through RAGTUNE_*);
    yields (process, base URL) once /readyz answers 200."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "ragtune",
        "--data-dir",
        str(settings.data_dir),
        "--embedder",
        settings.embedder,
        "--generator",
        settings.generator,
        "--threads",
        "1",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = os.environ | {f"RAGTUNE_{k.upper()}": v for k, v in env.items()} | {"PYTHONPATH": repo}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(180)
def test_ragtune_serve_finishes_requests_in_flight_on_sigterm(svc_settings, tmp_path):
    env = {"batch_window_ms": "1500", "max_new_tokens": "4"}
    with ragtune_serve(svc_settings, tmp_path, **env) as (proc, url):
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/query", json={"question": "q"}, timeout=60)
            time.sleep(0.5)  # the request now waits in its batch window
            proc.send_signal(signal.SIGTERM)
            r = pending.result()
        assert r.status_code == 200 and r.json()["answer"] is not None
        # uvicorn re-raises the signal once shut down cleanly, so the exit is "by SIGTERM"
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()


@pytest.mark.timeout(180)
def test_sigterm_cuts_a_long_prompt_after_the_grace_period(tiny_settings, tmp_path):
    """A prompt whose prefill outlasts shutdown_grace_s is stopped (503) and the process
    exits, instead of the shutdown waiting for the whole prompt."""
    from ragtune.core.models import load_embedder
    from tests.service.helpers import write_index
    from tests.tiny_models import build_tiny_generator

    generator = build_tiny_generator(tmp_path / "long" / "generator", max_positions=32768)
    settings = make_settings(tiny_settings, generator=str(generator))
    write_index(settings, load_embedder(settings))
    env = {
        "prefill_chunk_tokens": "16",
        "max_prompt_tokens": "30000",
        "max_question_chars": "100000",
        "max_body_bytes": "200000",
        "shutdown_grace_s": "0.3",
    }
    long_q = {"question": "a " * 12_000, "mode": "base", "max_new_tokens": 1}
    with ragtune_serve(settings, tmp_path, **env) as (proc, url):
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/query", json=long_q, timeout=120)
            deadline = time.monotonic() + 60
            while "ragtune_prefilling_rows 1.0" not in httpx.get(url + "/metrics").text:
                assert time.monotonic() < deadline, "the long prompt never started"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            r = pending.result()
        assert r.status_code == 503, r.text
        assert "shutting down" in r.json()["detail"] and r.headers["retry-after"]
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
