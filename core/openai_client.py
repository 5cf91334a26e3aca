"""An asynchronous client for OpenAI-compatible generation servers (vLLM, another ragtune).

It speaks four routes, with the shapes vLLM's OpenAI server uses (see docs/scale.md for the
source files): ``POST /v1/completions`` (plain, or streamed as ``data: {chunk}`` events
ending with ``data: [DONE]``), vLLM's runtime LoRA API ``POST /v1/load_lora_adapter``
``{"lora_name", "lora_path", "load_inplace"}`` and ``POST /v1/unload_lora_adapter``
``{"lora_name"}`` (both answer 200 with a line of text, or an error body), and
``GET /v1/models``.

Failures become ragtune errors that carry the server's own message:

- the server cannot be reached (connection refused or reset, DNS, connect timeout), or
  answers 503/429: ``BackendUnavailable`` (503, with Retry-After);
- nothing arrives for ``generator_timeout_s``, or the server answers 504: ``BackendTimeout``;
- any other error status: ``BackendError`` (502); a 404 about the ``model`` (an adapter the
  server does not know, e.g. after it restarted) is ``UnknownAtBackend``, so that the caller
  can register the adapter again and retry.

Calls that the server never started (no connection, connection lost before an answer, a
502/503 from it) are retried ``generator_retries`` times with exponential backoff; a read
timeout is not (the server is working, and a second copy of the request would only add
load). A stream is retried only before its first byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragtune.core.config import Settings
from ragtune.core.errors import BackendError, BackendTimeout, BackendUnavailable, RagtuneError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503})
MAX_MESSAGE_CHARS = 500  # of a server's error text quoted to a client


class UnknownAtBackend(BackendError):
    """The server answered 404 for the ``model`` of a request: it does not know that name
    (an adapter it never loaded, or forgot when it restarted)."""


class AlreadyLoaded(BackendError):
    """``load_lora_adapter`` for a name the server holds already (vLLM's 400)."""


@dataclass(frozen=True)
class BackendConfig:
    url: str  # the server's root (no trailing /v1)
    api_key: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    retries: int = 2
    backoff_s: float = 0.25
    max_connections: int = 64

    @classmethod
    def of(cls, settings: Settings) -> BackendConfig:
        url = settings.generator_url.rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        return cls(
            url=url,
            api_key=settings.generator_api_key,
            connect_timeout_s=settings.generator_connect_timeout_s,
            read_timeout_s=settings.generator_timeout_s,
            retries=settings.generator_retries,
            backoff_s=settings.generator_retry_backoff_s,
            max_connections=max(8, 2 * settings.max_batch_size),
        )


def server_message(status: int, body: bytes, content_type: str = "") -> str:
    """The human part of an error body: vLLM's ``{"error": {"message"}}`` (or its older flat
    ``{"message"}``), an RFC 9457 ``detail`` (ragtune), or the text itself, shortened."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text) if text[:1] in "{[" else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        for candidate in (
            err.get("message") if isinstance(err, dict) else err,
            data.get("message"),
            data.get("detail"),
        ):
            if isinstance(candidate, str) and candidate.strip():
                text = candidate.strip()
                break
    if not text:
        text = f"HTTP {status} with an empty body"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " ..."


def error_for(status: int, message: str, what: str, retry_after: str | None = None) -> RagtuneError:
    """The ragtune error for an error status from the server."""
    if status in (429, 503):
        err: RagtuneError = BackendUnavailable(
            f"the generation backend is overloaded ({status} to {what}): {message}"
        )
        if retry_after and retry_after.isdigit():
            err.retry_after = int(retry_after)  # type: ignore[attr-defined]
        return err
    if status == 504:
        return BackendTimeout(f"the generation backend timed out ({status} to {what}): {message}")
    return BackendError(f"the generation backend answered {status} to {what}: {message}")


class OpenAIBackend:
    """One connection pool to one server. Use it from one event loop (``core.remote`` runs
    it on its own loop thread)."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            c = self.config
            headers = {"authorization": f"Bearer {c.api_key}"} if c.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=c.url,
                headers=headers,
                timeout=httpx.Timeout(
                    c.read_timeout_s, connect=c.connect_timeout_s, pool=c.read_timeout_s
                ),
                limits=httpx.Limits(
                    max_connections=c.max_connections,
                    max_keepalive_connections=c.max_connections,
                ),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the calls ------------------------------------------------------------------------
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/completions`` (not streamed): the response document."""
        resp = await self._send("POST", "/v1/completions", body, "a completion")
        data = self._json(resp, "a completion")
        if not isinstance(data.get("choices"), list) or not data["choices"]:
            raise BackendError("the generation backend answered a completion with no choices")
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``POST /v1/completions`` with ``stream: true``: each chunk as it arrives. An error
        event (``data: {"error": ...}``) raises BackendError with its message."""
        import httpx

        resp = await self._send("POST", "/v1/completions", body, "a completion", stream=True)
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # event names, comments, blank separators
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    return
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    raise BackendError(
                        "the generation backend sent a stream event that is not JSON"
                    ) from None
                if isinstance(chunk, dict) and "error" in chunk:
                    message = server_message(500, payload.encode())
                    raise BackendError(f"the generation backend failed mid-stream: {message}")
                if isinstance(chunk, dict):
                    yield chunk
        except httpx.ReadTimeout:
            raise self._timeout("a streamed completion") from None
        except (httpx.ReadError, httpx.RemoteProtocolError) as e:
            raise BackendUnavailable(
                f"the generation backend closed a streamed completion midway ({_reason(e)})"
            ) from None
        finally:
            await resp.aclose()

    async def load_lora(self, name: str, path: str, *, inplace: bool = False) -> None:
        """vLLM's runtime LoRA loading. ``inplace``: replace an adapter of that name (newer
        vLLM's ``load_inplace``; servers without it answer AlreadyLoaded)."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True
        what = f"loading adapter {name!r}"
        resp = await self._send("POST", "/v1/load_lora_adapter", body, what, check=False)
        if resp.status_code == 200:
            return
        message = server_message(resp.status_code, resp.content)
        if resp.status_code == 400 and "already" in message.lower():
            raise AlreadyLoaded(f"the generation backend holds adapter {name!r} already")
        if resp.status_code in (429, 503, 504):
            raise error_for(resp.status_code, message, what, resp.headers.get("retry-after"))
        raise BackendError(
            f"the generation backend refused adapter {name!r} ({resp.status_code}): {message}"
        )

    async def unload_lora(self, name: str) -> bool:
        """vLLM's runtime LoRA unloading; False when the server does not hold ``name``."""
        what = f"unloading adapter {name!r}"
        resp = await self._send(
            "POST", "/v1/unload_lora_adapter", {"lora_name": name}, what, check=False
        )
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        message = server_message(resp.status_code, resp.content)
        raise error_for(resp.status_code, message, what, resp.headers.get("retry-after"))

    async def models(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """``GET /v1/models``: the model cards (vLLM lists each LoRA with its ``parent``)."""
        resp = await self._send("GET", "/v1/models", None, "the model list", timeout_s=timeout_s)
        data = self._json(resp, "the model list").get("data")
        if not isinstance(data, list):
            raise BackendError("the generation backend's model list has no 'data' list")
        return [m for m in data if isinstance(m, dict)]

    # --- transport ------------------------------------------------------------------------
    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        what: str,
        *,
        stream: bool = False,
        check: bool = True,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send with retries; an error status raises (unless ``check`` is False)."""
        import httpx

        cfg = self.config
        delay = cfg.backoff_s
        failure: RagtuneError | None = None
        extra: dict[str, Any] = {}
        if timeout_s is not None:
            extra["timeout"] = httpx.Timeout(
                timeout_s, connect=min(timeout_s, cfg.connect_timeout_s)
            )
        for attempt in range(cfg.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                request = self.client.build_request(method, path, json=body, **extra)
                resp = await self.client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failure = BackendUnavailable(
                    f"the generation backend is unreachable ({_reason(e)}); retry later"
                )
                continue
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as e:
                failure = BackendUnavailable(
                    f"the generation backend closed the connection ({_reason(e)}); retry later"
                )
                continue
            except httpx.PoolTimeout:
                raise BackendTimeout(
                    f"no free connection to the generation backend within {cfg.read_timeout_s:g} s"
                ) from None
            except (httpx.ReadTimeout, httpx.WriteTimeout):
                raise self._timeout(what) from None
            if resp.status_code in RETRY_STATUSES and attempt < cfg.retries:
                await resp.aclose()
                continue
            if resp.status_code < 400 or not check:
                return resp
            if stream:  # read the error body, then let the connection go
                await resp.aread()
                await resp.aclose()
            raise self._status_error(resp, what, body)
        assert failure is not None
        log.warning("%s %s%s: %s", method, cfg.url, path, failure.message)
        raise failure

    def _status_error(
        self, resp: httpx.Response, what: str, body: dict[str, Any] | None
    ) -> RagtuneError:
        message = server_message(resp.status_code, resp.content)
        model = body.get("model") if isinstance(body, dict) else None
        if resp.status_code == 404 and model is not None and path_is_completion(resp):
            return UnknownAtBackend(
                f"the generation backend does not know model {model!r}: {message}"
            )
        return error_for(resp.status_code, message, what, resp.headers.get("retry-after"))

    def _timeout(self, what: str) -> BackendTimeout:
        return BackendTimeout(
            f"the generation backend sent nothing for {self.config.read_timeout_s:g} s "
            f"({what}); it may be overloaded"
        )

    @staticmethod
    def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            raise BackendError(f"the generation backend answered {what} with no JSON") from None
        if not isinstance(data, dict):
            raise BackendError(f"the generation backend answered {what} with no JSON object")
        return data


def path_is_completion(resp: httpx.Response) -> bool:
    return resp.request.url.path.endswith("/v1/completions")


def _reason(e: Exception) -> str:
    """A short cause for a transport error ("connection refused", "timed out", ...), from
    the exception or the OS error under it."""
    seen: BaseException | None = e
    texts: list[str] = []
    while seen is not None and len(texts) < 8:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    lowered = " ".join(texts).lower()
    for key, short in (
        ("refused", "connection refused"),
        ("reset", "connection reset"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("timed out", "connect timed out"),
        ("disconnected", "server disconnected"),
    ):
        if key in lowered:
            return short
    return type(e).__name__


__all__ = [
    "AlreadyLoaded",
    "BackendConfig",
    "OpenAIBackend",
    "UnknownAtBackend",
    "error_for",
    "server_message",
]
