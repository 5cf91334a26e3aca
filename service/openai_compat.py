"""OpenAI-compatible routes, so existing clients work unchanged.

- ``model`` names an adapter from the registry (as vLLM and LoRAX do) or the base model's id
  (``GET /v1/models`` lists both).
- Retrieval is off unless the request carries the extra field
  ``"ragtune": {"retrieval": "hybrid", "index": "docs", "top_k": 3}`` (with the official
  client: ``extra_body={"ragtune": {...}}``); then the answer is grounded on the retrieved
  passages (mode ``rag``, or ``hybrid`` with an adapter) and the response's extra
  ``ragtune`` field lists them. ``"filter": {...}`` in it restricts retrieval to chunks
  whose metadata match (``core.filters``).
- The question is the last user message (chat) or the prompt (completions); it is rendered
  with ragtune's own prompt template, the one adapters were trained on. In a chat, the
  earlier user/assistant pairs (the last ``MAX_HISTORY_TURNS``) go into the prompt as
  conversation turns; system and tool messages are not used (ragtune's own system prompt
  is the one adapters learned with). Retrieval searches with the last user message.
- ``stream: true`` answers with SSE in the OpenAI chunk format, ending with ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from ragtune.core.errors import InvalidInput, ModelNotFound, RagtuneError, UnknownAdapter
from ragtune.core.models import locate_generator
from ragtune.core.pipeline import QueryRequest
from ragtune.core.registry import get_adapter, list_adapters
from ragtune.core.types import Answer, Mode
from ragtune.service.auth import require_json
from ragtune.service.errors import log, problem_body, problem_responses
from ragtune.service.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionBody,
    ChatMessage,
    Completion,
    CompletionBody,
    CompletionChoice,
    ModelCard,
    ModelList,
    RagtuneInfo,
    RagtuneOptions,
    TimingsOut,
    Usage,
    sources_out,
)
from ragtune.service.sse import VisibleText, event, sse_response
from ragtune.service.state import Services

ERRORS = problem_responses(400, 401, 404, 409, 413, 415, 503, 504)
DONE = b"data: [DONE]\n\n"
MAX_HISTORY_TURNS = 4  # earlier question/answer pairs of a chat that go into the prompt
# (retrieval on, adapter named) -> mode
_MODES: dict[tuple[bool, bool], Mode] = {
    (False, False): "base",
    (False, True): "finetune",
    (True, False): "rag",
    (True, True): "hybrid",
}


# --- models -------------------------------------------------------------------------------
def base_model_id(svc: Services) -> str:
    return locate_generator(svc.settings.generator).model_id


def _created(created_at: str | None, fallback: float) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(str(created_at)).timestamp())
    except (TypeError, ValueError):
        return int(fallback)


@get("/v1/models", tags=["openai"], responses=problem_responses(401))
async def list_models(svc: NamedDependency[Services]) -> ModelList:
    """The base model and every adapter in the registry (each usable as ``model``)."""
    base = base_model_id(svc)
    cards = [ModelCard(id=base, object="model", created=0, owned_by="ragtune")]
    for info in list_adapters(svc.settings):
        cards.append(
            ModelCard(
                id=info.name,
                object="model",
                created=_created(info.created_at, info.path.stat().st_mtime),
                owned_by="ragtune",
                parent=base,
            )
        )
    return ModelList(object="list", data=cards)


# --- request mapping ----------------------------------------------------------------------
def _resolve_model(svc: Services, model: str) -> str | None:
    """The adapter named by ``model``, or None for the base model."""
    if model in (base_model_id(svc), svc.settings.generator):
        return None
    try:
        get_adapter(svc.settings, model)
    except (UnknownAdapter, InvalidInput):
        raise ModelNotFound(
            f"model {model!r} not found: use the base model or an adapter from GET /v1/models",
            field="model",
        ) from None
    return model


def _to_request(
    svc: Services,
    model: str,
    question: str,
    max_tokens: int | None,
    temperature: float | None,
    opts: RagtuneOptions | None,
    history: tuple[tuple[str, str], ...] = (),
) -> QueryRequest:
    adapter = _resolve_model(svc, model)
    retrieval = opts is not None and opts.retrieval != "none"
    mode = _MODES[(retrieval, adapter is not None)]
    return QueryRequest(
        question=question,
        mode=mode,
        adapter=adapter,
        index=opts.index if opts and retrieval else None,
        top_k=opts.top_k if opts and retrieval else None,
        retrieval=opts.retrieval if opts and retrieval else None,  # type: ignore[arg-type]
        filter=opts.filter if opts else None,
        max_new_tokens=max_tokens,
        temperature=temperature,
        history=history,
    )


@contextlib.contextmanager
def _openai_fields(question_field: str) -> Iterator[None]:
    """Name the OpenAI field at fault, not the internal one."""
    names = {
        "question": question_field,
        "max_new_tokens": "max_tokens",
        "adapter": "model",
        "filter": "ragtune.filter",
    }
    try:
        yield
    except RagtuneError as e:
        if e.field in names:
            e.field = names[e.field]
        raise


def _text(m: ChatMessage) -> str:
    if isinstance(m.content, list):
        return "\n".join(p.text for p in m.content if p.type == "text" and p.text)
    return m.content or ""


def _conversation(messages: list[ChatMessage]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The last user message, and the (user, assistant) pairs before it, oldest first."""
    turns = [(m.role, _text(m)) for m in messages if m.role in ("user", "assistant")]
    last = max((i for i, (role, text) in enumerate(turns) if role == "user" and text), default=-1)
    if last < 0:
        raise InvalidInput("messages must contain a user message with text", field="messages")
    pairs = [
        (q, a)
        for (r1, q), (r2, a) in itertools.pairwise(turns[:last])
        if r1 == "user" and r2 == "assistant" and q and a
    ]
    return turns[last][1], tuple(pairs[-MAX_HISTORY_TURNS:])


def _finish(answer: Answer, svc: Services, max_tokens: int | None) -> str:
    limit = max_tokens or svc.settings.max_new_tokens
    return "length" if answer.usage.completion_tokens >= limit else "stop"


def _info(answer: Answer) -> RagtuneInfo:
    d = answer.to_dict()
    return RagtuneInfo(
        mode=answer.mode,
        adapter=answer.adapter,
        index=answer.index,
        index_version=answer.index_version,
        sources=sources_out(d),
        timings=TimingsOut(**d["timings"]),
    )


def _usage(answers: list[Answer]) -> Usage:
    p = sum(a.usage.prompt_tokens for a in answers)
    c = sum(a.usage.completion_tokens for a in answers)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


# --- chat completions ---------------------------------------------------------------------
@post(
    "/v1/chat/completions",
    status_code=200,
    guards=[require_json],
    responses=ERRORS,
    tags=["openai"],
)
async def chat_completions(
    data: JSONBody[ChatCompletionBody], svc: NamedDependency[Services]
) -> ChatCompletion:
    """OpenAI chat completion; ``model`` = base model or adapter; extra ``ragtune`` field
    switches retrieval on. ``stream: true`` answers with ``chat.completion.chunk`` events."""
    max_tokens = data.max_completion_tokens or data.max_tokens
    with _openai_fields("messages"):
        question, history = _conversation(data.messages)
        req = _to_request(
            svc, data.model, question, max_tokens, data.temperature, data.ragtune, history
        )
        if data.stream:
            usage = bool(data.stream_options and data.stream_options.include_usage)
            return await _stream(svc, req, data.model, max_tokens, usage, chat=True)  # type: ignore[return-value]
        answer = await svc.answer(req)
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion",
        created=int(time.time()),
        model=data.model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(role="assistant", content=answer.answer),
                finish_reason=_finish(answer, svc, max_tokens),  # type: ignore[arg-type]
            )
        ],
        usage=_usage([answer]),
        ragtune=_info(answer),
    )


# --- completions --------------------------------------------------------------------------
@post("/v1/completions", status_code=200, guards=[require_json], responses=ERRORS, tags=["openai"])
async def completions(data: JSONBody[CompletionBody], svc: NamedDependency[Services]) -> Completion:
    """OpenAI (legacy) completion: each prompt is answered as a question; a list of prompts
    is generated as one batch. ``stream: true`` takes a single prompt."""
    prompts = [data.prompt] if isinstance(data.prompt, str) else list(data.prompt)
    with _openai_fields("prompt"):
        reqs = [
            _to_request(svc, data.model, p, data.max_tokens, data.temperature, data.ragtune)
            for p in prompts
        ]
        if data.stream:
            if len(reqs) != 1:
                raise InvalidInput("stream takes a single prompt", field="prompt")
            usage = bool(data.stream_options and data.stream_options.include_usage)
            return await _stream(svc, reqs[0], data.model, data.max_tokens, usage, chat=False)  # type: ignore[return-value]
        answers = await svc.answer_many(reqs)
    return Completion(
        id=f"cmpl-{uuid.uuid4().hex}",
        object="text_completion",
        created=int(time.time()),
        model=data.model,
        choices=[
            CompletionChoice(index=i, text=a.answer, finish_reason=_finish(a, svc, data.max_tokens))  # type: ignore[arg-type]
            for i, a in enumerate(answers)
        ],
        usage=_usage(answers),
        ragtune=[_info(a) for a in answers],
    )


# --- streaming ----------------------------------------------------------------------------
async def _stream(
    svc: Services,
    req: QueryRequest,
    model: str,
    max_tokens: int | None,
    include_usage: bool,
    *,
    chat: bool,
) -> Stream:
    items = await svc.stream(req)  # errors before the first token become statuses
    cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {} if delta is None else {"content": delta}
            choice: dict[str, Any] = {"index": 0, "delta": d}
        else:
            choice = {"index": 0, "text": delta or ""}
        choice |= {"logprobs": None, "finish_reason": finish}
        return {"id": cid, "object": kind, "created": created, "model": model} | {
            "choices": [choice],
            **extra,
        }

    async def events() -> AsyncIterator[bytes]:
        text = VisibleText()
        if chat:
            first = chunk("")
            first["choices"][0]["delta"]["role"] = "assistant"
            yield event(first)
        try:
            async for item in items:
                if isinstance(item, Answer):
                    yield event(chunk(None, _finish(item, svc, max_tokens), ragtune=_info(item)))
                    if include_usage:
                        usage = chunk(None) | {"choices": [], "usage": _usage([item])}
                        yield event(usage)
                elif delta := text.feed(item):
                    yield event(chunk(delta))
        except RagtuneError as e:
            yield event({"error": _error(e.status, e.message, e.field)})
        except Exception:
            log.exception("stream failed")
            yield event({"error": _error(500, "internal error (logged on the server)", None)})
        yield DONE

    return sse_response(events())


def _error(status: int, message: str, field: str | None) -> dict[str, Any]:
    body = problem_body(status, message, field=field)
    return {
        "message": body.detail,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": field,
        "code": status,
    }
