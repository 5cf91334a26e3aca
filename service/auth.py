"""Guards: bearer API keys (every route but health) and JSON-only request bodies."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

PUBLIC = "public"  # route opt key: no API key needed (health checks)


def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """When ``settings.api_keys`` is set, demand ``Authorization: Bearer <one of them>``."""
    keys: list[str] = connection.app.state.services.settings.api_keys
    if not keys or handler.opt.get(PUBLIC):
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    # compare_digest against every key: the time taken does not reveal which prefix matched.
    ok = scheme.lower() == "bearer" and any(
        hmac.compare_digest(token.encode(), k.encode()) for k in keys
    )
    if not ok:
        raise NotAuthorizedException(
            detail="a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="ragtune"'},
        )


def require_json(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Routes with a JSON body refuse other media types with 415 before reading the body."""
    media_type = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        # The client's media type is not echoed: a message never rewrites client input.
        raise HTTPException(
            status_code=415,
            detail="content type must be application/json"
            + ("" if media_type else " (the request has none)"),
        )
