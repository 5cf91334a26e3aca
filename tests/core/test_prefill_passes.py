"""Prefill passes within a token budget (``prefill_batch_tokens``): the grouping rule, and on
a tiny real Llama with a LoRA adapter, the passes the model really runs, the answers (those of
one pass, and of each prompt alone) and a row's result coming before the later passes run."""

from __future__ import annotations

import pytest

from ragtune.core.generation import GenerationEngine, GenRequest, Row, prefill_passes
from ragtune.core.models import load_generator
from tests.helpers import make_lora_adapter

PROMPTS = [
    "paris is in",
    "the nile is a river in africa and one of the longest rivers in the world",
    "python is a",
    "marie curie won",
]


def test_passes_hold_prompts_in_order_within_the_budget():
    assert prefill_passes([10, 10, 10, 10], 40) == [[0, 1, 2, 3]]
    assert prefill_passes([10, 10, 10, 10], 39) == [[0, 1, 2], [3]]
    # padding counts: a long prompt makes the pass rows x its length
    assert prefill_passes([5, 30, 5, 5], 40) == [[0], [1], [2, 3]]
    assert prefill_passes([50, 3, 3], 40) == [[0], [1, 2]]  # over the budget: a pass alone
    assert prefill_passes([], 40) == []
    assert prefill_passes([7], 1) == [[0]]


class Passes:
    """The widths of the model's prefill passes (forward calls over more than one position)."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.widths: list[int] = []
        engine.gen.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs) -> None:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            self.widths.append(tuple(ids.shape))


def engine_with(tiny_settings, budget: int) -> GenerationEngine:
    settings = tiny_settings.model_copy(update={"prefill_batch_tokens": budget})
    return GenerationEngine(load_generator(settings), settings)


@pytest.fixture
def adapter(tiny_settings) -> str:
    make_lora_adapter(tiny_settings, "a", seed=1)
    return "a"


def test_a_burst_is_split_into_passes_with_the_same_answers(tiny_settings, adapter):
    reqs = [GenRequest(p, a, 6) for p in PROMPTS for a in (None, adapter)]
    wide, narrow = engine_with(tiny_settings, 4096), engine_with(tiny_settings, 32)
    lengths = [len(narrow.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in reqs]
    seen_wide, seen_narrow = Passes(wide), Passes(narrow)
    one_pass = [r.text for r in wide.generate_batch(reqs)]
    split = [r.text for r in narrow.generate_batch(reqs)]
    assert seen_wide.widths == [(len(reqs), max(lengths))]  # everything in one pass
    expected = [(len(p), max(lengths[j] for j in p)) for p in prefill_passes(lengths, 32)]
    assert seen_narrow.widths == expected and len(expected) > 2
    assert all(rows * width <= 32 or rows == 1 for rows, width in expected)
    assert split == one_pass
    assert split == [narrow.generate_batch([r])[0].text for r in reqs]  # and each alone


def test_a_row_gets_its_answer_before_the_later_passes_run(tiny_settings):
    eng = engine_with(tiny_settings, 16)
    passes = Passes(eng)
    when: dict[int, int] = {}  # row -> prefill passes run when its one-token answer came
    rows = [
        Row(GenRequest(p, None, 1), lambda _res, i=i: when.__setitem__(i, len(passes.widths)))
        for i, p in enumerate(PROMPTS)
    ]
    lengths = [len(eng.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    groups = prefill_passes(lengths, 16)
    batch = eng.batch()
    batch.add(rows)
    assert len(batch) == 0 and len(passes.widths) == len(groups) > 1
    assert when == {i: k + 1 for k, group in enumerate(groups) for i in group}
