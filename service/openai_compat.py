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
- Answers are the generation's first line (the QA span; generation stops there) or the whole
  text: the ``openai_answer`` setting, or the request's ``"ragtune": {"answer": "full"}``.
- ``model`` = ``decision:<index>`` asks for the decision published for that index: its mode,
  adapter and retrieval settings (``ragtune.decision`` in the response names the run).
  ``GET /v1/models`` lists one such model per live decision; adapter and decision cards carry
  an extra ``ragtune`` field (version; a RAFT adapter's index and how much it changed since;
  a decision's verdict figures and status).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from ragtune.core.errors import InvalidInput, ModelNotFound, RagtuneError, UnknownAdapter
from ragtune.core.models import locate_generator
from ragtune.core.pipeline import Prepared, QueryRequest
from ragtune.core.types import Answer, Mode
from ragtune.service.auth import SCOPE, principal_of, require_json
from ragtune.service.bindings import adapter_binding
from ragtune.service.bodies import is_plain
from ragtune.service.decision_cache import DECISION_MODEL_PREFIX
from ragtune.service.errors import log, problem_body, problem_responses
from ragtune.service.keys import QUERY, READ, Principal
from ragtune.service.schemas import (
    MAX_PROMPTS,
    NAME_PATTERN,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionBody,
    ChatMessage,
    Completion,
    CompletionBody,
    CompletionChoice,
    ModelCard,
    ModelInfo,
    ModelList,
    RagtuneInfo,
    RagtuneOptions,
    TimingsOut,
    Usage,
    sources_out,
)
from ragtune.service.sse import VisibleText, event, sse_response
from ragtune.service.state import Asked, Services

ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 415, 502, 503, 504)
DONE = b"data: [DONE]\n\n"
MAX_HISTORY_TURNS = 4  # earlier question/answer pairs of a chat that go into the prompt
_HAS_TEXT = re.compile(r"\S")  # what /schema's pattern for a question says too
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


def _cards(svc: Services, principal: Principal) -> list[ModelCard]:
    """The base model, the adapters and the decisions this key may use."""
    from ragtune.core.decisions import list_decisions
    from ragtune.service.decisions import decision_out

    base = base_model_id(svc)
    engine = svc.pipeline.loaded_engine
    context = engine.gen.context_length if engine is not None else None
    cards = [
        ModelCard(
            id=base,
            object="model",
            created=0,
            owned_by="ragtune",
            max_model_len=context,
            ragtune=ModelInfo(kind="base"),
        )
    ]
    for info in svc.pipeline.adapters.all():
        if not principal.may_adapter(info.name):
            continue
        cards.append(
            ModelCard(
                id=info.name,
                object="model",
                created=_created(info.created_at, info.path.stat().st_mtime),
                owned_by="ragtune",
                parent=base,
                ragtune=ModelInfo(
                    kind="adapter", version=info.version, index=adapter_binding(svc, info)
                ),
            )
        )
    for d in list_decisions(svc.settings)[0]:
        if not principal.may_index(d.index):
            continue
        cards.append(
            ModelCard(
                id=DECISION_MODEL_PREFIX + d.index,
                object="model",
                created=_created(d.published_at, 0),
                owned_by="ragtune",
                parent=base,
                ragtune=ModelInfo(kind="decision", decision=decision_out(svc, d)),
            )
        )
    return cards


@get("/v1/models", tags=["openai"], opt={SCOPE: READ}, responses=problem_responses(401, 403))
async def list_models(svc: NamedDependency[Services], request: Request[Any, Any, Any]) -> ModelList:
    """The base model, every adapter in the registry and every published decision
    (``decision:<index>``), each usable as ``model``; those this key may use."""
    principal = principal_of(request)
    return ModelList(object="list", data=await anyio.to_thread.run_sync(_cards, svc, principal))


@get(
    "/v1/models/{model:path}",
    tags=["openai"],
    opt={SCOPE: READ},
    responses=problem_responses(401, 403, 404),
)
async def retrieve_model(
    model: FromPath[str], svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> ModelCard:
    """One model card: the base model, an adapter or a decision (404 for any other id)."""
    model = model.lstrip("/")  # a path parameter keeps its leading slash
    if model == svc.settings.generator:  # the spec in the settings also names the base model
        model = base_model_id(svc)
    principal = principal_of(request)
    if model.startswith(DECISION_MODEL_PREFIX):
        index = model.removeprefix(DECISION_MODEL_PREFIX)
        if re.fullmatch(NAME_PATTERN, index):
            principal.require_index(index)
    elif re.fullmatch(NAME_PATTERN, model) and model != base_model_id(svc):
        principal.require_adapter(model)
    cards = await anyio.to_thread.run_sync(_cards, svc, principal)
    card = next((c for c in cards if c.id == model), None)
    if card is None:
        raise _model_not_found(model)
    return card


# --- request mapping ----------------------------------------------------------------------
def _model_not_found(model: str) -> ModelNotFound:
    """404 for a model id; an id that could not be an adapter name is not echoed (a message
    never rewrites the client's input)."""
    hint = "use the base model or an adapter from GET /v1/models"
    if not is_plain(model) or not re.fullmatch(NAME_PATTERN, model):
        return ModelNotFound(f"invalid model name: {hint}", field="model")
    return ModelNotFound(f"model {model!r} not found: {hint}", field="model")


def _resolve_model(svc: Services, model: str, principal: Principal) -> str | None:
    """The adapter named by ``model``, or None for the base model."""
    if model in (base_model_id(svc), svc.settings.generator):
        return None
    if not is_plain(model) or not re.fullmatch(NAME_PATTERN, model):
        raise _model_not_found(model)
    principal.require_adapter(model)  # before the lookup: a key learns nothing outside it
    try:
        svc.pipeline.adapters.get(model)
    except (UnknownAdapter, InvalidInput):
        raise _model_not_found(model) from None
    return model


def _decision_index(svc: Services, model: str) -> str | None:
    """The index of a ``decision:<index>`` model (404 unless it has a decision)."""
    if not model.startswith(DECISION_MODEL_PREFIX):
        return None
    index = model.removeprefix(DECISION_MODEL_PREFIX)
    if not re.fullmatch(NAME_PATTERN, index):
        raise _model_not_found(model)
    if svc.decisions.get(svc.settings, index) is None:
        raise ModelNotFound(
            f"model {model!r} not found: no decision is published for index {index!r}",
            field="model",
        )
    return index


# Options of the extra ``ragtune`` field that shape the answer, not retrieval.
ANSWER_OPTIONS = ("answer",)


def _wants_retrieval(opts: RagtuneOptions | None) -> bool:
    """Retrieval is on when the request has a ``ragtune`` field (``{}`` included), unless it
    says ``retrieval: none`` or holds answer options only."""
    if opts is None or opts.retrieval == "none":
        return False
    given = {f for f in opts.__struct_fields__ if getattr(opts, f) is not None}
    return opts.retrieval is not None or not given or bool(given - set(ANSWER_OPTIONS))


def _to_request(
    svc: Services,
    request: Request[Any, Any, Any],
    model: str,
    question: str,
    max_tokens: int | None,
    temperature: float | None,
    opts: RagtuneOptions | None,
    history: tuple[tuple[str, str], ...] = (),
) -> Asked:
    principal = principal_of(request)
    answer = (opts.answer if opts else None) or svc.settings.openai_answer
    index = _decision_index(svc, model)
    if index is not None:  # the decision says how: retrieval settings may still be given
        if opts and opts.retrieval == "none":
            raise InvalidInput(
                "a decision model answers as the decision says; to turn retrieval off, "
                "name the base model or an adapter",
                field="ragtune.retrieval",
            )
        if opts and opts.index and opts.index != index:
            raise InvalidInput(
                f"model {model!r} answers for index {index!r}; ragtune.index differs",
                field="ragtune.index",
            )
        req = QueryRequest(
            question=question,
            index=index,
            top_k=opts.top_k if opts else None,
            retrieval=opts.retrieval if opts else None,  # type: ignore[arg-type]
            max_new_tokens=max_tokens,
            temperature=temperature,
            history=history,
            answer=answer,
        )
        return svc.resolve(req, principal, decide=True, decision_index=index)
    adapter = _resolve_model(svc, model, principal)
    retrieval = _wants_retrieval(opts)
    mode = _MODES[(retrieval, adapter is not None)]
    req = QueryRequest(
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
        answer=answer,
    )
    return svc.resolve(req, principal)


def _check_lengths(svc: Services, messages: list[ChatMessage]) -> None:
    """Every message text within ``max_question_chars`` (as /schema says), whatever its role."""
    limit = svc.settings.max_question_chars
    for i, m in enumerate(messages):
        texts = [m.content] if isinstance(m.content, str) else []
        if isinstance(m.content, list):
            texts = [p.text for p in m.content if p.text is not None]
        if any(len(t) > limit for t in texts):
            raise InvalidInput(
                f"messages[{i}]: a message text is longer than {limit} characters",
                field=f"messages[{i}].content",
            )


def _check_max_tokens(svc: Services, **fields: int | None) -> None:
    """Both max_tokens and max_completion_tokens within the running limit, when given."""
    limit = svc.settings.max_new_tokens_limit
    for name, value in fields.items():
        if value is not None and value > limit:
            raise InvalidInput(f"{name} must be between 1 and {limit}", field=name)


@contextlib.contextmanager
def _openai_fields(question_field: str) -> Iterator[None]:
    """Name the OpenAI field at fault, not the internal one."""
    names = {
        "question": question_field,
        "history": "messages",
        "max_new_tokens": "max_tokens",
        "adapter": "model",
        "filter": "ragtune.filter",
    }
    try:
        yield
    except RagtuneError as e:
        if e.field in names:
            e.field = names[e.field]
            e.message = e.message.replace("max_new_tokens", "max_tokens")
        raise


def _text(m: ChatMessage) -> str:
    if isinstance(m.content, list):
        return "\n".join(p.text for p in m.content if p.type == "text" and p.text)
    return m.content or ""


def _conversation(messages: list[ChatMessage]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The last user message, and the (user, assistant) pairs before it, oldest first."""
    turns = [(m.role, _text(m)) for m in messages if m.role in ("user", "assistant")]
    last = max(
        (i for i, (role, text) in enumerate(turns) if role == "user" and _HAS_TEXT.search(text)),
        default=-1,
    )
    if last < 0:
        raise InvalidInput("messages must contain a user message with text", field="messages")
    pairs = [
        (q, a)
        for (r1, q), (r2, a) in itertools.pairwise(turns[:last])
        if r1 == "user" and r2 == "assistant" and q and a
    ]
    return turns[last][1], tuple(pairs[-MAX_HISTORY_TURNS:])


def _finish(answer: Answer) -> str:
    return answer.finish_reason


def _info(answer: Answer) -> RagtuneInfo:
    d = answer.to_dict()
    return RagtuneInfo(
        mode=answer.mode,
        adapter=answer.adapter,
        index=answer.index,
        index_version=answer.index_version,
        sources=sources_out(d),
        timings=TimingsOut(**d["timings"]),
        decision=answer.decision,
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
    opt={SCOPE: QUERY},
)
async def chat_completions(
    data: JSONBody[ChatCompletionBody],
    svc: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ChatCompletion:
    """OpenAI chat completion; ``model`` = base model or adapter; extra ``ragtune`` field
    switches retrieval on. ``stream: true`` answers with ``chat.completion.chunk`` events."""
    max_tokens = data.max_completion_tokens or data.max_tokens
    with _openai_fields("messages"):
        _check_max_tokens(
            svc, max_tokens=data.max_tokens, max_completion_tokens=data.max_completion_tokens
        )
        _check_lengths(svc, data.messages)
        question, history = _conversation(data.messages)
        asked = _to_request(
            svc, request, data.model, question, max_tokens, data.temperature, data.ragtune, history
        )
        if data.stream:
            usage = bool(data.stream_options and data.stream_options.include_usage)
            return await _stream(svc, asked, data.model, usage, request, chat=True)  # type: ignore[return-value]
        answer = await svc.answer(asked, request.receive)
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion",
        created=int(time.time()),
        model=data.model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(role="assistant", content=answer.answer),
                finish_reason=_finish(answer),  # type: ignore[arg-type]
            )
        ],
        usage=_usage([answer]),
        ragtune=_info(answer),
    )


# --- completions --------------------------------------------------------------------------
@post(
    "/v1/completions",
    status_code=200,
    guards=[require_json],
    responses=ERRORS,
    tags=["openai"],
    opt={SCOPE: QUERY},
)
async def completions(
    data: JSONBody[CompletionBody], svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> Completion:
    """OpenAI (legacy) completion: each prompt is answered as a question; a list of prompts
    is generated as one batch. ``stream: true`` takes a single prompt."""
    token_prompts = _token_prompts(data.prompt)
    if token_prompts is not None:
        return await _complete_tokens(data, token_prompts, svc, request)
    prompts = [data.prompt] if isinstance(data.prompt, str) else list(data.prompt)
    with _openai_fields("prompt"):
        if not all(isinstance(p, str) for p in prompts):
            raise InvalidInput(
                "prompt must be a string, a list of strings, a list of token ids or a list "
                "of token-id lists",
                field="prompt",
            )
        if len(prompts) > MAX_PROMPTS:
            raise InvalidInput(f"prompt holds more than {MAX_PROMPTS} questions", field="prompt")
        for p in prompts:
            svc.check_chars(p, "prompt")  # type: ignore[arg-type]
        reqs = [
            _to_request(
                svc,
                request,
                data.model,
                p,  # type: ignore[arg-type]
                data.max_tokens,
                data.temperature,
                data.ragtune,
            )
            for p in prompts
        ]
        if data.stream:
            if len(reqs) != 1:
                raise InvalidInput("stream takes a single prompt", field="prompt")
            usage = bool(data.stream_options and data.stream_options.include_usage)
            return await _stream(svc, reqs[0], data.model, usage, request, chat=False)  # type: ignore[return-value]
        answers = await svc.answer_many(reqs, request.receive)
    return _completion(data.model, answers)


def _completion(model: str, answers: list[Answer]) -> Completion:
    """A text completion response: one choice per answer, in order."""
    return Completion(
        id=f"cmpl-{uuid.uuid4().hex}",
        object="text_completion",
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(index=i, text=a.answer, finish_reason=_finish(a))  # type: ignore[arg-type]
            for i, a in enumerate(answers)
        ],
        usage=_usage(answers),
        ragtune=[_info(a) for a in answers],
    )


# --- token-id prompts (raw completions) ---------------------------------------------------------
def _token_prompts(prompt: Any) -> list[list[int]] | None:
    """The prompts as token-id lists when ``prompt`` holds token ids (one list of ints, or a
    list of such lists); None for text prompts. A mix is a 400."""
    if isinstance(prompt, str) or not prompt:
        return None
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    if all(isinstance(p, str) for p in prompt):
        return None
    raise InvalidInput(
        "prompt must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists (not a mix)",
        field="prompt",
    )


def _stops_at_newline(stop: str | list[str] | None) -> bool:
    """OpenAI's ``stop``, for token-id prompts: a newline ends the answer's first line."""
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    return "\n" in stops


async def _complete_tokens(
    data: CompletionBody,
    prompts: list[list[int]],
    svc: Services,
    request: Request[Any, Any, Any],
) -> Completion:
    """Complete prompts given as token ids, as they are: no template, no retrieval (vLLM's
    behaviour, and what a front ragtune sends its generation backend)."""
    if data.ragtune is not None:
        raise InvalidInput(
            "the ragtune field applies to text prompts; a token-id prompt is completed as it is",
            field="ragtune",
        )
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInput(f"prompt holds more than {MAX_PROMPTS} token-id lists", field="prompt")
    with _openai_fields("prompt"):
        adapter = _resolve_model(svc, data.model, principal_of(request))
    newline = _stops_at_newline(data.stop)

    def maker(ids: list[int]) -> Callable[[], Prepared]:
        def make() -> Prepared:
            with _openai_fields("prompt"):
                return svc.pipeline.prepare_raw(
                    ids, adapter, data.max_tokens, data.temperature, stop_at_newline=newline
                )

        return make

    makers = [maker(ids) for ids in prompts]
    if data.stream:
        if len(makers) != 1:
            raise InvalidInput("stream takes a single prompt", field="prompt")
        usage = bool(data.stream_options and data.stream_options.include_usage)
        items = await svc.stream_raw(makers[0], request.receive)
        return _stream_items(items, data.model, usage, chat=False, raw=newline)  # type: ignore[return-value]
    answers = await svc.answer_raw(makers, request.receive)
    return _completion(data.model, answers)


# --- streaming ----------------------------------------------------------------------------
async def _stream(
    svc: Services,
    asked: Asked,
    model: str,
    include_usage: bool,
    request: Request[Any, Any, Any],
    *,
    chat: bool,
) -> Stream:
    req = asked.request
    items = await svc.stream(asked, request.receive)  # errors before the first token: statuses
    return _stream_items(
        items, model, include_usage, chat=chat, first_line=req.answer == "first_line"
    )


def _stream_items(
    items: AsyncIterator[str | Answer],
    model: str,
    include_usage: bool,
    *,
    chat: bool,
    first_line: bool = False,
    raw: bool | None = None,
) -> Stream:
    """OpenAI chunks of a stream of text pieces and a final Answer. ``raw``: a token-id
    completion (the pieces as generated, cut at the first line's end when True)."""
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
        if raw is None:
            text = VisibleText(first_line=first_line)
        else:
            text = VisibleText(first_line=raw, keep_leading=True)
        if chat:
            first = chunk("")
            first["choices"][0]["delta"]["role"] = "assistant"
            yield event(first)
        try:
            async for item in items:
                if isinstance(item, Answer):
                    yield event(chunk(None, _finish(item), ragtune=_info(item)))
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
