"""The app under uvicorn, guarded against slow and greedy clients, with a shutdown that stops.

uvicorn (0.54, h11) times out idle keep-alive connections, but not a request whose headers or
body arrive slowly: a client that sends half a request head holds its connection forever. So
ragtune serves with its own subclass of uvicorn's h11 protocol that

- closes a connection whose request head is not complete within ``http_header_timeout_s``
  (also on a kept-alive connection, once the next request has begun) with a 408;
- answers 408 and closes when a request body is not complete within ``http_body_timeout_s``;
- answers 503 and closes a new connection beyond ``max_connections`` open ones.

Header size is capped by h11 (16 KiB: ``h11_max_incomplete_event_size``); body size by the app
(``max_body_bytes``, 413). On SIGTERM the service stops taking requests at once and gives
those in flight ``shutdown_grace_s`` to finish (then 503); uvicorn waits that long plus a
margin for the responses to be written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import msgspec

from ragtune.core.config import Settings
from ragtune.service.errors import PROBLEM_MEDIA_TYPE, problem_body

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

# After the grace period, the 503s and the last bytes of streams need a moment to go out.
SHUTDOWN_MARGIN_S = 5.0
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024  # a bigger request head is a 400 (h11's own default, stated)


def raw_problem(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 problem response that closes the connection, for answers the
    protocol sends itself (no request cycle is running, or it is abandoned)."""
    body = msgspec.json.encode(problem_body(status, detail))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(
    settings: Settings, on_refused: Callable[[str], None] = lambda _: None
) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with header and body read timeouts and a connection cap."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    header_s, body_s = settings.http_header_timeout_s, settings.http_body_timeout_s
    cap = settings.max_connections

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > cap:
                self._refuse(503, "Service Unavailable", "too many connections; retry later")
                on_refused("too_many_connections")
                return
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timers()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Arm or disarm the timers for what the client owes us now."""
            if self.transport.is_closing():
                self._stop_timers()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                # A request head is due. An idle kept-alive connection is uvicorn's
                # keep-alive timer's job; the head timer starts with its first byte.
                if self.timeout_keep_alive_task is None and self._head_timer is None:
                    self._head_timer = self.loop.call_later(header_s, self._head_timeout)
                return
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if state is h11.SEND_BODY:
                if self._body_timer is None:
                    self._body_timer = self.loop.call_later(body_s, self._body_timeout)
            elif self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _stop_timers(self) -> None:
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            on_refused("header_timeout")
            self._refuse(
                408, "Request Timeout", f"request headers not received within {header_s:g} s"
            )

        def _body_timeout(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
                return
            on_refused("body_timeout")
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                # The app is still waiting for the body: answer for it, and make it see a
                # disconnect so that it writes nothing more.
                cycle.disconnected = True
                cycle.message_event.set()
                self._refuse(
                    408, "Request Timeout", f"request body not received within {body_s:g} s"
                )
            else:
                self.transport.close()

        def _refuse(self, status: int, reason: str, detail: str) -> None:
            self.transport.write(raw_problem(status, reason, detail))
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app: Litestar, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn settings ragtune serves with (``ragtune serve`` and the tests)."""
    import uvicorn

    metrics = app.state.services.metrics
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        http=guarded_protocol(settings, lambda reason: metrics.refused.labels(reason).inc()),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s + SHUTDOWN_MARGIN_S),
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )


def build_server(app: Litestar, settings: Settings, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` whose SIGTERM/Ctrl-C also starts the service's drain."""
    import uvicorn

    services = app.state.services

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            services.begin_shutdown()
            super().handle_exit(sig, frame)

    return Server(uvicorn_config(app, settings, log_level))


__all__ = ["build_server", "guarded_protocol", "raw_problem", "uvicorn_config"]
