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


# --- parity: models.retrieve, input never rewritten, limits, where answers end --------------
def test_models_retrieve_with_the_official_client(oai, svc_settings):
    base = oai.models.retrieve(base_id(svc_settings))
    assert (base.id, base.object, base.owned_by) == (base_id(svc_settings), "model", "ragtune")
    adapter = oai.models.retrieve("alpha")
    assert adapter.id == "alpha" and adapter.model_extra["parent"] == base.id
    for unknown in ("no-such-model", "org/model", "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as e:
            oai.models.retrieve(unknown)
        assert e.value.body["param"] == "model"


def test_error_messages_never_rewrite_the_clients_input(oai, server):
    import httpx

    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(
            model="../../etc/passwd", messages=[{"role": "user", "content": "hi"}]
        )
    message = e.value.body["message"]
    assert message.startswith("invalid model name") and "<path>" not in message
    assert "etc" not in message
    with pytest.raises(openai.NotFoundError) as e:  # a plain name is echoed exactly
        oai.chat.completions.create(
            model="no-such.model", messages=[{"role": "user", "content": "q"}]
        )
    assert "'no-such.model' not found" in e.value.body["message"]
    with httpx.Client(base_url=server) as c:
        r = c.post("/v1/query", content=b'{"question": "q"}', headers={"content-type": "text/etc"})
        assert r.status_code == 415 and "<path>" not in r.text and "etc" not in r.json()["detail"]
        r = c.post("/v1/query", json={"question": "q", "/etc/passwd": 1})
        assert r.status_code == 400 and "<path>" not in r.text
        assert r.json()["detail"] == "the body has an unknown field"
        r = c.post("/v1/query", json={"question": "q", "surprise": 1})
        assert r.json()["detail"] == "unknown field 'surprise'"


def test_every_message_and_token_limit_is_checked(oai, svc_settings):
    limit = svc_settings.max_question_chars
    too_long = {"role": "system", "content": "x" * (limit + 1)}
    with pytest.raises(openai.BadRequestError) as e:  # whatever the role
        oai.chat.completions.create(
            model="alpha", messages=[too_long, {"role": "user", "content": "q"}]
        )
    assert e.value.body["param"] == "messages[0].content"
    parts = [{"type": "text", "text": "x" * (limit + 1)}]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="alpha", messages=[{"role": "user", "content": parts}])
    assert e.value.body["param"] == "messages[0].content"
    with pytest.raises(openai.BadRequestError) as e:  # both token fields, not just the one used
        oai.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "q"}],
            max_completion_tokens=4,
            max_tokens=svc_settings.max_new_tokens_limit + 1,
        )
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="alpha", prompt=["q", "x" * (limit + 1)])
    assert e.value.body["param"] == "prompt"


def test_a_chat_history_over_the_token_budget_is_400_on_messages(oai, svc_settings):
    turn = "a " * 1500  # within max_question_chars (4000); 1500 tokens each
    messages = [
        {"role": "user", "content": turn},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and then?"},
    ]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="alpha", messages=messages, max_tokens=4)
    assert e.value.body["param"] == "messages" and "tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # the field names are OpenAI's
        oai.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "a " * 900}], max_tokens=300
        )
    assert e.value.body["param"] == "max_tokens" and "max_tokens is 300" in e.value.body["message"]


def test_finish_reason_and_the_answer_option(oai, svc_settings):
    """The tiny model never ends a turn by itself: every answer runs to max_tokens."""
    q = [{"role": "user", "content": "Where is the Nile?"}]
    r = oai.chat.completions.create(model="alpha", messages=q, max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    # ragtune.answer alone leaves retrieval off; whole answers are the stripped text
    full = oai.chat.completions.create(
        model="alpha", messages=q, max_tokens=5, extra_body={"ragtune": {"answer": "full"}}
    )
    assert full.model_extra["ragtune"]["mode"] == "finetune"
    assert full.choices[0].message.content == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="alpha", messages=q, extra_body={"ragtune": {"answer": "everything"}}
        )
    assert e.value.body["param"] == "ragtune.answer"
