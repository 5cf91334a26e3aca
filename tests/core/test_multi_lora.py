"""Batched multi-LoRA (core/multi_lora.py): rows with different adapters in one gathered
matmul pair per layer give peft's greedy outputs, on the tiny Llama with real adapters and
(slow) on SmolLM2."""

from __future__ import annotations

import pytest

from ragtune.core.config import Settings
from ragtune.core.generation import GenerationEngine
from ragtune.core.models import load_generator
from ragtune.core.multi_lora import RowLoraModel
from ragtune.core.types import GenRequest
from tests.helpers import make_lora_adapter

PROMPTS = [
    "where is the eiffel tower ?",
    "who created python ?",
    "what is the nile ?",
    "the great wall of china was built",
    "marie curie won",
]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _engines(settings: Settings) -> tuple[GenerationEngine, GenerationEngine]:
    gathered = GenerationEngine(load_generator(settings), settings)
    peft = GenerationEngine(
        load_generator(settings), settings.model_copy(update={"lora_kernel": "peft"})
    )
    return gathered, peft


def _requests(adapters: list[str | None], n: int = 8) -> list[GenRequest]:
    return [GenRequest(p, a, n) for p, a in zip(PROMPTS * 3, adapters, strict=False)]


def _texts(engine: GenerationEngine, reqs: list[GenRequest]) -> list[str]:
    return [r.text for r in engine.generate_batch(reqs)]


def _adapters(settings: Settings) -> None:
    make_lora_adapter(settings, "a", seed=1)  # r 4 on q, v
    make_lora_adapter(settings, "b", seed=2, r=8, target_modules=ALL_LINEAR, alpha=12)
    make_lora_adapter(settings, "c", seed=3, r=2, target_modules=("o_proj", "down_proj"))


def test_gathered_lora_gives_peft_outputs(tiny_settings: Settings) -> None:
    _adapters(tiny_settings)
    gathered, peft = _engines(tiny_settings)
    mix = ["a", "b", None, "c", "b", "a", None, "c"]
    reqs = _requests(mix)
    assert _texts(gathered, reqs) == _texts(peft, reqs)
    model, extra = gathered._model_and_names(mix)
    assert isinstance(model, RowLoraModel) and extra == {}  # the gathered path really ran
    # one adapter for every row (the plain matmul path) and no adapter at all
    for same in (["b"] * 5, [None] * 5):
        assert _texts(gathered, _requests(same)) == _texts(peft, _requests(same))
    # each row as it would be alone
    alone = [_texts(gathered, [r])[0] for r in reqs]
    assert _texts(gathered, reqs) == alone
    # the adapters really change the outputs
    assert len({t for t in _texts(gathered, _requests(["a", "b", "c", None], n=8))}) > 1


def test_gathered_logits_match_peft(tiny_settings: Settings) -> None:
    import torch

    _adapters(tiny_settings)
    gathered, peft = _engines(tiny_settings)
    for name in ("a", "b", "c"):
        gathered.load_adapter(name)
        peft.load_adapter(name)
    tok = gathered.tokenizer
    batch = tok(PROMPTS[:4], return_tensors="pt", padding=True)
    adapters = ["c", None, "b", "a"]
    out = []
    for eng in (gathered, peft):
        model, extra = eng._model_and_names(adapters)
        with torch.inference_mode():
            out.append(model(**batch, **extra).logits)
    assert torch.allclose(out[0], out[1], atol=1e-5, rtol=1e-5)


def test_restacked_after_unload_and_reload(tiny_settings: Settings) -> None:
    _adapters(tiny_settings)
    gathered, peft = _engines(tiny_settings)
    reqs = _requests(["a", "b", "c", None])
    before = _texts(gathered, reqs)
    assert before == _texts(peft, reqs)
    assert gathered.unload_adapter("b") and peft.unload_adapter("b")
    rest = _requests(["a", "c", None, "c"])
    assert _texts(gathered, rest) == _texts(peft, rest)
    assert _texts(gathered, reqs) == before  # b loads again, into a new slot


def test_unsupported_lora_falls_back_to_peft(tiny_settings: Settings) -> None:
    make_lora_adapter(tiny_settings, "a", seed=1)
    # LoRA on the embedding layer: peft mixes it per row, the gathered kernel does not stack it
    make_lora_adapter(tiny_settings, "emb", seed=4, target_modules=("embed_tokens", "q_proj"))
    gathered, peft = _engines(tiny_settings)
    reqs = _requests(["a", "emb", None, "a"])
    assert _texts(gathered, reqs) == _texts(peft, reqs)
    assert gathered._lora is not None and not gathered._lora.supported
    assert gathered.unload_adapter("emb")
    assert _texts(gathered, _requests(["a", None])) == _texts(peft, _requests(["a", None]))
    assert gathered._lora.supported  # back on the gathered path


@pytest.mark.slow
def test_gathered_lora_gives_peft_outputs_on_smollm2(packaged_settings: Settings) -> None:
    settings = packaged_settings.model_copy(update={"torch_threads": 1})
    for i, name in enumerate(("s1", "s2", "s3")):
        make_lora_adapter(settings, name, seed=i, r=16, target_modules=ALL_LINEAR, alpha=32)
    gathered, peft = _engines(settings)
    questions = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nName a large river in Africa.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWhat do plants need to grow?<|im_end|>\n<|im_start|>assistant\n",
    ]
    mix = ["s1", "s2", None, "s3", "s2", "s1"]
    reqs = [GenRequest(q, a, 16) for q, a in zip(questions * 2, mix, strict=False)]
    assert _texts(gathered, reqs) == _texts(peft, reqs)


def test_bf16_prefill_keeps_fp32_decode_and_answers(tiny_settings: Settings) -> None:
    """prefill_dtype bfloat16: prompts run under CPU autocast, the cache the decode steps
    extend is fp32, and on the tiny model the greedy answers stay the same."""
    _adapters(tiny_settings)
    fp32 = GenerationEngine(load_generator(tiny_settings), tiny_settings)
    bf16_settings = tiny_settings.model_copy(update={"prefill_dtype": "bfloat16"})
    bf16 = GenerationEngine(load_generator(bf16_settings), bf16_settings)
    reqs = _requests(["a", None, "b", "c"])
    assert _texts(bf16, reqs) == _texts(fp32, reqs)
    batch = bf16.batch()
    from ragtune.core.decode import Row

    batch.add([Row(GenRequest(PROMPTS[0], "b", 4), lambda r: None)])
    layer = batch._state._cache.layers[0]
    assert layer.keys.dtype == layer.values.dtype == bf16.gen.model.dtype
