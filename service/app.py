"""The app factory: ``create_app(settings, pipeline=None)``.

Settings are built at the edge (``ragtune serve``) and passed in; the lifespan starts the
batching scheduler and loads the models in the background, and on shutdown lets queued
requests finish before the worker stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from ragtune.core.config import Settings
from ragtune.core.pipeline import Pipeline
from ragtune.service import adapters, health, openai_compat, query
from ragtune.service.auth import require_api_key
from ragtune.service.errors import EXCEPTION_HANDLERS
from ragtune.service.metrics import MetricsMiddleware, metrics_endpoint
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

    secured = bool(settings.api_keys)
    app = Litestar(
        route_handlers=[
            health.healthz,
            health.readyz,
            metrics_endpoint,
            query.query,
            openai_compat.list_models,
            openai_compat.chat_completions,
            openai_compat.completions,
            adapters.adapters_list,
            adapters.adapters_load,
            adapters.adapters_unload,
        ],
        state=State({"services": services}),
        dependencies={"svc": Provide(_provide_services, sync_to_thread=False)},
        guards=[require_api_key],
        middleware=[DefineMiddleware(MetricsMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
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


def tighten_openapi(app: Litestar, settings: Settings) -> None:
    """Show the running limits in the served schema, not only the hard caps in schemas.py.

    A client (or schemathesis) that follows the schema then never meets a range error
    that the schema did not announce.
    """
    schemas = app.openapi_schema.components.schemas or {}
    limits: dict[str, dict[str, dict[str, Any]]] = {
        "QueryBody": {
            "question": {"max_length": settings.max_question_chars},
            "max_new_tokens": {"maximum": settings.max_new_tokens_limit},
            # Litestar drops a zero lower bound (falsy); say it.
            "temperature": {"minimum": 0.0},
        },
        "ChatCompletionBody": {
            "temperature": {"minimum": 0.0},
            "max_tokens": {"maximum": settings.max_new_tokens_limit},
            "max_completion_tokens": {"maximum": settings.max_new_tokens_limit},
        },
        "CompletionBody": {
            "temperature": {"minimum": 0.0},
            "max_tokens": {"maximum": settings.max_new_tokens_limit},
        },
    }
    for name, fields in limits.items():
        schema = schemas.get(name)
        if schema is None or not schema.properties:
            continue
        for field, attrs in fields.items():
            prop = schema.properties.get(field)
            if prop is None:
                continue
            # Litestar puts the bounds of an optional field on the one_of wrapper.
            for attr, value in attrs.items():
                setattr(prop, attr, value)
