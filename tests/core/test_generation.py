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


# --- token budgets ---------------------------------------------------------------------------
WORDS = "the great wall of china was built over many centuries "  # 10 tokens for the tiny model


def test_a_prompt_over_the_token_budget_is_refused_before_retrieval(tiny_settings):
    """Counted in tokens on the rendered prompt, with both numbers and the field; before the
    index is even opened (this one does not exist)."""
    pipe = Pipeline(tiny_settings.model_copy(update={"max_prompt_tokens": 100}))
    with pytest.raises(InvalidInput) as e:
        pipe.prepare([QueryRequest(WORDS * 12, mode="rag", index="missing")])
    assert e.value.field == "question"
    assert "more than max_prompt_tokens (100)" in e.value.message
    n = int(e.value.message.split(" is ")[1].split()[0])
    assert n > 120  # the question's 120 tokens plus the template's
    history = ((WORDS * 5, "an answer"),) * 2
    with pytest.raises(InvalidInput) as e:
        pipe.prepare([QueryRequest("who built it?", mode="base", history=history)])
    assert e.value.field == "history" and "(100)" in e.value.message


def test_the_models_context_bounds_prompt_plus_answer(tiny_settings):
    """The tiny generator has 1024 positions (its config says so)."""
    pipe = Pipeline(tiny_settings.model_copy(update={"max_prompt_tokens": 4096}))
    assert pipe.engine.gen.context_length == 1024
    with pytest.raises(InvalidInput) as e:  # the prompt alone is too long
        pipe.prepare([QueryRequest(WORDS * 110, mode="base", max_new_tokens=4)])
    assert e.value.field == "question" and "context of 1024 tokens" in e.value.message
    with pytest.raises(InvalidInput) as e:  # the prompt fits, but not with the answer
        pipe.prepare([QueryRequest(WORDS * 95, mode="base", max_new_tokens=200)])
    assert e.value.field == "max_new_tokens"
    assert "max_new_tokens is 200" in e.value.message and "1024" in e.value.message
    ok = pipe.prepare([QueryRequest(WORDS * 95, mode="base", max_new_tokens=4)])
    assert ok[0].request.max_new_tokens == 4


def test_passages_are_trimmed_to_fit_lowest_ranked_first(tiny_settings):
    from ragtune.core.prompts import count_tokens, render_prompt

    settings = tiny_settings.model_copy(update={"max_prompt_tokens": 160})
    pipe = Pipeline(settings)
    tok = pipe.engine.tokenizer
    passages = [f"passage {i} " + WORDS * 4 for i in range(5)]  # ~45 tokens each
    req = QueryRequest("who built the wall?", mode="rag", contexts=passages, max_new_tokens=4)
    p = pipe.prepare([req])[0]
    kept = [h.text for h in p.hits]
    assert 1 <= len(kept) < 5 and kept == passages[: len(kept)]  # best first
    assert p.prompt == render_prompt(tok, req.question, kept, settings.max_context_chars)
    assert count_tokens(tok, p.prompt) <= 160
    # not even the best passage fits whole: it is cut, never the question
    huge = [WORDS * 30]
    p = pipe.prepare([QueryRequest("who built the wall?", mode="rag", contexts=huge)])[0]
    assert len(p.hits) == 1 and " ..." in p.prompt and "who built the wall?" in p.prompt
    assert count_tokens(tok, p.prompt) <= 160
    # within the budget nothing changes
    small = Pipeline(tiny_settings).prepare([req])[0]
    assert small.prompt == render_prompt(tok, req.question, passages, settings.max_context_chars)


def test_context_length_comes_from_the_model_config():
    from transformers import GPT2Config, LlamaConfig

    from ragtune.core.models import context_length

    assert context_length(LlamaConfig(max_position_embeddings=8192)) == 8192
    assert context_length(GPT2Config(n_positions=2048)) == 2048
