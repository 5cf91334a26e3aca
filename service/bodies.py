"""Strict JSON request bodies: the declared types exactly, and no crash on deep nesting.

Litestar converts request bodies leniently (``"2"`` -> 2, ``"true"`` -> True, ``1.0`` -> 1)
and lets msgspec's RecursionError on deeply nested JSON escape as a 500. ``StrictRequest``
(the app's request class) decodes a JSON body straight into the handler's declared body type
with msgspec in strict mode, so a value of the wrong type is a 400 that names the field and
the expected type, and JSON nested too deeply is a 400 "malformed JSON body". What it hands
on to Litestar is already valid, so Litestar's own (lenient) conversion changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, ValidationException

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
# Quoted values in msgspec messages come from the client; keep plain tokens only.
_QUOTED = re.compile(r"(?P<q>[`'])(?P<value>[^`']*)(?P=q)")
_PLAIN = re.compile(r"[A-Za-z0-9_.\- |]{1,64}")


def is_plain(value: str) -> bool:
    """A plain token (a name, a type name): echoing it cannot leak or mangle anything."""
    return bool(_PLAIN.fullmatch(value))


def plain_only(message: str) -> str:
    """Drop quoted client values from a message unless they are plain tokens (names, type
    names): an echo is then either the client's exact text or nothing, never a rewrite."""

    def keep(m: re.Match[str]) -> str:
        return m.group(0) if is_plain(m.group("value")) else "a value"

    return _QUOTED.sub(keep, message)


def validation_error(err: msgspec.ValidationError) -> ValidationException:
    """msgspec's ``"Expected `int`, got `str` - at `$.top_k`"`` as Litestar's exception, with
    the field path (``top_k``, ``messages[0].content``) as its key."""
    m = _AT.match(str(err))
    message, path = (m.group("message"), m.group("path")) if m else (str(err), None)
    key = path.lstrip(".") if path else None
    detail = plain_only(message)  # the handler reads ``extra`` and cleans it the same way
    return ValidationException(
        detail=f"{key}: {detail}" if key else detail,
        extra=[{"message": message, "key": key, "source": "body"}],
    )


# No ragtune body nests deeper than 5; refusing more before decoding keeps the answer the
# same whatever the stack depth at hand (msgspec's own limit is Python's recursion limit).
MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:  # the usual body: nothing to scan
        return 0
    depth = deepest = 0
    for byte in _STRING.sub(b"", body):
        if byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def decode_strict(body: bytes, target: Any) -> Any:
    """Decode ``body`` as ``target`` with no type coercion; errors are 400s."""
    if nesting_depth(body) > MAX_DEPTH:
        raise HTTPException(status_code=400, detail="malformed JSON body (nested too deeply)")
    try:
        return msgspec.json.decode(body, type=target, strict=True)
    except RecursionError:
        raise HTTPException(
            status_code=400, detail="malformed JSON body (nested too deeply)"
        ) from None
    except msgspec.ValidationError as e:
        raise validation_error(e) from None
    except msgspec.DecodeError as e:
        raise HTTPException(status_code=400, detail=f"malformed JSON body ({e})") from None


class StrictRequest(Request[Any, Any, Any]):
    """A Request whose ``json()`` decodes strictly into the route's declared body type."""

    async def json(self) -> Any:
        field = self.route_handler.parsed_data_field
        target = field.annotation if field is not None else Any
        value = decode_strict(await self.body() or b"null", target)
        return msgspec.to_builtins(value)


__all__ = ["StrictRequest", "decode_strict", "is_plain", "plain_only", "validation_error"]
