"""One prompt module: the string a model is trained on is the string it is served."""

from __future__ import annotations

import pytest

from core.models import load_generator
from core.prompts import render_prompt, render_training_example, template_id


def _check(tokenizer):
    q, a = "Where is the Eiffel Tower?", "Paris"
    for contexts in (None, ["The Eiffel Tower is in Paris.", "The Nile is a river."]):
        served = render_prompt(tokenizer, q, contexts, 200)
        ex = render_training_example(tokenizer, q, a, contexts, 200)
        assert ex.prompt == served
        assert ex.text.startswith(served)
        assert ex.completion.startswith(a)
        assert ex.completion.endswith(tokenizer.eos_token)
        assert ("Passages:" in served) == bool(contexts)


def test_training_prompt_equals_serving_prompt_tiny(tiny_settings):
    tok = load_generator(tiny_settings).tokenizer
    _check(tok)
    assert template_id(tok).startswith("ragtune-qa-v1:")


def test_long_passages_are_cut(tiny_settings):
    tok = load_generator(tiny_settings).tokenizer
    prompt = render_prompt(tok, "q?", ["word " * 500], max_context_chars=100)
    assert "word word" in prompt and prompt.count("word") < 30


@pytest.mark.slow
def test_training_prompt_equals_serving_prompt_smollm2(packaged_settings):
    from core.models import generator_folder, load_tokenizer

    tok = load_tokenizer(generator_folder(packaged_settings))
    _check(tok)
    assert "<|im_start|>assistant\n" in render_prompt(tok, "q?")


def test_clean_answer_keeps_the_short_answer():
    from core.prompts import clean_answer

    assert clean_answer("  Paris\nThe Eiffel Tower is in Paris.") == "Paris"
    assert clean_answer('"The tower is in Paris." Answer: Paris') == "Paris"
    assert clean_answer("") == ""
