"""vLLM's runtime LoRA API on ragtune (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)
and token-id prompts on ``/v1/completions``: the two things a front ragtune (or a tool
written for vLLM) needs from a generation server."""

from __future__ import annotations

import shutil

import pytest
from litestar.testing import TestClient

from ragtune.core.prompts import render_prompt
from ragtune.core.types import GenRequest
from ragtune.service.app import create_app
from tests.helpers import make_lora_adapter
from tests.service.conftest import make_settings, wait_ready


def base_id(client: TestClient) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


def test_load_answers_vllm_text_and_the_adapter_is_a_model(client, svc_settings):
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "alpha"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "Success: LoRA adapter 'a2' added successfully."
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    base = base_id(client)
    assert cards["a2"]["parent"] == base and cards["alpha"]["parent"] == base
    assert cards[base]["max_model_len"] == 1024  # the tiny model's context
    # the registered name answers as alpha does (same folder), and differs from the base
    body = {"prompt": "Where is the Nile?", "max_tokens": 5}
    a2 = client.post("/v1/completions", json=body | {"model": "a2"}).json()
    alpha = client.post("/v1/completions", json=body | {"model": "alpha"}).json()
    assert a2["choices"][0]["text"] == alpha["choices"][0]["text"]
    assert a2["ragtune"][0]["adapter"] == "a2"
    # loaded at registration (vLLM preloads too)
    assert "a2" in client.get("/v1/adapters").json()["loaded"]


def test_load_twice_is_vllms_400_unless_in_place(client):
    body = {"lora_name": "a2", "lora_path": "alpha"}
    assert client.post("/v1/load_lora_adapter", json=body).status_code == 200
    r = client.post("/v1/load_lora_adapter", json=body)
    assert r.status_code == 400
    assert "has already been loaded" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "lora_name"
    r = client.post("/v1/load_lora_adapter", json=body | {"load_inplace": True})
    assert r.status_code == 200, r.text


def test_unload_then_unknown(client):
    client.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "alpha"})
    r = client.post("/v1/unload_lora_adapter", json={"lora_name": "a2"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a2' removed successfully."
    assert "a2" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
    r = client.post("/v1/unload_lora_adapter", json={"lora_name": "a2"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The lora adapter 'a2' cannot be found."
    # a registry adapter is not a runtime registration: 404, and it stays usable
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "alpha"}).status_code == 404
    r = client.post("/v1/completions", json={"model": "alpha", "prompt": "q", "max_tokens": 2})
    assert r.status_code == 200


def test_paths_are_checked_before_anything_loads(client, svc_settings, tmp_path):
    def load(path: str, name: str = "x") -> tuple[int, str]:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        return r.status_code, r.json()["error"]["message"]

    # vLLM answers 200 for a folder that does not exist (vllm-project/vllm#18372); not here
    status, message = load(str(svc_settings.adapters_dir.resolve() / "missing"))
    assert status == 404 and message.startswith("Loading lora x failed: No adapter found for")
    assert load("missing")[0] == 404
    # outside the registry and lora_dirs
    assert load(str(tmp_path))[0] == 403
    assert load("../../etc")[0] == 403
    assert load("/etc")[0] == 403
    # a folder that is not an adapter
    (svc_settings.adapters_dir / "empty").mkdir()
    status, message = load("empty")
    assert status == 404 and "adapter_config.json" in message
    # names follow the adapter name rule
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "../x", "lora_path": "alpha"})
    assert r.status_code == 400
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "alpha", "y": 1})
    assert r.status_code == 400 and r.json()["field"] == "y"
    assert "x" not in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_a_plain_peft_folder_from_lora_dirs(svc_settings, tmp_path):
    """A folder without a ragtune manifest (what vLLM users have) loads from lora_dirs."""
    outside = tmp_path / "loras"
    shutil.copytree(svc_settings.adapters_dir / "alpha", outside / "plain")
    (outside / "plain" / "manifest.json").unlink()
    settings = svc_settings.model_copy(update={"lora_dirs": [outside]})
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post(
            "/v1/load_lora_adapter", json={"lora_name": "p", "lora_path": str(outside / "plain")}
        )
        assert r.status_code == 200, r.text
        body = {"prompt": "Where is the Nile?", "max_tokens": 5}
        plain = c.post("/v1/completions", json=body | {"model": "p"}).json()
        alpha = c.post("/v1/completions", json=body | {"model": "alpha"}).json()
        assert plain["choices"][0]["text"] == alpha["choices"][0]["text"]


def test_an_adapter_for_another_base_is_refused_at_load(svc_settings, tmp_path):
    from tests.tiny_models import build_tiny_generator

    other = build_tiny_generator(tmp_path / "other" / "generator", seed=5)
    make_lora_adapter(svc_settings.model_copy(update={"generator": str(other)}), "foreign")
    with TestClient(create_app(svc_settings)) as c:
        wait_ready(c)
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "f2", "lora_path": "foreign"})
        assert r.status_code == 409, r.text  # the manifest's base fingerprint differs
        assert "f2" not in [m["id"] for m in c.get("/v1/models").json()["data"]]


# --- token-id prompts ---------------------------------------------------------------------
def prompt_ids(client: TestClient, question: str) -> list[int]:
    pipeline = client.app.state.services.pipeline
    tok = pipeline.engine.tokenizer
    return tok(render_prompt(tok, question), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_token_ids_are_completed_as_they_are(client, model):
    engine = client.app.state.services.pipeline.engine
    ids = prompt_ids(client, "Who created Python?")
    name = base_id(client) if model == "base" else model
    r = client.post("/v1/completions", json={"model": name, "prompt": ids, "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    adapter = None if model == "base" else model
    want = engine.generate_batch([GenRequest("", adapter, 5, prompt_ids=tuple(ids))])[0]
    assert body["choices"][0]["text"] == want.text
    assert body["choices"][0]["finish_reason"] == want.finish_reason
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] == want.completion_tokens
    info = body["ragtune"][0]
    assert info["mode"] == ("base" if model == "base" else "finetune") and info["sources"] == []


def test_token_id_batches_and_streams(client):
    a, b = prompt_ids(client, "Who created Python?"), prompt_ids(client, "Where is the Nile?")
    base = base_id(client)
    one = {"model": base, "max_tokens": 4}
    batch = client.post("/v1/completions", json=one | {"prompt": [a, b]}).json()
    alone = [client.post("/v1/completions", json=one | {"prompt": p}).json() for p in (a, b)]
    assert [c["text"] for c in batch["choices"]] == [x["choices"][0]["text"] for x in alone]
    with client.stream(
        "POST",
        "/v1/completions",
        json=one | {"prompt": a, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    import json

    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == alone[0]["choices"][0]["text"]
    assert chunks[-1]["usage"]["completion_tokens"] == alone[0]["usage"]["completion_tokens"]


def test_token_id_prompts_refused_clearly(client):
    base = base_id(client)
    vocab = client.app.state.services.pipeline.engine.gen.vocab_size

    def post(**body: object) -> tuple[int, dict]:
        r = client.post("/v1/completions", json={"model": base} | body)
        return r.status_code, r.json()

    status, body = post(prompt=[1, vocab])
    assert status == 400 and body["field"] == "prompt" and f"token id {vocab}" in body["detail"]
    status, body = post(prompt=[1, "two"])
    assert status == 400 and body["field"] == "prompt"
    status, body = post(prompt=[1, 2], ragtune={"retrieval": "dense"})
    assert status == 400 and body["field"] == "ragtune"
    status, body = post(prompt=[[1, 2], [3]], stream=True)
    assert status == 400 and "single prompt" in body["detail"]
    status, body = post(prompt=[1] * 1020, max_tokens=8)  # 1020 + 8 > the 1024 context
    assert status == 400 and body["field"] == "max_tokens"
    status, body = post(prompt=[1, 2], model="nope")
    assert status == 404 and body["field"] == "model"


def test_stop_newline_ends_the_first_line(svc_settings):
    """``stop: "\\n"`` stops a token-id completion where its first line ends (the tiny
    model has no newline token, so this checks the flag reaches the engine: same text)."""
    with TestClient(create_app(make_settings(svc_settings))) as c:
        wait_ready(c)
        ids = prompt_ids(c, "Where is the Nile?")
        base = base_id(c)
        plain = c.post("/v1/completions", json={"model": base, "prompt": ids, "max_tokens": 4})
        stop = c.post(
            "/v1/completions", json={"model": base, "prompt": ids, "max_tokens": 4, "stop": ["\n"]}
        )
        assert stop.status_code == 200
        assert stop.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
