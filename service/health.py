"""Liveness and readiness: the only routes that never need an API key."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from ragtune.service.auth import PUBLIC
from ragtune.service.schemas import Health, Readiness
from ragtune.service.state import Services


@get("/healthz", opt={PUBLIC: True}, sync_to_thread=False, tags=["health"])
def healthz() -> Health:
    """Alive: the process answers HTTP (models may still be loading)."""
    return Health(status="ok")


@get(
    "/readyz",
    opt={PUBLIC: True},
    tags=["health"],
    responses={503: ResponseSpec(data_container=Readiness, description="Not ready yet")},
)
async def readyz(svc: NamedDependency[Services]) -> Response[Readiness]:
    """Ready: the models and the default index are loaded, and with a generation server
    (``generator_backend = "openai"``) that server answers and serves the base model (503
    until then, with the reason). Published decisions are counted (ok / stale / broken, with
    the indexes of broken ones); a broken decision does not make the service unready, since
    every other request is served."""
    await svc.try_load_default_index()
    await svc.check_backend()
    state = msgspec.convert(svc.readiness(), Readiness)
    return Response(state, status_code=200 if state.status == "ready" else 503)
