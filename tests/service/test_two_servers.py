"""One ragtune as the generation backend of another: two real ``ragtune serve`` processes.

The back generates (tiny models; a registry of its own, empty, plus ``lora_dirs`` = the
shared volume). The front has the index and the adapter registry, and
``generator_backend = "openai"`` pointing at the back; it sees the volume as its registry
and the back sees it under another path (``generator_adapter_dir``), as two machines
would. Greedy answers through the front equal the local pipeline's on the same questions,
modes and adapters; an adapter trained after both started is served; ``ragtune eval`` runs
unchanged on the front's settings; killing the back gives clean 503s, and the front
recovers (re-registering its adapters) when the back returns.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ragtune.core.config import Settings, resolve_settings
from ragtune.core.models import load_embedder
from ragtune.core.pipeline import Pipeline, QueryRequest
from tests.helpers import make_lora_adapter
from tests.service.helpers import free_port, write_index

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = [
    "Where is the Eiffel Tower?",
    "Who created Python?",
    "What is the highest mountain on Earth?",
    "Which river is in Africa?",
]
MODES = [("base", None), ("rag", None)] + [
    (m, a) for a in ("alpha", "beta") for m in ("finetune", "hybrid")
]


class Serve:
    """``python -m ragtune serve`` as a child process (settings as flags and RAGTUNE_*),
    logging to a file; ``kill`` is SIGKILL, ``start`` again reuses the port."""

    def __init__(self, settings: Settings, port: int, log: Path, **env: str) -> None:
        self.settings, self.port, self.log = settings, port, log
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        s = self.settings
        cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(s.data_dir), "--embedder"]
        cmd += [s.embedder, "--generator", s.generator, "--threads", "1", "serve"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        env = os.environ | {f"RAGTUNE_{k.upper()}": v for k, v in self.env.items()}
        env |= {"PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=log, cwd=s.data_dir.parent
            )

    def wait(self, ready: bool) -> None:
        """Until the models are loaded (``ready``: and /readyz says 200)."""
        deadline = time.monotonic() + 180
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if (r.status_code == 200) if ready else r.json()["models_loaded"]:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@dataclass
class Pair:
    front: Serve
    back: Serve
    settings: Settings  # the front's (local generation), for the reference answers
    local: Pipeline
    shared: Path


@pytest.fixture(scope="module")
def pair(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("two-servers")
    models = shutil.copytree(tiny_models_dir, root / "models")
    settings, _ = resolve_settings(
        overrides={
            "data_dir": root / "front",
            "cache_dir": root / "cache",
            "embedder": str(models / "embedder"),
            "generator": str(models / "generator"),
            "torch_threads": 1,
            "chunk_size": 64,
            "chunk_overlap": 8,
            "max_new_tokens": 6,
        },
        environ={},
    )
    write_index(settings, load_embedder(settings))
    make_lora_adapter(settings, "alpha", seed=1, version="alpha-1")
    make_lora_adapter(settings, "beta", seed=2, version="beta-1")
    shared = root / "volume"  # the registry, mounted elsewhere on the back's "machine"
    shared.symlink_to(settings.adapters_dir.resolve())
    back_settings = settings.model_copy(update={"data_dir": root / "back"})
    back_settings.data_dir.mkdir()
    back = Serve(back_settings, free_port(), root / "back.log", lora_dirs=str(shared))
    front = Serve(
        settings,
        free_port(),
        root / "front.log",
        generator_backend="openai",
        generator_url=f"http://127.0.0.1:{back.port}",
        generator_adapter_dir=str(shared),
        generator_retries="1",
        generator_retry_backoff_s="0.1",
        max_new_tokens="6",
        batch_window_ms="5",
        max_batch_size="16",
    )
    back.start()
    front.start()
    try:
        back.wait(ready=False)  # it has no index: it only generates
        front.wait(ready=True)
        yield Pair(front, back, settings, Pipeline(settings), shared)
    finally:
        front.kill()
        back.kill()


def query(
    url: str, question: str, mode: str, adapter: str | None, **more: object
) -> httpx.Response:
    body = {"question": question, "mode": mode, "adapter": adapter} | more
    return httpx.post(url + "/v1/query", json=body, timeout=120)


def local_answer(pair: Pair, question: str, mode: str, adapter: str | None) -> dict:
    req = QueryRequest(question, mode=mode, adapter=adapter)  # type: ignore[arg-type]
    return pair.local.answer(req).to_dict()


def assert_same(remote: dict, local: dict) -> None:
    keep = ("answer", "mode", "adapter", "index", "index_version", "usage", "finish_reason")
    assert {k: remote[k] for k in keep} == {k: local[k] for k in keep}
    assert [s["chunk_id"] for s in remote["sources"]] == [s["chunk_id"] for s in local["sources"]]


def test_greedy_answers_through_the_front_equal_the_local_ones(pair: Pair) -> None:
    cases = [(q, m, a) for q in QUESTIONS for m, a in MODES]
    with cf.ThreadPoolExecutor(8) as pool:  # together, so the back batches them
        remote = list(pool.map(lambda c: query(pair.front.url, *c), cases))
    for (q, m, a), r in zip(cases, remote, strict=True):
        assert r.status_code == 200, r.text
        assert_same(r.json(), local_answer(pair, q, m, a))
        assert r.json()["timings"]["generate_ms"] > 0


def test_openai_routes_and_streams_through_the_front(pair: Pair) -> None:
    want = local_answer(pair, QUESTIONS[0], "hybrid", "beta")
    chat = httpx.post(
        pair.front.url + "/v1/chat/completions",
        json={
            "model": "beta",
            "messages": [{"role": "user", "content": QUESTIONS[0]}],
            "ragtune": {},
        },
        timeout=60,
    ).json()
    assert chat["choices"][0]["message"]["content"] == want["answer"]
    assert chat["ragtune"]["index_version"] == want["index_version"]
    assert chat["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    # the SSE stream of /v1/query: token events that join to the answer, then the answer
    with httpx.stream(
        "POST",
        pair.front.url + "/v1/query",
        json={"question": QUESTIONS[0], "mode": "hybrid", "adapter": "beta", "stream": True},
        timeout=60,
    ) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "".join(e["text"] for e in events[:-1]) == want["answer"]
    assert_same(events[-1], want)


def test_readyz_reports_the_backend(pair: Pair) -> None:
    r = httpx.get(pair.front.url + "/readyz", timeout=30)
    assert r.status_code == 200
    assert r.json()["backend"] == {
        "kind": "openai",
        "model": "generator",
        "reachable": True,
        "detail": None,
    }
    cards = httpx.get(pair.back.url + "/v1/models", timeout=30).json()["data"]
    # what the front registered at the back, with vLLM's parent field
    assert {"alpha", "beta"} <= {c["id"] for c in cards if c.get("parent") == "generator"}


def test_an_adapter_trained_after_both_started_is_served(pair: Pair, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    pairs = [("Who created Python?", "Guido van Rossum"), ("Where is the Nile?", "Africa")]
    data.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in pairs * 4))
    s = pair.settings
    tune = [sys.executable, "-m", "ragtune", "--data-dir", str(s.data_dir), "--embedder"]
    tune += [s.embedder, "--generator", s.generator, "--threads", "1", "tune", "--data"]
    tune += [str(data), "--name", "fresh", "--max-steps", "3", "--batch-size", "2", "--lr", "0.05"]
    tune += ["--val-fraction", "0", "--no-forgetting", "--r", "4", "--alpha", "8", "--quiet"]
    done = subprocess.run(
        tune, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for q in QUESTIONS[:2]:
        r = query(pair.front.url, q, "finetune", "fresh")
        assert r.status_code == 200, r.text
        assert_same(r.json(), local_answer(pair, q, "finetune", "fresh"))


def test_eval_runs_unchanged_on_the_remote_backend(pair: Pair, tmp_path: Path) -> None:
    dataset = tmp_path / "questions.jsonl"
    rows = [{"id": f"q{i}", "question": q, "answers": ["x"]} for i, q in enumerate(QUESTIONS)]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = pair.settings

    def run(out: Path, **env: str) -> list[tuple[str, str, str]]:
        cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(s.data_dir), "--embedder"]
        cmd += [s.embedder, "--generator", s.generator, "--threads", "1", "eval", "run"]
        cmd += ["--dataset", str(dataset), "--modes", "base,rag,finetune,hybrid"]
        cmd += ["--finetune-adapter", "alpha", "--hybrid-adapter", "beta", "--n-boot", "50"]
        cmd += ["--max-new-tokens", "6", "--out", str(out), "-q"]
        environ = os.environ | {"PYTHONPATH": str(REPO)}
        environ |= {f"RAGTUNE_{k.upper()}": v for k, v in env.items()}
        done = subprocess.run(cmd, env=environ, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        results = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
        answers = [r for r in results if r["kind"] == "answer"]
        return sorted((r["qid"], r["variant"], r["prediction"]) for r in answers)

    remote = run(
        tmp_path / "remote",
        generator_backend="openai",
        generator_url=pair.back.url,
        generator_adapter_dir=str(pair.shared),
    )
    assert len(remote) == 4 * len(QUESTIONS)
    assert remote == run(tmp_path / "local")


def test_killing_the_back_gives_clean_503s_and_the_front_recovers(pair: Pair) -> None:
    pair.back.kill()
    r = query(pair.front.url, QUESTIONS[1], "finetune", "alpha")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["title"] == "Generation backend unavailable"
    assert "unreachable (connection refused)" in body["detail"] and r.headers["retry-after"]
    r = httpx.post(
        pair.front.url + "/v1/completions",
        json={"model": "generator", "prompt": QUESTIONS[1], "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]
    r = query(pair.front.url, QUESTIONS[1], "base", None, stream=True)
    assert r.status_code == 503  # before the first token: a status, not a broken stream
    ready = httpx.get(pair.front.url + "/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["backend"]["reachable"] is False
    assert "unreachable" in ready.json()["detail"]

    pair.back.start()  # same port; it remembers no runtime adapter
    pair.back.wait(ready=False)
    for mode, adapter in MODES:
        r = query(pair.front.url, QUESTIONS[1], mode, adapter)
        assert r.status_code == 200, r.text
        assert_same(r.json(), local_answer(pair, QUESTIONS[1], mode, adapter))
    assert httpx.get(pair.front.url + "/readyz", timeout=30).status_code == 200
    log = pair.front.log.read_text()
    assert "Traceback" not in log
