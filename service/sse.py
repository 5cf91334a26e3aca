"""Server-sent events: framing, and the part of a streamed answer a client should see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: Any, name: str | None = None) -> bytes:
    """One SSE event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else msgspec.json.encode(data).decode()
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n".encode()


class EventStream(Stream):
    """A Stream that keeps ``text/event-stream`` even from a handler whose declared media
    type is JSON (Litestar 2 lets the handler's media type win over the response's)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse_response(events: AsyncIterator[bytes]) -> Stream:
    return EventStream(events, media_type="text/event-stream", headers=SSE_HEADERS)


class VisibleText:
    """Turns raw generated pieces into the deltas of the answer the pipeline returns.

    ``clean_answer`` keeps the first line of the stripped text; streaming the same rule
    means the joined deltas equal the non-streamed answer (up to trailing spaces). With
    ``first_line=False`` (whole answers) only the leading whitespace is dropped; with
    ``keep_leading`` (raw completions) it is kept, as ``pipeline.first_line`` keeps it.
    """

    def __init__(self, first_line: bool = True, keep_leading: bool = False) -> None:
        self._raw = ""
        self._sent = ""
        self.first_line = first_line
        self.keep_leading = keep_leading  # raw completions: the text as generated
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        self._raw += piece
        body = self._raw.lstrip()
        lead = self._raw[: len(self._raw) - len(body)] if self.keep_leading else ""
        if self.first_line and "\n" in body:
            body = body.split("\n", 1)[0]
            self.done = True
        visible = lead + body
        delta = visible[len(self._sent) :]
        self._sent = visible
        return delta
