"""Adapter routes: list the registry, load one into memory, unload one.

The registry is read from disk on every call, so an adapter the tuner publishes while the
service runs is listed and usable at once. At most ``max_loaded_adapters`` stay in memory;
loading one more evicts the least recently used (the response says which).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from ragtune.core.index_store import validate_name
from ragtune.service import own_thread
from ragtune.service.auth import SCOPE, principal_of
from ragtune.service.bindings import adapter_binding
from ragtune.service.errors import problem_responses
from ragtune.service.keys import MANAGE_ADAPTERS, READ
from ragtune.service.schemas import (
    NAME_PATTERN,
    AdapterAction,
    AdapterList,
    AdapterOut,
    AdapterStatsOut,
)
from ragtune.service.state import Services

# The schema states the name rule, so a client learns it before sending (400 otherwise).
AdapterName = Annotated[
    str, Parameter(pattern=NAME_PATTERN, max_length=64, description="An adapter's name")
]


@get("/v1/adapters", tags=["adapters"], opt={SCOPE: READ}, responses=problem_responses(401, 403))
async def adapters_list(
    svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> AdapterList:
    """Every adapter in the registry (that this key may use), which ones are in memory, the
    cache counters, and for a RAFT adapter the index it was trained on and how much of it
    changed since."""
    principal = principal_of(request)
    engine = svc.pipeline.engine if svc.pipeline.models_loaded else None
    loaded = [n for n in (engine.loaded_adapters() if engine else []) if principal.may_adapter(n)]
    stats = engine.stats if engine else None

    def rows() -> list[AdapterOut]:
        return [
            AdapterOut(
                name=a.name,
                loaded=a.name in loaded,
                method=a.method,
                base_model=a.base_model,
                created_at=a.created_at,
                version=a.version,
                index=adapter_binding(svc, a),
            )
            for a in svc.pipeline.adapters.all()
            if principal.may_adapter(a.name)
        ]

    return AdapterList(
        adapters=await anyio.to_thread.run_sync(rows),
        loaded=loaded,
        max_loaded=svc.settings.max_loaded_adapters,
        stats=AdapterStatsOut(
            hits=stats.hits if stats else 0,
            misses=stats.misses if stats else 0,
            evictions=stats.evictions if stats else 0,
        ),
    )


@post(
    "/v1/adapters/{name:str}/load",
    status_code=200,
    tags=["adapters"],
    opt={SCOPE: MANAGE_ADAPTERS},
    responses=problem_responses(400, 401, 403, 404, 409, 502, 503, 504),
)
async def adapters_load(
    name: AdapterName, svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> AdapterAction:
    """Load an adapter into memory now (its first request then skips the load). If the
    registry holds a newer version than the one in memory, the new one replaces it."""
    validate_name(name, "adapter")
    principal_of(request).require_adapter(name)
    info = svc.pipeline.adapters.get(name)

    def load() -> tuple[list[str], list[str]]:
        engine = svc.pipeline.engine
        before = engine.loaded_adapters()
        if name in before:
            if engine.load_adapter(name).manifest == info.manifest:  # a hit: now most recent
                return before, engine.loaded_adapters()
            engine.unload_adapter(name)  # republished under the same name: take the new one
        engine.load_adapter(name)
        return before, engine.loaded_adapters()

    before, after = await own_thread.run_sync(load)
    return AdapterAction(
        name=name,
        loaded=True,
        loaded_adapters=after,
        evicted=[n for n in before if n not in after],
    )


@delete(
    "/v1/adapters/{name:str}",
    status_code=200,
    tags=["adapters"],
    opt={SCOPE: MANAGE_ADAPTERS},
    responses=problem_responses(400, 401, 403, 404, 409, 502, 503, 504),
)
async def adapters_unload(
    name: AdapterName, svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> AdapterAction:
    """Drop an adapter from memory (it stays in the registry and loads again on use)."""
    validate_name(name, "adapter")
    principal_of(request).require_adapter(name)
    engine = svc.pipeline.engine if svc.pipeline.models_loaded else None
    if engine is None or name not in engine.loaded_adapters():
        svc.pipeline.adapters.get(name)  # 404 when it is not in the registry either
        return AdapterAction(
            name=name,
            loaded=False,
            loaded_adapters=engine.loaded_adapters() if engine else [],
        )
    await own_thread.run_sync(engine.unload_adapter, name)
    return AdapterAction(name=name, loaded=False, loaded_adapters=engine.loaded_adapters())
