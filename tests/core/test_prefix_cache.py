"""Prompt prefixes shared across requests (core.prefix_cache): the cache's own rules on real
tensors, then through the engine on a tiny real Llama with real LoRA adapters, where a
reused prefix changes no answer."""

from __future__ import annotations

import pytest

from ragtune.core.generation import GenerationEngine, GenRequest, Row
from ragtune.core.models import load_generator
from ragtune.core.prefix_cache import BLOCK, PrefixCache
from tests.helpers import make_lora_adapter

LAYERS, HEADS, DIM = 2, 1, 4


def _states(ids: list[int]) -> list[tuple[object, object]]:
    """Per layer, states whose values name their token (to check which ones came back)."""
    import torch

    t = torch.tensor(ids, dtype=torch.float32)[None, None, :, None].expand(1, HEADS, -1, DIM)
    return [(t.clone() + layer, -t.clone()) for layer in range(LAYERS)]


def _store(cache: PrefixCache, adapter: str | None, ids: list[int]) -> None:
    cache.store(adapter, ids, lambda: _states(ids))


def test_longest_whole_block_match_and_never_the_whole_prompt() -> None:
    cache = PrefixCache(1 << 20)
    seen = list(range(100, 100 + 3 * BLOCK + 5))
    _store(cache, None, seen)
    assert len(cache) == 3 and cache.nbytes > 0  # three whole blocks
    # shares 2 blocks + 3 tokens: 2 blocks come back, with the right states
    new = [*seen[: 2 * BLOCK + 3], 1, 2, 3]
    n, kv = cache.match(None, new)
    assert n == 2 * BLOCK and kv is not None
    assert kv[1][0][0, 0, :, 0].tolist() == [float(t + 1) for t in seen[: 2 * BLOCK]]
    # the same prompt again: at least one token is left to prefill (its logits)
    exact = seen[: 2 * BLOCK]
    assert cache.match(None, exact)[0] == BLOCK
    assert cache.match(None, [7] * 40) == (0, None)  # no shared block
    assert cache.match("other", new) == (0, None)  # states are per adapter
    assert cache.match(None, new, beyond=2 * BLOCK) == (0, None)  # not longer than the caller's
    assert (cache.stats.hits, cache.stats.misses) == (2, 3)
    assert cache.stats.reused_tokens == 3 * BLOCK


def test_prompts_that_share_a_beginning_share_its_blocks() -> None:
    cache = PrefixCache(1 << 20)
    shared = list(range(2 * BLOCK))
    one, two = [*shared, *[1] * (BLOCK + 1)], [*shared, *[2] * (BLOCK + 1)]
    _store(cache, None, one)
    calls = []

    def states() -> list[tuple[object, object]]:
        calls.append(1)
        return _states(two)

    cache.store(None, two, states)
    assert len(cache) == 4 and calls == [1]  # the two shared blocks are kept once
    cache.store(None, two[: 2 * BLOCK + 1], states)  # every block is kept: no states needed
    assert calls == [1]
    assert cache.match(None, [*two, 5])[0] == 3 * BLOCK
    assert cache.match(None, [*one, 5])[0] == 3 * BLOCK
    _store(cache, None, [8] * BLOCK)  # exactly one block: one token must stay to prefill
    assert len(cache) == 4


def test_lru_eviction_within_the_budget_takes_chain_ends_first_and_drop() -> None:
    one = PrefixCache(1 << 20)
    _store(one, None, list(range(BLOCK + 1)))
    block = one.nbytes
    cache = PrefixCache(3 * block)
    a = list(range(2 * BLOCK + 1))  # two blocks
    b, c, d = ([k] * (BLOCK + 1) for k in (7, 8, 9))
    _store(cache, None, a)
    _store(cache, None, b)
    _store(cache, None, c)  # over budget by a block: the oldest chain loses its last block
    assert cache.match(None, [*a, 0])[0] == BLOCK  # (a match refreshes what is left of a)
    _store(cache, None, d)  # b is now the least recent
    assert cache.match(None, [*b, 0])[0] == 0
    assert cache.match(None, [*c, 0])[0] == BLOCK and cache.match(None, [*d, 0])[0] == BLOCK
    assert cache.stats.evictions == 2 and cache.nbytes == 3 * block
    _store(cache, "x", [5] * (BLOCK + 1))
    cache.drop(None)
    assert len(cache) == 1 and cache.match("x", [5] * (BLOCK + 2))[0] == BLOCK
    assert not PrefixCache(0).enabled


# --- through the engine ---------------------------------------------------------------------
PASSAGES = [
    "the eiffel tower is in paris and it was built for the world fair of 1889",
    "python is a programming language that marie curie did not use",
]


def _prompts(tok: object) -> list[str]:
    from ragtune.core.prompts import render_prompt

    qs = ["where is the tower?", "when was it built?", "what is python?"]
    return [render_prompt(tok, q, PASSAGES) for q in qs]


@pytest.fixture
def engines(tiny_settings):
    make_lora_adapter(tiny_settings, "a", seed=1)
    cached = tiny_settings.model_copy(update={"prefix_cache_mb": 64.0})
    return (
        GenerationEngine(load_generator(cached), cached),
        GenerationEngine(load_generator(tiny_settings), tiny_settings),
    )


def test_a_shared_prefix_is_reused_and_changes_no_answer(engines) -> None:
    eng, plain = engines
    reqs = [GenRequest(p, a, 8) for p in _prompts(eng.tokenizer) for a in (None, "a")]
    want = [plain.generate_batch([r])[0].text for r in reqs]
    got = [eng.generate_batch([r])[0].text for r in reqs]  # one at a time: later ones hit
    assert got == want
    stats = eng.prefixes.stats
    assert stats.hits >= 4 and stats.reused_tokens >= 4 * BLOCK
    # per adapter, the prompts' shared beginnings (the passages) are kept once
    tok = eng.tokenizer
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in _prompts(tok)]
    assert len(eng.prefixes) < 2 * sum((n - 1) // BLOCK for n in lengths)
    # a batch that mixes hits (these prompts) and a miss (new passages), in one prefill
    from ragtune.core.prompts import render_prompt

    other = GenRequest(render_prompt(eng.tokenizer, "who?", ["a new passage"]), None, 8)
    mixed = [reqs[1], other, reqs[4]]
    assert [r.text for r in eng.generate_batch(mixed)] == [
        r.text for r in plain.generate_batch(mixed)
    ]


def test_a_hit_under_chunked_prefill_changes_no_answer(tiny_settings) -> None:
    settings = tiny_settings.model_copy(
        update={"prefix_cache_mb": 64.0, "prefill_chunk_tokens": 16}
    )
    eng = GenerationEngine(load_generator(settings), settings)
    plain = GenerationEngine(load_generator(tiny_settings), tiny_settings)
    reqs = [GenRequest(p, None, 6) for p in _prompts(eng.tokenizer)]
    for r in reqs:
        got: list[object] = []
        batch = eng.batch()
        batch.add([Row(r, got.append)])
        while len(batch):
            batch.step()
        assert got[0].text == plain.generate_batch([r])[0].text  # type: ignore[attr-defined]
    assert eng.prefixes.stats.hits >= 2


def test_unloading_an_adapter_forgets_its_prefixes(engines) -> None:
    eng, _ = engines
    reqs = [GenRequest(p, a, 2) for p in _prompts(eng.tokenizer)[:1] for a in (None, "a")]
    eng.generate_batch(reqs)
    assert {k[0] for k in eng.prefixes._blocks} == {None, "a"}
    eng.unload_adapter("a")  # a republished "a" must not reuse the old states
    assert {k[0] for k in eng.prefixes._blocks} == {None}


def test_the_counters_survive_an_emptied_cache(engines) -> None:
    """/metrics reads the counters even when no block is kept (an empty cache is falsy)."""
    from types import SimpleNamespace

    from ragtune.service.metrics import _AdapterCacheCollector

    eng, _ = engines
    eng.generate_batch([GenRequest(_prompts(eng.tokenizer)[0], "a", 2)])
    eng.prefixes.drop("a")
    eng.prefixes.drop(None)
    assert len(eng.prefixes) == 0 and eng.prefixes.stats.misses >= 1
    scraped = {
        s.name: s.value
        for family in _AdapterCacheCollector(SimpleNamespace(loaded_engine=eng)).collect()
        for s in family.samples
    }
    assert scraped["ragtune_prefix_cache_misses_total"] == eng.prefixes.stats.misses
