"""Slow and greedy clients, with real sockets against ``ragtune serve``'s uvicorn settings:
half-sent request heads and bodies are answered 408 and closed after their timeouts, and
connections past ``max_connections`` are answered 503 and closed at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx
import pytest

from ragtune.core.config import Settings
from ragtune.service.app import create_app
from tests.service.conftest import make_settings, wait_ready
from tests.service.helpers import live_server

TIMEOUT_S = 0.5


@pytest.fixture
def guarded(svc_settings: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """A server with short read timeouts (``TIMEOUT_S``, or the test's ``timeout`` param)
    and room for 3 connections."""
    timeout = getattr(request, "param", TIMEOUT_S)
    settings = make_settings(
        svc_settings,
        http_header_timeout_s=timeout,
        http_body_timeout_s=timeout,
        max_connections=3,
    )
    with live_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout, 30 s,
    fails the test: the server kept the connection open)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_partial_headers_are_closed_after_the_header_timeout(guarded):
    with connect(guarded) as s:
        s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: ragtune\r\nContent-Type: appl")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"application/problem+json" in data and b"request headers not received" in data
    with connect(guarded) as s:  # a connection that never sends a byte, too
        assert read_until_closed(s).startswith(b"HTTP/1.1 408 ")


def test_a_kept_alive_connection_gets_the_same_header_timeout(guarded):
    with connect(guarded) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: ragtune\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next request stalls
        assert read_until_closed(s).startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_is_408_after_the_body_timeout(guarded):
    body = b'{"question": "Where is the Nile?", "mode": "base"}'
    with connect(guarded) as s:
        s.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: ragtune\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408 ") and b"request body not received" in data
    with httpx.Client(base_url=guarded) as c:
        text = c.get("/metrics").text
        assert 'ragtune_connections_refused_total{reason="body_timeout"} 1.0' in text
        # the abandoned request never reached the model, and the service still answers
        assert c.post("/v1/query", json={"question": "q", "mode": "base"}).status_code == 200


def test_a_request_sent_in_pieces_within_the_timeouts_is_served(guarded):
    with connect(guarded) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(TIMEOUT_S / 3)
        s.sendall(b"Host: ragtune\r\nConnection: close\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("guarded", [30.0], indirect=True)  # the held ones stay open
def test_connections_past_the_cap_are_503_and_closed(guarded):
    with ExitStack() as stack:
        held = [stack.enter_context(connect(guarded)) for _ in range(3)]
        for s in held:  # keep them busy: each sends a request head slowly
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
        with connect(guarded) as extra:
            data = read_until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503 ") and b"too many connections" in data
    # once the held ones are gone, new connections are served again
    with httpx.Client(base_url=guarded) as c:
        deadline = time.monotonic() + 10
        while (r := c.get("/metrics")).status_code != 200:
            assert time.monotonic() < deadline
        assert 'ragtune_connections_refused_total{reason="too_many_connections"} 1.0' in r.text


def test_an_oversized_request_head_is_400_and_closed(guarded):
    with connect(guarded) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: ragtune\r\nX-Big: " + b"x" * 20_000)
        assert read_until_closed(s).startswith(b"HTTP/1.1 400 ")
