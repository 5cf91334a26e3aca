"""Any transformers causal LM works as the generator, with its own chat template: a tiny
Llama-3-shaped model (header tokens, <|eot_id|>) and a tiny Qwen2-shaped one (its own
byte-level BPE tokenizer class, ChatML with a default system turn, q/k/v biases) answer in
every mode, train an adapter with the real tuner, and give the same answers through a
generation server as locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.models import load_embedder, load_generator
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.tuner.api import train_adapter
from ragtune.tuner.args import TuneArgs
from tests.service.helpers import back_server, write_index
from tests.tiny_models import build_tiny_llama3_generator, build_tiny_qwen2_generator
from tests.tuner.helpers import prompt_records, write_jsonl

SHAPES = {
    "llama3": (build_tiny_llama3_generator, "<|start_header_id|>assistant<|end_header_id|>"),
    "qwen2": (build_tiny_qwen2_generator, "<|im_start|>assistant\n"),
}


@pytest.fixture(params=sorted(SHAPES))
def shaped(request, tiny_settings, tmp_path):
    build, marker = SHAPES[request.param]
    folder = build(tmp_path / request.param / "generator")
    settings = tiny_settings.model_copy(update={"generator": str(folder), "max_new_tokens": 6})
    write_index(settings, load_embedder(settings))
    args = TuneArgs(
        data=[str(write_jsonl(tmp_path / "qa.jsonl", prompt_records(8)))],
        name="shaped",
        max_steps=2,
        batch_size=4,
        val_fraction=0.0,
        forgetting=False,
        r=4,
        alpha=8,
        lr=0.05,
    )
    train_adapter(settings, args, progress=False)
    return request.param, settings, marker


def requests() -> list[QueryRequest]:
    out = []
    for q in ("Who created Python?", "Where is the Nile?"):
        out += [QueryRequest(q, mode="base"), QueryRequest(q, mode="rag")]
        out += [QueryRequest(q, mode="finetune", adapter="shaped")]
        out += [QueryRequest(q, mode="hybrid", adapter="shaped")]
    return out


def test_its_template_its_stop_tokens_and_every_mode(shaped):
    name, settings, marker = shaped
    gen = load_generator(settings)
    assert gen.model.config.model_type == ("qwen2" if name == "qwen2" else "llama")
    pipeline = Pipeline(settings, generator=gen)
    reqs = requests()
    together = pipeline.answer_batch(reqs)
    for req, answer in zip(reqs, together, strict=True):
        assert answer.prompt.endswith(marker.rstrip("\n") + ("\n" if name == "qwen2" else "\n\n"))
        assert answer.mode == req.mode and answer.usage.completion_tokens >= 1
        alone = pipeline.answer(req)
        assert alone.answer == answer.answer  # rows batched together = each row alone
    eot = "<|eot_id|>" if name == "llama3" else "<|im_end|>"
    stop = gen.tokenizer.convert_tokens_to_ids(eot)
    assert stop in pipeline.engine._stops  # type: ignore[attr-defined]


def test_through_a_generation_server_too(shaped, tmp_path):
    _, settings, _ = shaped
    reqs = requests()
    local = Pipeline(settings).answer_batch(reqs)
    with back_server(settings) as url:
        front = Pipeline(
            settings.model_copy(update={"generator_backend": "openai", "generator_url": url})
        )
        try:
            remote = front.answer_batch(reqs)
        finally:
            front.close()
    for a, b in zip(local, remote, strict=True):
        assert (a.answer, a.usage, a.finish_reason) == (b.answer, b.usage, b.finish_reason)


def test_the_adapter_manifest_records_the_template(shaped):
    name, settings, _ = shaped
    from ragtune.core.registry import get_adapter

    info = get_adapter(settings, "shaped")
    assert info.manifest.base_model == "generator"
    assert Path(info.path / "adapter_model.safetensors").is_file()
    example = info.manifest.prompt.example  # type: ignore[union-attr]
    assert ("<|eot_id|>" if name == "llama3" else "<|im_end|>") in example.completion
