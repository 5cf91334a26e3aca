"""The app factory: ``create_app(settings, pipeline=None)``.

Settings are built at the edge (``ragtune serve``) and passed in; the lifespan starts the
batching scheduler and loads the models in the background, and on shutdown lets queued
requests finish before the worker stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from ragtune.core.config import Settings
from ragtune.core.pipeline import Pipeline
from ragtune.service import adapters, decisions, health, lora_api, openai_compat, query
from ragtune.service.auth import require_api_key
from ragtune.service.bodies import StrictRequest
from ragtune.service.errors import EXCEPTION_HANDLERS
from ragtune.service.metrics import MetricsMiddleware, metrics_endpoint
from ragtune.service.openapi import tighten_openapi
from ragtune.service.state import Services

OPENAPI_PATH = "/schema"  # the document is at /schema/openapi.json


def _version() -> str:
    try:
        return version("ragtune")
    except PackageNotFoundError:
        return "0.0.0"


def _provide_services(state: State) -> Services:
    return state.services


def create_app(settings: Settings, pipeline: Pipeline | None = None) -> Litestar:
    """Build the Litestar app around one Pipeline (created lazily from ``settings`` if None)."""
    services = Services.build(settings, pipeline)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    secured = services.keys.enabled()
    app = Litestar(
        route_handlers=[
            health.healthz,
            health.readyz,
            metrics_endpoint,
            query.query,
            openai_compat.list_models,
            openai_compat.retrieve_model,
            openai_compat.chat_completions,
            openai_compat.completions,
            adapters.adapters_list,
            adapters.adapters_load,
            adapters.adapters_unload,
            lora_api.load_lora_adapter,
            lora_api.unload_lora_adapter,
            decisions.decisions_list,
            decisions.decisions_publish,
            decisions.decisions_remove,
        ],
        state=State({"services": services}),
        dependencies={"svc": Provide(_provide_services, sync_to_thread=False)},
        guards=[require_api_key],
        middleware=[DefineMiddleware(MetricsMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        request_class=StrictRequest,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="ragtune",
            version=_version(),
            description="Retrieval, fine-tuned adapters, or both: ask a question, get an "
            "answer with its sources. OpenAI-compatible routes under /v1.",
            path=OPENAPI_PATH,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
                if secured
                else None
            ),
            security=[{"bearer": []}] if secured else None,
        ),
        debug=False,
    )
    tighten_openapi(app, settings)
    return app
