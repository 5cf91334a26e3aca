"""The remote generation backend in one process: a front Pipeline whose generator_backend is
"openai" against a real ragtune app under uvicorn (the back), and against servers that
misbehave on purpose (nothing listening, never answering, answering errors)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from ragtune.core.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidInput
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.core.registry import get_adapter
from tests.helpers import make_lora_adapter
from tests.service.helpers import back_server, free_port

QUESTIONS = ["Where is the Eiffel Tower?", "Who created Python?", "What is the Nile?"]


def requests_for(adapters: tuple[str, ...] = ("alpha",)) -> list[QueryRequest]:
    out = []
    for q in QUESTIONS:
        out += [QueryRequest(q, mode="base"), QueryRequest(q, mode="rag")]
        for a in adapters:
            out += [QueryRequest(q, mode="finetune", adapter=a)]
            out += [QueryRequest(q, mode="hybrid", adapter=a)]
    return out


def front_settings(settings, url: str, **more):
    update = {
        "generator_backend": "openai",
        "generator_url": url,
        "generator_retries": 1,
        "generator_retry_backoff_s": 0.05,
    }
    return settings.model_copy(update=update | more)


@pytest.fixture
def back(svc_settings) -> Iterator[str]:
    with back_server(svc_settings) as url:
        yield url


def same(a, b) -> None:
    assert (a.answer, a.mode, a.adapter, a.index_version, a.finish_reason) == (
        b.answer,
        b.mode,
        b.adapter,
        b.index_version,
        b.finish_reason,
    )
    assert [h.chunk_id for h in a.sources] == [h.chunk_id for h in b.sources]
    assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (
        b.usage.prompt_tokens,
        b.usage.completion_tokens,
    )


def test_greedy_answers_equal_the_local_ones(svc_settings, back):
    make_lora_adapter(svc_settings, "beta", seed=2)
    reqs = requests_for(("alpha", "beta"))
    local = Pipeline(svc_settings).answer_batch(reqs)
    front = Pipeline(front_settings(svc_settings, back))
    try:
        remote = front.answer_batch(reqs)
        for a, b in zip(local, remote, strict=True):
            same(a, b)
            assert b.timings.generate_ms > 0 and b.timings.total_ms >= b.timings.generate_ms
        assert sorted(front.engine.loaded_adapters()) == ["alpha", "beta"]
        # registered once each, then hits
        assert front.engine.stats.misses == 2 and front.engine.stats.hits >= 2
        # streamed pieces join to the answer, and the final Answer keeps its sources
        items = list(front.stream(reqs[3]))
        final = items[-1]
        assert "".join(items[:-1]).strip() == final.answer == local[3].answer
        assert final.sources and final.index_version == local[3].index_version
        assert front.engine.check_backend().ok
    finally:
        front.close()


def test_retrained_adapter_is_loaded_again_and_a_restart_forgets_nothing(svc_settings, tmp_path):
    port = free_port()
    # The back has a registry of its own (empty) and reads the front's through lora_dirs, so
    # it knows "alpha" only as long as the front's registration lasts.
    app_settings = svc_settings.model_copy(
        update={
            "port": port,
            "data_dir": tmp_path / "back",
            "lora_dirs": [svc_settings.adapters_dir],
        }
    )
    front = Pipeline(front_settings(svc_settings, f"http://127.0.0.1:{port}"))
    req = [QueryRequest(QUESTIONS[0], mode="finetune", adapter="alpha")]
    try:
        with back_server(app_settings, port=port):
            first = front.answer_batch(req)[0]
            same(first, Pipeline(svc_settings).answer_batch(req)[0])
            # retrained under the same name: a new version, different weights
            make_lora_adapter(svc_settings, "alpha", seed=7, version="v2")
            second = front.answer_batch(req)[0]
            same(second, Pipeline(svc_settings).answer_batch(req)[0])
            assert second.answer != first.answer
            assert front.engine.stats.misses == 2  # registered again, in place
        # the back restarts: it has lost its runtime registrations (vLLM does too)
        with back_server(app_settings, port=port) as url:
            gone = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "alpha"})
            assert gone.status_code == 404  # nothing registered there now
            again = front.answer_batch(req)[0]
            same(again, second)
            assert front.engine.stats.misses == 3  # the 404 registered it again
    finally:
        front.close()


def test_adapter_checked_here_before_the_server_sees_it(svc_settings, back):
    front = Pipeline(front_settings(svc_settings, back))
    try:
        (get_adapter(svc_settings, "alpha").path / "adapter_model.safetensors").unlink()
        with pytest.raises(InvalidInput, match="adapter weights"):
            front.answer_batch([QueryRequest("q", mode="finetune", adapter="alpha")])
        assert front.engine.loaded_adapters() == []
    finally:
        front.close()


def test_a_server_that_refuses_the_adapter_is_a_502_with_its_message(svc_settings, tmp_path):
    """The back loads adapters only from its own registry and lora_dirs: a front whose
    registry is elsewhere is refused (403 there, 502 here, with the back's words)."""
    other = svc_settings.model_copy(update={"data_dir": tmp_path / "front-data"})
    make_lora_adapter(other, "gamma", seed=3)
    with back_server(svc_settings) as url:
        front = Pipeline(front_settings(other, url))
        try:
            with pytest.raises(BackendError) as err:
                front.engine.load_adapter("gamma")
            assert err.value.status == 502
            assert "refused adapter 'gamma' (403)" in err.value.message
            assert "outside the folders" in err.value.message
        finally:
            front.close()


def test_the_server_path_maps_the_registry_to_a_shared_volume(svc_settings, tmp_path):
    """generator_adapter_dir: the registry as the server sees it (here a link to it)."""
    shared = tmp_path / "shared-volume"
    shared.symlink_to(svc_settings.adapters_dir.resolve())
    back_settings = svc_settings.model_copy(
        update={"data_dir": tmp_path / "back-data", "lora_dirs": [shared]}
    )
    with back_server(back_settings) as url:
        front = Pipeline(front_settings(svc_settings, url, generator_adapter_dir=str(shared)))
        try:
            assert front.engine.server_path(get_adapter(svc_settings, "alpha")) == f"{shared}/alpha"
            req = [QueryRequest(QUESTIONS[1], mode="finetune", adapter="alpha")]
            same(front.answer_batch(req)[0], Pipeline(svc_settings).answer_batch(req)[0])
        finally:
            front.close()


# --- servers that misbehave -----------------------------------------------------------------
@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and reads, never answers (a hung backend)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = sock.accept()
                conns.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()


@contextlib.contextmanager
def status_server(
    status: int, body: dict, headers: dict[str, str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Answers every request with ``status`` and ``body``; counts the requests."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            hits.append(self.path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def base_request() -> list[QueryRequest]:
    return [QueryRequest("Who created Python?", mode="base")]


def test_nothing_listening_is_a_503_after_the_retries(svc_settings):
    front = Pipeline(front_settings(svc_settings, f"http://127.0.0.1:{free_port()}"))
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable) as err:
            front.answer_batch(base_request())
        assert err.value.status == 503 and "unreachable (connection refused)" in err.value.message
        assert time.monotonic() - t0 < 10
        health = front.engine.check_backend()
        assert not health.ok and "unreachable" in (health.detail or "")
    finally:
        front.close()


def test_a_hung_server_is_a_504_after_generator_timeout_s(svc_settings):
    with silent_server() as url:
        front = Pipeline(front_settings(svc_settings, url, generator_timeout_s=0.5))
        try:
            t0 = time.monotonic()
            with pytest.raises(BackendTimeout) as err:
                front.answer_batch(base_request())
            assert err.value.status == 504 and "sent nothing for 0.5 s" in err.value.message
            assert time.monotonic() - t0 < 5  # a read timeout is not retried
        finally:
            front.close()


def test_server_errors_keep_the_servers_message(svc_settings):
    vllm_error = {"error": {"message": "engine dead", "type": "InternalServerError", "code": 500}}
    with status_server(500, vllm_error) as (url, hits):
        front = Pipeline(front_settings(svc_settings, url))
        try:
            with pytest.raises(BackendError) as err:
                front.answer_batch(base_request())
            assert err.value.status == 502
            assert err.value.message.endswith("answered 500 to a completion: engine dead")
            assert len(hits) == 1  # a 500 is not retried
        finally:
            front.close()
    with status_server(503, {"message": "busy"}, {"Retry-After": "7"}) as (url, hits):
        front = Pipeline(front_settings(svc_settings, url, generator_retries=2))
        try:
            with pytest.raises(BackendUnavailable) as err:
                front.answer_batch(base_request())
            assert "overloaded (503 to a completion): busy" in err.value.message
            assert err.value.retry_after == 7  # type: ignore[attr-defined]
            assert len(hits) == 3  # retried twice with backoff
        finally:
            front.close()
