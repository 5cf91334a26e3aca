"""API keys with scopes: a key file (hashed at rest) beside the RAGTUNE_API_KEYS setting.

A key is a random bearer token (``rt-`` + 43 URL-safe characters, 256 bits); the file keeps
only its SHA-256, so reading the file gives nobody a working key. (A slow password hash like
scrypt buys nothing for a random 256-bit token and would cost every request milliseconds.)
Checking a token hashes it once and compares that hash with every key's hash using
``hmac.compare_digest``, without stopping at a match, so the time taken says nothing about
which key, or which prefix, matched.

Scopes (what a key may do):

| scope | routes |
|---|---|
| ``query`` | ``POST /v1/query``, ``/v1/chat/completions``, ``/v1/completions`` |
| ``read`` | ``GET /v1/models[/{id}]``, ``/v1/adapters``, ``/v1/decisions``, ``/schema`` |
| ``metrics`` | ``GET /metrics`` |
| ``adapters:manage`` | ``POST /v1/adapters/{name}/load``, ``DELETE /v1/adapters/{name}`` |
| ``decisions:manage`` | ``POST /v1/decisions/{index}/publish``, ``DELETE /v1/decisions/{index}`` |

and which indexes and adapters (``indexes``, ``adapters``: names, or ``*`` for all) it may use:
a question retrieving from another index, an answer from another adapter, a listing of them
or managing one is refused (403, the problem body names the scope: ``index:NAME``,
``adapter:NAME``). Listings show only what a key may use. Keys in ``RAGTUNE_API_KEYS`` (the
``api_keys`` setting) have every scope. ``ragtune keys add|list|rm`` manage the file
(``api_keys_file``; default ``<data>/api-keys.json``); the service rereads it when it changes,
so a removed key stops working at once. The service is open (every request may do anything)
only while no key is configured at all: no ``api_keys`` and no key file. A key file that
cannot be read accepts no key (fail closed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput, NotFound, RagtuneError

QUERY: Final = "query"
READ: Final = "read"
METRICS: Final = "metrics"
MANAGE_ADAPTERS: Final = "adapters:manage"
MANAGE_DECISIONS: Final = "decisions:manage"
SCOPES: Final = (QUERY, READ, METRICS, MANAGE_ADAPTERS, MANAGE_DECISIONS)
DEFAULT_SCOPES: Final = (QUERY, READ)
ALL = "*"
KEY_FILE = "api-keys.json"
TOKEN_PREFIX = "rt-"


class Forbidden(RagtuneError):
    """A valid key used outside its scope."""

    status = 403
    title = "Forbidden"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class KeyRecord(BaseModel):
    """One key as the file stores it: never the token itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["query", "read", "metrics", "adapters:manage", "decisions:manage"]]
    indexes: list[str] = [ALL]
    adapters: list[str] = [ALL]
    created_at: str


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    keys: list[KeyRecord] = []


def key_file(settings: Settings) -> Path:
    return settings.api_keys_file or settings.data_dir / KEY_FILE


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def read_key_file(path: Path) -> KeyFile:
    """The key file (an empty one when there is none).

    Raises:
        InvalidInput: the file is not a readable key file.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return KeyFile()
    except OSError as e:
        raise InvalidInput(f"key file {path} cannot be read ({e.strerror})") from e
    try:
        return KeyFile.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:
        raise InvalidInput(f"key file {path} is not a ragtune key file ({type(e).__name__})") from e


def _write_key_file(path: Path, data: KeyFile) -> None:
    """Atomic, and readable by the owner only (hashes are not secrets, but still)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data.model_dump_json(indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _names(values: list[str] | tuple[str, ...], what: str) -> list[str]:
    from ragtune.core.index_store import validate_name

    vals = list(dict.fromkeys(values)) or [ALL]
    if ALL in vals:
        return [ALL]
    return [validate_name(v, what) for v in vals]


def add_key(
    settings: Settings,
    name: str,
    scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
    indexes: list[str] | tuple[str, ...] = (ALL,),
    adapters: list[str] | tuple[str, ...] = (ALL,),
) -> tuple[str, KeyRecord]:
    """Create a key; returns (the token, shown once; its record). The file keeps the hash."""
    from ragtune.core.index_store import validate_name

    validate_name(name, "key")
    bad = sorted(set(scopes) - set(SCOPES))
    if bad:
        raise InvalidInput(
            f"unknown scope(s) {', '.join(bad)} (use {', '.join(SCOPES)})", field="scope"
        )
    path = key_file(settings)
    data = read_key_file(path)
    if any(k.name == name for k in data.keys):
        raise InvalidInput(f"a key named {name!r} exists (remove it first)", field="name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord(
        name=name,
        sha256=token_hash(token).hex(),
        scopes=[s for s in SCOPES if s in set(scopes)],
        indexes=_names(list(indexes), "index"),
        adapters=_names(list(adapters), "adapter"),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    data.keys.append(record)
    _write_key_file(path, data)
    return token, record


def list_keys(settings: Settings) -> list[KeyRecord]:
    return list(read_key_file(key_file(settings)).keys)


def remove_key(settings: Settings, name: str) -> KeyRecord:
    path = key_file(settings)
    data = read_key_file(path)
    found = next((k for k in data.keys if k.name == name), None)
    if found is None:
        raise NotFound(f"no key named {name!r}", field="name")
    data.keys = [k for k in data.keys if k.name != name]
    _write_key_file(path, data)
    return found


# ---- the service side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key's name and what it may do (never its token)."""

    name: str
    scopes: frozenset[str]
    indexes: frozenset[str]
    adapters: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def may_index(self, name: str) -> bool:
        return ALL in self.indexes or name in self.indexes

    def may_adapter(self, name: str) -> bool:
        return ALL in self.adapters or name in self.adapters

    def require(self, scope: str) -> None:
        if not self.has(scope):
            raise Forbidden(f"this API key lacks the scope {scope!r}", scope=scope)

    def require_index(self, name: str) -> None:
        if not self.may_index(name):
            raise Forbidden(f"this API key may not use index {name!r}", scope=f"index:{name}")

    def require_adapter(self, name: str) -> None:
        if not self.may_adapter(name):
            raise Forbidden(f"this API key may not use adapter {name!r}", scope=f"adapter:{name}")


EVERYTHING = Principal("all", frozenset(SCOPES), frozenset([ALL]), frozenset([ALL]))
_EVERY = (EVERYTHING.scopes, EVERYTHING.indexes, EVERYTHING.adapters)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


class KeyRing:
    """The keys a service accepts: the setting's (every scope) and the file's, reread when the
    file changes (a stat per request)."""

    def __init__(self, settings: Settings) -> None:
        self.path = key_file(settings)
        self._env = [
            _Entry(token_hash(k), Principal(f"env#{i}", *_EVERY))
            for i, k in enumerate(settings.api_keys)
        ]
        self._file: list[_Entry] = []
        self._stamp: tuple[int, int, int] | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            entries: list[_Entry] = []
            error = None
            if stamp is not None:
                try:
                    data = read_key_file(self.path)
                except InvalidInput as e:
                    error = e.message  # fail closed: no file key is accepted
                else:
                    entries = [
                        _Entry(
                            bytes.fromhex(k.sha256),
                            Principal(
                                k.name,
                                frozenset(k.scopes),
                                frozenset(k.indexes),
                                frozenset(k.adapters),
                            ),
                        )
                        for k in data.keys
                    ]
            self._file, self._error, self._stamp = entries, error, stamp

    @property
    def error(self) -> str | None:
        """Why the key file could not be read (its keys are then refused), if it could not."""
        return self._error

    def enabled(self) -> bool:
        """Whether requests need a key: keys in the setting, or a key file at all (removing
        the last key from the file closes the service; it never opens it)."""
        self._reload()
        return bool(self._env) or self._stamp is not None

    def authenticate(self, token: str) -> Principal | None:
        """The key ``token`` is, or None. Every key's hash is compared (constant time)."""
        self._reload()
        digest = token_hash(token)
        found = None
        for entry in [*self._env, *self._file]:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.principal
        return found
