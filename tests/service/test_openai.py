"""The OpenAI-compatible routes, driven by the official ``openai`` client over real HTTP."""

from __future__ import annotations

import openai
import pytest

from ragtune.core.models import locate_generator


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def base_id(settings):
    return locate_generator(settings.generator).model_id


def test_models_lists_base_and_every_adapter(oai, svc_settings):
    ids = [m.id for m in oai.models.list()]
    assert ids == [base_id(svc_settings), "alpha"]


def test_chat_with_base_model_and_adapter(oai, svc_settings):
    messages = [
        {"role": "system", "content": "ignored: ragtune renders its own prompt"},
        {"role": "user", "content": "Where is the Nile?"},
    ]
    base = oai.chat.completions.create(model=base_id(svc_settings), messages=messages, max_tokens=5)
    assert base.object == "chat.completion"
    assert base.choices[0].message.role == "assistant"
    assert base.choices[0].finish_reason in ("stop", "length")
    assert 0 < base.usage.completion_tokens <= 5
    assert base.model_extra["ragtune"]["mode"] == "base"
    tuned = oai.chat.completions.create(model="alpha", messages=messages, max_tokens=5)
    assert tuned.model_extra["ragtune"]["mode"] == "finetune"
    assert tuned.model_extra["ragtune"]["adapter"] == "alpha"


def test_chat_with_retrieval_via_extra_field(oai):
    r = oai.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
        max_tokens=4,
        extra_body={"ragtune": {"retrieval": "hybrid", "index": "default", "top_k": 2}},
    )
    info = r.model_extra["ragtune"]
    assert info["mode"] == "hybrid" and info["index"] == "default"
    assert len(info["sources"]) == 2 and info["sources"][0]["text"]


def test_chat_stream_in_openai_chunks(oai, svc_settings):
    kwargs = {
        "model": base_id(svc_settings),
        "messages": [{"role": "user", "content": "Who created Python?"}],
        "max_tokens": 6,
    }
    full = oai.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        oai.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_batch_and_stream(oai, svc_settings):
    r = oai.completions.create(
        model="alpha", prompt=["Where is Paris?", "What is the Nile?"], max_tokens=4
    )
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    stream = oai.completions.create(
        model=base_id(svc_settings),
        prompt="Where is Paris?",
        max_tokens=4,
        stream=True,
        extra_body={"ragtune": {"retrieval": "bm25", "top_k": 1}},
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["ragtune"]["mode"] == "rag"


def test_errors_reach_the_client_as_openai_errors(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.body["param"] == "model" or e.value.body.get("field") == "model"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=100000
        )
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model="alpha", messages=[{"role": "system", "content": "no user turn"}]
        )
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"ragtune": {"index": "missing"}},
        )


def test_chat_history_goes_into_the_prompt(oai, svc_settings):
    """Earlier user/assistant pairs are conversation turns; system messages are not used."""
    last = {"role": "user", "content": "And where is the Nile?"}
    turns = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "Where is the Eiffel Tower?"},
        {"role": "assistant", "content": "Paris"},
    ]
    model = base_id(svc_settings)
    alone = oai.chat.completions.create(model=model, messages=[last], max_tokens=3)
    system_only = oai.chat.completions.create(model=model, messages=[turns[0], last], max_tokens=3)
    chat = oai.chat.completions.create(model=model, messages=[*turns, last], max_tokens=3)
    assert system_only.usage.prompt_tokens == alone.usage.prompt_tokens
    assert chat.usage.prompt_tokens > alone.usage.prompt_tokens


def test_conversation_pairs_questions_with_answers():
    from ragtune.service.openai_compat import MAX_HISTORY_TURNS, _conversation
    from ragtune.service.schemas import ChatMessage

    def msgs(*pairs):
        return [ChatMessage(role=r, content=c) for r, c in pairs]

    q, hist = _conversation(
        msgs(("system", "s"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    )
    assert (q, hist) == ("q2", (("q1", "a1"),))
    # a user turn without an answer, and tool messages, are left out
    q, hist = _conversation(
        msgs(("user", "q1"), ("user", "q2"), ("tool", "t"), ("assistant", "a2"), ("user", "q3"))
    )
    assert (q, hist) == ("q3", (("q2", "a2"),))
    many = [("user", f"q{i}") if i % 2 == 0 else ("assistant", f"a{i}") for i in range(20)]
    q, hist = _conversation(msgs(*many, ("user", "last")))
    assert q == "last" and len(hist) == MAX_HISTORY_TURNS and hist[-1] == ("q18", "a19")
    with pytest.raises(Exception, match="user message"):
        _conversation(msgs(("system", "s"), ("assistant", "a")))
