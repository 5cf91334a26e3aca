"""Continuous batching (core.decode through the engine) on a tiny real Llama and real LoRA
adapters: rows that join a running batch, leave it early or are cancelled get exactly the
tokens they would get alone, and exactly what transformers' own generate() gives."""

from __future__ import annotations

import pytest

from ragtune.core.errors import AdapterBusy, UnknownAdapter
from ragtune.core.generation import GenerationEngine, GenRequest, Row
from ragtune.core.models import load_generator
from tests.helpers import make_lora_adapter

PROMPTS = [
    "paris is in",
    "the nile is a river in africa and one of the longest rivers in the world",
    "python is a",
    "marie curie won",
]


@pytest.fixture
def engine(tiny_settings):
    make_lora_adapter(tiny_settings, "a", seed=1)
    make_lora_adapter(tiny_settings, "b", seed=2)
    return GenerationEngine(load_generator(tiny_settings), tiny_settings)


def alone(engine: GenerationEngine, req: GenRequest) -> str:
    return engine.generate_batch([req])[0].text


class Collect:
    """Results by row, as the batch hands them out."""

    def __init__(self) -> None:
        self.results: dict[int, object] = {}

    def row(self, i: int, req: GenRequest, **kw) -> Row:
        return Row(req, lambda res: self.results.__setitem__(i, res), **kw)


def test_greedy_matches_transformers_generate(engine):
    import torch

    tok, model = engine.tokenizer, engine.gen.model
    for prompt in PROMPTS:
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=engine._stops,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        new = [t for t in new if t not in engine._stops and t != tok.pad_token_id]
        expected = tok.decode(new, skip_special_tokens=True)
        assert alone(engine, GenRequest(prompt, None, 10)) == expected


def test_rows_joining_a_running_batch_get_their_own_answers(engine):
    reqs = [
        GenRequest(PROMPTS[0], None, 10),
        GenRequest(PROMPTS[1], "a", 8),  # longer prompt: the running rows get padded
        GenRequest(PROMPTS[2], "b", 3),  # leaves early
        GenRequest(PROMPTS[3], "a", 9),
    ]
    singles = [alone(engine, r) for r in reqs]
    got = Collect()
    batch = engine.batch()
    batch.add([got.row(0, reqs[0])])
    for _ in range(3):
        batch.step()
    batch.add([got.row(1, reqs[1]), got.row(2, reqs[2])])
    sizes = []
    for _ in range(2):
        batch.step()
        sizes.append(len(batch))
    batch.add([got.row(3, reqs[3])])
    while len(batch):
        sizes.append(len(batch))
        batch.step()
    assert [got.results[i].text for i in range(4)] == singles
    assert max(sizes) >= 3 and sizes[-1] < max(sizes)  # rows left as they finished
    # the adapters really changed the answers
    assert len({alone(engine, GenRequest(PROMPTS[0], a, 8)) for a in (None, "a", "b")}) > 1


def test_padding_is_dropped_when_the_long_row_leaves(engine):
    got = Collect()
    batch = engine.batch()
    batch.add([got.row(0, GenRequest(PROMPTS[0], None, 12))])
    batch.add([got.row(1, GenRequest(PROMPTS[1], None, 1))])  # done after its prefill
    state = batch._state
    assert len(batch) == 1 and 1 in got.results
    # the short row's padding for the long row's prompt is gone again
    assert int(state._mask[0].eq(0).sum()) == 0


def test_cancelled_rows_leave_and_free_their_adapter(engine):
    got = Collect()
    cancelled = {"flag": False}
    batch = engine.batch()
    batch.add(
        [
            got.row(0, GenRequest(PROMPTS[0], "a", 10), is_cancelled=lambda: cancelled["flag"]),
            got.row(1, GenRequest(PROMPTS[2], None, 6)),
        ]
    )
    batch.step()
    with pytest.raises(AdapterBusy):
        engine.unload_adapter("a")
    cancelled["flag"] = True
    batch.step()
    assert len(batch) == 1 and batch.adapters == set()
    assert engine.unload_adapter("a")  # no running row uses it any more
    while len(batch):
        batch.step()
    assert 0 not in got.results and got.results[1].text == alone(
        engine, GenRequest(PROMPTS[2], None, 6)
    )


def test_a_row_with_a_bad_adapter_fails_alone(engine):
    got = Collect()
    batch = engine.batch()
    batch.add(
        [got.row(0, GenRequest(PROMPTS[0], "missing", 4)), got.row(1, GenRequest(PROMPTS[0]))]
    )
    while len(batch):
        batch.step()
    assert isinstance(got.results[0], UnknownAdapter)
    assert got.results[1].text == alone(engine, GenRequest(PROMPTS[0]))
    with pytest.raises(UnknownAdapter):
        engine.generate_batch([GenRequest(PROMPTS[0], "missing", 4)])


def test_streamed_rows_batch_with_others(engine):
    pieces: list[str] = []
    got = Collect()
    batch = engine.batch()
    batch.add([got.row(0, GenRequest(PROMPTS[3], "b", 8), on_text=pieces.append)])
    batch.step()
    batch.add([got.row(1, GenRequest(PROMPTS[0], None, 8))])
    while len(batch):
        batch.step()
    assert "".join(pieces).strip() == got.results[0].text.strip()
    assert got.results[0].text == alone(engine, GenRequest(PROMPTS[3], "b", 8))


@pytest.mark.slow
def test_joining_rows_match_alone_on_the_real_model(packaged_settings):
    """SmolLM2 with a chat-templated prompt: continuous joins change no answer."""
    from ragtune.core.prompts import render_prompt

    eng = GenerationEngine(load_generator(packaged_settings), packaged_settings)
    qs = ["Where is the Eiffel Tower?", "List five fruits.", "Who wrote Hamlet?"]
    reqs = [GenRequest(render_prompt(eng.tokenizer, q), None, 12) for q in qs]
    singles = [alone(eng, r) for r in reqs]
    got = Collect()
    batch = eng.batch()
    for i, r in enumerate(reqs):
        batch.add([got.row(i, r)])
        batch.step()
        batch.step()
    while len(batch):
        batch.step()
    assert [got.results[i].text for i in range(3)] == singles
    assert eng.prefix_for(eng.tokenizer(reqs[0].prompt)["input_ids"]) > 10  # preamble cached
    assert singles[0] == _hf_greedy(eng, reqs[0].prompt, 12)


def _hf_greedy(engine: GenerationEngine, prompt: str, n: int) -> str:
    import torch

    tok, model = engine.tokenizer, engine.gen.model
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=engine._stops,
        )
    new = [t for t in out[0, enc["input_ids"].shape[1] :].tolist() if t not in engine._stops]
    return tok.decode(new, skip_special_tokens=True)


def test_cached_prompt_preamble_changes_no_answer(tiny_settings, engine):
    """Rendered prompts share a preamble whose states are cached per adapter; answers are
    those of a full prefill (an engine without the cache, and transformers' generate)."""
    from ragtune.core.prompts import render_prompt

    tok = engine.tokenizer
    prompts = [render_prompt(tok, "where is paris?"), render_prompt(tok, "who?", ["python is"])]
    reqs = [GenRequest(p, a, 8) for p in prompts for a in (None, "a", "b")]
    assert all(engine.prefix_for(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    reference = _hf_greedy(engine, prompts[0], 8)  # before any adapter is injected
    plain = GenerationEngine(load_generator(tiny_settings), tiny_settings)
    plain._prefix = ()  # no cache: every prompt is prefilled whole
    assert [r.text for r in engine.generate_batch(reqs)] == [
        r.text for r in plain.generate_batch(reqs)
    ]
    assert engine.generate_batch(reqs[:1])[0].text == reference
    assert set(engine._prefix_kv) == {None, "a", "b"}
    engine.unload_adapter("a")  # a republished "a" must not reuse the old states
    assert set(engine._prefix_kv) == {None, "b"}


def test_sampling_is_safe_at_extreme_temperatures():
    """A tiny temperature (the fuzzer sent 1e-300) is all but greedy, never NaN."""
    import torch

    from ragtune.core.decode import _pick

    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -50.0, 0.0], [0.0, 0.0, 0.0]])
    assert _pick(logits.clone(), [1e-300, 1e-300, 0.0]).tolist() == [1, 0, 0]
    torch.manual_seed(0)
    draws = {int(_pick(logits.clone(), [2.0, 0.0, 2.0])[2]) for _ in range(50)}
    assert draws == {0, 1, 2}  # a flat row samples every token


# --- chunked prefill -------------------------------------------------------------------------
LONG_PROMPT = " ".join(["the great wall of china was built over many centuries"] * 8)  # 80 tokens


def chunked(tiny_settings, chunk: int = 16) -> GenerationEngine:
    settings = tiny_settings.model_copy(update={"prefill_chunk_tokens": chunk})
    return GenerationEngine(load_generator(settings), settings)


class Prefills:
    """Counts the model's prefill passes (forward calls over more than one position)."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.widths: list[int] = []
        engine.gen.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs) -> None:
        width = kwargs["input_ids"].shape[1]
        if width > 1:
            self.widths.append(width)


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_answer(tiny_settings, engine):
    eng = chunked(tiny_settings)
    passes = Prefills(eng)
    req = GenRequest(LONG_PROMPT, None, 8)
    n = len(eng.tokenizer(LONG_PROMPT, add_special_tokens=False)["input_ids"])
    assert alone(eng, req) == alone(engine, req) == _hf_greedy(engine, LONG_PROMPT, 8)
    assert passes.widths == [16] * (n // 16) + ([n % 16] if n % 16 else [])
    passes.widths.clear()
    assert alone(eng, GenRequest(PROMPTS[0], None, 4))  # a short prompt: one pass, as before
    assert passes.widths == [len(eng.tokenizer(PROMPTS[0])["input_ids"])]


def test_a_short_request_is_served_between_the_chunks_of_a_long_one(tiny_settings, engine):
    eng = chunked(tiny_settings)
    got = Collect()
    batch = eng.batch()
    batch.add([got.row(0, GenRequest(LONG_PROMPT, "a", 4))])
    batch.step()  # the first chunk of the long prompt
    assert len(batch) == 1 and batch.prefilling == 1 and batch.adapters == {"a"}
    with pytest.raises(AdapterBusy):  # a prefilling row holds its adapter too
        eng.unload_adapter("a")
    batch.add([got.row(1, GenRequest(PROMPTS[2], None, 2))])  # prefilled at once
    while 1 not in got.results:
        batch.step()
    assert 0 not in got.results and batch.prefilling == 1  # the long one is still prefilling
    while len(batch):
        batch.step()
    assert got.results[0].text == alone(eng, GenRequest(LONG_PROMPT, "a", 4))
    assert got.results[1].text == alone(eng, GenRequest(PROMPTS[2], None, 2))


def test_a_cancelled_long_prompt_stops_within_a_chunk_and_frees_its_cache(tiny_settings, engine):
    eng = chunked(tiny_settings)
    passes = Prefills(eng)
    got, cancelled = Collect(), {"flag": False}
    batch = eng.batch()
    batch.add([got.row(0, GenRequest(LONG_PROMPT, "a", 4), is_cancelled=lambda: cancelled["flag"])])
    batch.step()
    assert batch.cache_bytes() > 0 and passes.widths == [16]
    cancelled["flag"] = True
    batch.step()
    assert len(batch) == 0 and batch.cache_bytes() == 0 and passes.widths == [16]
    assert 0 not in got.results and eng.unload_adapter("a")  # the adapter is free again


# --- where an answer ends --------------------------------------------------------------------
def test_a_row_that_should_stop_at_a_newline_ends_with_its_first_line(engine):
    """The pipeline keeps an answer's first line, so generation stops when it has ended
    (a leading blank line does not count); finish_reason says why a row ended."""
    from ragtune.core.decode import DecodeState

    tok = engine.tokenizer
    tok.add_tokens(["\n"])  # the tiny word-level vocabulary has no newline of its own
    nl = tok.convert_tokens_to_ids("\n")
    word = tok.convert_tokens_to_ids("paris")
    results: list[object] = []

    def state_with(req: GenRequest) -> DecodeState:
        state = DecodeState(tok, engine._stops)
        state.rows.append(Row(req, results.append))
        return state

    state = state_with(GenRequest("q", None, 10, stop_at_newline=True))
    for token in (nl, word, word):  # a leading newline, then the answer
        assert state._advance([token], 0) == []
    assert [r.finish_reason for r in state._advance([nl], 0)] == ["stop"]
    assert results[-1].completion_tokens == 4 and results[-1].finish_reason == "stop"
    assert results[-1].text.strip() == "paris paris"

    state = state_with(GenRequest("q", None, 10))  # not asked to stop: runs on
    assert state._advance([word], 0) == [] and state._advance([nl], 0) == []
    state = state_with(GenRequest("q", None, 2, stop_at_newline=True))
    state._advance([word], 0)
    assert [r.finish_reason for r in state._advance([word], 0)] == ["length"]
    state = state_with(GenRequest("q", None, 5, stop_at_newline=True))
    assert [r.finish_reason for r in state._advance([engine._stops[0]], 0)] == ["stop"]
