"""Guards: bearer API keys with scopes (every route but health) and JSON-only request bodies.

Each route names the scope it needs in its ``opt`` (``SCOPE``); a route that names none
(the OpenAPI document, OPTIONS) needs ``read``. With no key configured (neither the
``api_keys`` setting nor a key file) the service is open and every request may do anything.
The key's ``Principal`` goes on ``connection.state`` for the handlers' index and adapter
checks (``principal_of``). Tokens never reach a log or a response: only a key's name does.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from ragtune.service.keys import EVERYTHING, READ, Principal

PUBLIC = "public"  # route opt key: no API key needed (health checks)
SCOPE = "scope"  # route opt key: the scope the route needs (service.keys.SCOPES)
PRINCIPAL = "ragtune_principal"  # connection.state key


def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """When keys are configured, demand ``Authorization: Bearer <key>`` (401) with the
    route's scope (403 naming it)."""
    keys = connection.app.state.services.keys
    if handler.opt.get(PUBLIC) or not keys.enabled():
        connection.state[PRINCIPAL] = EVERYTHING
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    principal = keys.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if principal is None:
        raise NotAuthorizedException(
            detail="a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="ragtune"'},
        )
    principal.require(handler.opt.get(SCOPE, READ))
    connection.state[PRINCIPAL] = principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The key a request came with (everything, when the service is open)."""
    found = connection.state.get(PRINCIPAL)
    return found if isinstance(found, Principal) else EVERYTHING


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
