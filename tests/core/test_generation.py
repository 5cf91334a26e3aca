"""The generation engine and pipeline on a tiny real Llama with real LoRA adapters."""

from __future__ import annotations

import pytest

from ragtune.core.errors import AdapterMismatch, InvalidInput, UnknownAdapter
from ragtune.core.generation import GenerationEngine, GenRequest
from ragtune.core.models import load_generator
from ragtune.core.pipeline import Pipeline, QueryRequest
from tests.helpers import make_lora_adapter


@pytest.fixture
def engine(tiny_settings):
    return GenerationEngine(load_generator(tiny_settings), tiny_settings)


def _greedy(engine, prompt, adapter=None, n=8):
    return engine.generate_batch([GenRequest(prompt, adapter, n)])[0].text


def test_mixed_adapter_batch_matches_single_requests(tiny_settings, engine):
    make_lora_adapter(tiny_settings, "a", seed=1)
    make_lora_adapter(tiny_settings, "b", seed=2)
    prompts = ["paris is in", "the nile is a river", "python is a"]
    singles = {(p, a): _greedy(engine, p, a) for p in prompts for a in (None, "a", "b")}
    batch = [GenRequest(p, a, 8) for p in prompts for a in (None, "a", "b")]
    outs = engine.generate_batch(batch)
    for req, out in zip(batch, outs, strict=True):
        assert out.text == singles[(req.prompt, req.adapter)]
    # the adapters really change the output
    assert {singles[(prompts[0], a)] for a in (None, "a", "b")} != {singles[(prompts[0], None)]}


def test_lru_eviction_and_stats(tiny_settings):
    settings = tiny_settings.model_copy(update={"max_loaded_adapters": 2})
    eng = GenerationEngine(load_generator(settings), settings)
    for i in range(3):
        make_lora_adapter(settings, f"ad{i}", seed=i)
    before = _greedy(eng, "paris is in")
    eng.load_adapter("ad0")
    eng.load_adapter("ad1")
    eng.load_adapter("ad0")  # hit: ad1 becomes least recently used
    eng.load_adapter("ad2")  # evicts ad1
    assert eng.loaded_adapters() == ["ad0", "ad2"]
    assert (eng.stats.hits, eng.stats.misses, eng.stats.evictions) == (1, 3, 1)
    assert eng.unload_adapter("ad0") and eng.unload_adapter("ad2")
    assert not eng.unload_adapter("ad2")
    # with every adapter unloaded, the base model answers exactly as before
    assert _greedy(eng, "paris is in") == before


def test_unknown_and_mismatched_adapters(tiny_settings, engine):
    with pytest.raises(UnknownAdapter):
        engine.load_adapter("nope")
    info = make_lora_adapter(tiny_settings, "other")
    info.manifest.model_copy(update={"base_fingerprint": "0" * 64}).write(
        info.path / "manifest.json"
    )
    with pytest.raises(AdapterMismatch):
        engine.load_adapter("other")


def test_stream_yields_same_text_as_batch(tiny_settings, engine):
    make_lora_adapter(tiny_settings, "a", seed=1)
    req = GenRequest("the great wall of", "a", 6)
    items = list(engine.stream(req))
    *pieces, result = items
    assert all(isinstance(p, str) for p in pieces) and len(pieces) > 1
    assert "".join(pieces).strip() == result.text.strip()
    assert result.text == engine.generate_batch([req])[0].text


def test_pipeline_modes_with_given_contexts(tiny_settings):
    make_lora_adapter(tiny_settings, "a", seed=1)
    pipe = Pipeline(tiny_settings)
    ctx = ["The Eiffel Tower is in Paris."]
    answers = pipe.answer_batch(
        [
            QueryRequest("where is the tower?", mode="base", max_new_tokens=4),
            QueryRequest("where is the tower?", mode="finetune", adapter="a", max_new_tokens=4),
            QueryRequest("where is the tower?", mode="rag", contexts=ctx, max_new_tokens=4),
            QueryRequest(
                "where is the tower?", mode="hybrid", adapter="a", contexts=ctx, max_new_tokens=4
            ),
        ]
    )
    assert [a.mode for a in answers] == ["base", "finetune", "rag", "hybrid"]
    assert "Eiffel" in answers[2].prompt and "Eiffel" not in answers[0].prompt
    assert [len(a.sources) for a in answers] == [0, 0, 1, 1]
    assert all(a.usage.prompt_tokens > 0 for a in answers)


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (QueryRequest(" "), "question"),
        (QueryRequest("q", mode="finetune"), "adapter"),
        (QueryRequest("q", mode="rag", adapter="a"), "adapter"),
        (QueryRequest("q", top_k=0), "top_k"),
        (QueryRequest("q", max_new_tokens=100000), "max_new_tokens"),
        (QueryRequest("q", retrieval="magic"), "retrieval"),  # type: ignore[arg-type]
        (QueryRequest("q", mode="nope"), "mode"),  # type: ignore[arg-type]
    ],
)
def test_validation_names_the_field(tiny_settings, req, field):
    with pytest.raises(InvalidInput) as e:
        Pipeline(tiny_settings).validate(req)
    assert e.value.field == field


def test_pipeline_stream_ends_with_the_answer(tiny_settings):
    from ragtune.core.types import Answer

    pipe = Pipeline(tiny_settings)
    req = QueryRequest("where is the tower?", mode="base", max_new_tokens=5)
    *pieces, final = list(pipe.stream(req))
    assert isinstance(final, Answer) and all(isinstance(p, str) for p in pieces)
    assert final.answer == pipe.answer(req).answer
    assert final.usage.completion_tokens == 5 and final.timings.total_ms > 0
