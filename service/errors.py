"""Every failure becomes an RFC 9457 problem body; nothing else ever reaches a client.

Domain errors (``core.errors``) carry their HTTP status and the field at fault; Litestar's
own exceptions (validation, 404 route, 405, 413) keep their status; anything unexpected is
logged here with its traceback and answered with a bare 500. Messages are scrubbed of
server paths, since some domain messages quote a file that the client did not send.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from ragtune.core.errors import IndexNotFound, RagtuneError, UnknownAdapter
from ragtune.service.bodies import is_plain, plain_only
from ragtune.service.schemas import Problem

log = logging.getLogger("ragtune.service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
OPENAI_PATH_PREFIXES = (
    "/v1/chat/",
    "/v1/completions",
    "/v1/models",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
)
# Absolute file paths under the usual filesystem roots (not URL paths like /v1/models),
# Windows drive paths, and home-relative paths: never echoed to clients.
_PATH_RE = re.compile(
    r"(?:\b[A-Za-z]:[\\/]|~/|/(?:home|root|tmp|var|usr|opt|etc|srv|mnt|media|data|app|work"
    r"|workspace|private|Users|proc|sys|dev|run|nix|snap)(?=[/\s'\"]|$))[^\s'\"]*"
)
_UNKNOWN_FIELD_RE = re.compile(r"unknown field `([^`]+)`")
CLIENT_GONE = "client disconnected prematurely"  # Litestar's detail for a body cut short

TITLES = {
    400: "Invalid input",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    499: "Client closed request",
    500: "Internal error",
    502: "Generation backend error",
    503: "Service overloaded",
    504: "Generation timed out",
}


class ClientGone(RagtuneError):
    """The client closed the connection before its answer was ready (its work stopped).
    Nobody reads the response; the status (nginx's 499) is for logs and metrics."""

    status = 499
    title = "Client closed request"


def scrub(message: str) -> str:
    """Replace anything that looks like a server file path."""
    return _PATH_RE.sub("<path>", message)


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    field: str | None = None,
    scope: str | None = None,
) -> Problem:
    return Problem(
        type=f"https://ragtune.dev/problems/{status}",
        title=title or TITLES.get(status, "Error"),
        status=status,
        detail=scrub(detail),
        field=field,
        scope=scope,
    )


def problem_response(
    request: Request[Any, Any, Any] | None,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    scope: str | None = None,
) -> Response[bytes]:
    body = problem_body(status, detail, title=title, field=field, scope=scope)
    detail = body.detail
    path = request.url.path if request is not None else ""
    if path.startswith(OPENAI_PATH_PREFIXES):
        body.error = {
            "message": detail,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": field,
            "code": status,
        }
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _validation_field(exc: ValidationException) -> tuple[str | None, str]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", ""))
        key = item.get("key")
        unknown = _UNKNOWN_FIELD_RE.search(message)
        if unknown:
            name = unknown.group(1)
            if not is_plain(name):  # never echo it rewritten: leave it out
                return None, "the body has an unknown field"
            return name, f"unknown field {name!r}"
        if key in (None, "data"):
            # The body as a whole: missing, not an object, or a required field absent.
            missing = re.search(r"missing required field `([^`]+)`", message)
            if missing:
                return missing.group(1), f"{missing.group(1)} is required"
            return "body", "the request body must be a JSON object matching the schema"
        return str(key), f"{key}: {plain_only(message)}"
    return None, exc.detail or "invalid request"


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    field, detail = _validation_field(exc)
    return problem_response(request, 400, detail, field=field)


def handle_ragtune(request: Request[Any, Any, Any], exc: RagtuneError) -> Response[bytes]:
    status = exc.status
    field = exc.field
    if field is None and isinstance(exc, IndexNotFound):
        field = "index"
    if field is None and isinstance(exc, UnknownAdapter):
        field = "adapter"
    headers = None
    if status == 503:
        headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
    # 502/503/504 are about the service's state or its generation backend, and their
    # messages say what happened (the backend's own words); other 5xx are bugs.
    if status >= 500 and status not in (502, 503, 504):
        log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc.message)
        return problem_response(request, status, exc.title, title=exc.title)
    return problem_response(
        request,
        status,
        exc.message,
        title=exc.title,
        field=field,
        headers=headers,
        scope=getattr(exc, "scope", None),  # 403: the scope the key lacks
    )


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status == 500 and exc.detail == CLIENT_GONE:
        # The body never arrived whole (the client left, or the body read timed out);
        # nobody reads this answer, but metrics should not count a server error.
        log.info("%s %s: request body incomplete", request.method, request.url.path)
        return problem_response(request, 408, "the request body did not arrive whole")
    if status >= 500:
        log.error("HTTP %s on %s: %s", status, request.url.path, exc.detail)
        return problem_response(request, status, TITLES.get(status, "Internal error"))
    detail = exc.detail or TITLES.get(status, "Error")
    headers = dict(exc.headers or {})
    if status == 400 and detail.startswith(("JSON is malformed", "Input data was truncated")):
        detail = f"malformed JSON body ({detail})"
    return problem_response(request, status, detail, headers=headers or None)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The traceback goes to the server log only.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal error (logged on the server)")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: handle_validation,
    RagtuneError: handle_ragtune,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}


def problem_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        code: ResponseSpec(
            data_container=Problem,
            description=TITLES.get(code, "Error"),
            media_type=PROBLEM_MEDIA_TYPE,
        )
        for code in codes
    }


__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_MEDIA_TYPE",
    "ClientGone",
    "problem_body",
    "problem_response",
    "problem_responses",
    "scrub",
]
