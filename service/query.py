"""``POST /v1/query``: one question in ragtune's own terms (mode, adapter, index, top_k).

A body that names neither ``mode`` nor ``adapter`` gets the decision published for its index
(``service.decisions``), if there is one, else mode ``rag``; the answer's ``decision`` names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from ragtune.core.errors import RagtuneError
from ragtune.core.pipeline import QueryRequest
from ragtune.core.types import Answer
from ragtune.service.auth import SCOPE, principal_of, require_json
from ragtune.service.errors import log, problem_body, problem_responses
from ragtune.service.keys import QUERY
from ragtune.service.schemas import QueryBody, QueryResponse
from ragtune.service.sse import VisibleText, event, sse_response
from ragtune.service.state import Asked, Services

ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 415, 502, 503, 504)


def to_request(body: QueryBody) -> QueryRequest:
    return QueryRequest(
        question=body.question,
        mode=body.mode or "rag",
        adapter=body.adapter,
        index=body.index,
        top_k=body.top_k,
        retrieval=body.retrieval,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        contexts=tuple(body.contexts) if body.contexts is not None else None,
        filter=body.filter,
    )


def to_response(answer: Answer) -> QueryResponse:
    return msgspec.convert(answer.to_dict(), QueryResponse)


@post(
    "/v1/query",
    status_code=200,
    guards=[require_json],
    responses=ERRORS,
    tags=["query"],
    summary="Answer a question",
    opt={SCOPE: QUERY},
)
async def query(
    data: JSONBody[QueryBody], svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> QueryResponse:
    """Answer one question: retrieve (modes rag, hybrid), then generate with the base
    model (base, rag) or a named adapter (finetune, hybrid).

    A body without ``mode`` and ``adapter`` is answered with the decision published for its
    index (the measured winner's mode, adapter and retrieval settings; ``decision`` in the
    answer names it; 409 if that decision can no longer be served), else in mode ``rag``.

    With ``"stream": true`` the answer comes as server-sent events instead: ``token``
    events (``{"text": ...}``) as it is generated, then one ``answer`` event with the full
    response body above (sources included), or an ``error`` event with a problem body.
    """
    svc.check_chars(data.question, "question")
    decide = data.mode is None and data.adapter is None
    asked = svc.resolve(to_request(data), principal_of(request), decide=decide)
    if data.stream:
        return await _stream(asked, svc, request)  # type: ignore[return-value]
    return to_response(await svc.answer(asked, request.receive))


async def _stream(asked: Asked, svc: Services, request: Request[Any, Any, Any]) -> Stream:
    items = await svc.stream(asked, request.receive)  # errors before the first token: statuses

    async def events() -> AsyncIterator[bytes]:
        text = VisibleText()
        try:
            async for item in items:
                if isinstance(item, Answer):
                    yield event(to_response(item), "answer")
                elif delta := text.feed(item):
                    yield event({"text": delta}, "token")
        except RagtuneError as e:
            yield event(problem_body(e.status, e.message, title=e.title, field=e.field), "error")
        except Exception:
            log.exception("stream failed")
            yield event(problem_body(500, "internal error (logged on the server)"), "error")

    return sse_response(events())
