"""One prompt module: the string a model is trained on is the string it is served."""

from __future__ import annotations

import pytest

from ragtune.core.models import load_generator
from ragtune.core.prompts import render_prompt, render_training_example, template_id


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
    from ragtune.core.models import generator_folder, load_tokenizer

    tok = load_tokenizer(generator_folder(packaged_settings))
    _check(tok)
    assert "<|im_start|>assistant\n" in render_prompt(tok, "q?")


def test_clean_answer_keeps_the_short_answer():
    from ragtune.core.prompts import clean_answer

    assert clean_answer("  Paris\nThe Eiffel Tower is in Paris.") == "Paris"
    assert clean_answer('"The tower is in Paris." Answer: Paris') == "Paris"
    assert clean_answer("") == ""


def test_chat_history_turns_and_the_shared_preamble(tiny_settings):
    from ragtune.core.prompts import shared_prefix_ids

    tok = load_generator(tiny_settings).tokenizer
    plain = render_prompt(tok, "Where is the Nile?", ["The Nile is in Africa."])
    assert render_prompt(tok, "Where is the Nile?", ["The Nile is in Africa."], history=()) == plain
    chat = render_prompt(
        tok,
        "Where is the Nile?",
        ["The Nile is in Africa."],
        history=[("Where is Paris?", "France")],
    )
    assert chat.index("Where is Paris?") < chat.index("France") < chat.index("Where is the Nile?")
    assert chat.count("Passages:") == 1  # earlier turns are closed-book questions
    prefix = shared_prefix_ids(tok)
    assert len(prefix) > 5
    for text in (plain, chat, render_prompt(tok, "q?")):
        assert tok(text, add_special_tokens=False)["input_ids"][: len(prefix)] == prefix
