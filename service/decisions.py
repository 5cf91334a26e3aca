"""Published decisions in the service: applied to requests, listed, published, removed.

A request to an index with a decision (``core.decisions``) that names no mode and no adapter
(``POST /v1/query``), or whose ``model`` is ``decision:<index>`` (the OpenAI routes), is
answered with the decision's mode, adapter and retrieval settings; its answer names the
decision (``decision``: the run id). A request that names its mode or adapter is answered as
it asks. A decision that can no longer be served (its adapter or index removed) is a 409
naming it for the requests that rely on it, and is reported by ``GET /v1/decisions`` and
``/readyz``; ragtune never silently falls back to an answer nobody measured.

Routes: ``GET /v1/decisions`` (scope ``read``: the decisions of the indexes a key may use,
with their verdict figures and status), ``POST /v1/decisions/{index}/publish`` with
``{"run": ID}`` (publish a run from the runs folder) and ``DELETE /v1/decisions/{index}``
(both scope ``decisions:manage``).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from ragtune.core.decisions import (
    Decision,
    decision_from_run,
    decision_status,
    list_decisions,
    publish_decision,
    remove_decision,
    run_folder,
)
from ragtune.core.index_store import validate_name
from ragtune.service.auth import SCOPE, principal_of, require_json
from ragtune.service.decision_cache import DECISION_MODEL_PREFIX
from ragtune.service.errors import log, problem_responses
from ragtune.service.keys import MANAGE_DECISIONS, READ, Principal
from ragtune.service.schemas import (
    NAME_PATTERN,
    DecisionList,
    DecisionOut,
    DecisionRemoved,
    PublishBody,
)
from ragtune.service.state import Services

IndexName = Annotated[
    str, Parameter(pattern=NAME_PATTERN, max_length=64, description="An index's name")
]


def decision_out(svc: Services, d: Decision) -> DecisionOut:
    st = decision_status(svc.settings, d)
    v = d.verdict
    return DecisionOut(
        index=d.index,
        run=d.run,
        published_at=d.published_at,
        status=st.status,
        problems=st.problems,
        notes=st.notes,
        mode=d.mode,
        adapter=d.adapter,
        adapter_version=d.adapter_version,
        adapter_version_now=st.adapter_version_now,
        index_version=d.index_version,
        index_version_now=st.index_version_now,
        serving_index=d.serving_index,
        top_k=d.top_k,
        retrieval=d.retrieval,
        winner=v.winner,
        f1=v.f1.model_dump(),
        em=v.em,
        n=v.n,
        runner_up=v.runner_up,
        margin=v.margin.model_dump() if v.margin else None,
        verdict=v.text,
        picked=d.selection.model_dump() if d.selection else None,
        changes=st.changes,
        model=DECISION_MODEL_PREFIX + d.index,
    )


def _visible(principal: Principal, d: Decision) -> bool:
    return principal.may_index(d.index)


@get("/v1/decisions", tags=["decisions"], opt={SCOPE: READ}, responses=problem_responses(401, 403))
async def decisions_list(
    svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> DecisionList:
    """The published decisions (of the indexes this key may use), each with its verdict
    figures and whether it still holds: ``ok``, ``stale`` (the index changed or the adapter
    was retrained since: served, but not what was measured) or ``broken`` (cannot be served)."""
    principal = principal_of(request)

    def build() -> DecisionList:
        found, problems = list_decisions(svc.settings)
        out = [decision_out(svc, d) for d in found if _visible(principal, d)]
        broken = []
        for e in problems:  # an unreadable file is reported, never dropped
            log.error("decision file: %s", e.message)
            index = e.path.rsplit("/", 1)[-1].removesuffix(".json") if e.path else "?"
            if principal.may_index(index):
                broken.append(index)
        return DecisionList(decisions=out, unreadable=broken)

    return await anyio.to_thread.run_sync(build)


@post(
    "/v1/decisions/{index:str}/publish",
    status_code=200,
    tags=["decisions"],
    guards=[require_json],
    opt={SCOPE: MANAGE_DECISIONS},
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415),
)
async def decisions_publish(
    index: IndexName,
    data: JSONBody[PublishBody],
    svc: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> DecisionOut:
    """Publish the winner of run ``run`` (a folder of the server's runs folder) as the
    decision for ``index``; refused (409) when its adapter or index version no longer exists
    or was retrained since it was measured."""
    validate_name(index)
    principal_of(request).require_index(index)

    def publish() -> Decision:
        d = decision_from_run(svc.settings, run_folder(svc.settings, data.run), index)
        publish_decision(svc.settings, d)
        return d

    d = await anyio.to_thread.run_sync(publish)
    log.info("decision for index %s: run %s (%s)", d.index, d.run, d.verdict.winner)
    return decision_out(svc, d)


@delete(
    "/v1/decisions/{index:str}",
    status_code=200,
    tags=["decisions"],
    opt={SCOPE: MANAGE_DECISIONS},
    responses=problem_responses(400, 401, 403, 404),
)
async def decisions_remove(
    index: IndexName, svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> DecisionRemoved:
    """Remove the decision for ``index``: its requests go back to the defaults."""
    validate_name(index)
    principal_of(request).require_index(index)
    old = remove_decision(svc.settings, index)
    return DecisionRemoved(index=index, run=old.run if old else None, removed=True)
