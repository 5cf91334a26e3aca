"""Metadata columns: the filterable fields of an index version, one row per chunk.

A version folder holds ``fields/`` with three arrays of shape (chunks, fields), rows in the
version's position order (``ids.npy``), columns in the manifest's ``fields`` order, stored
column-major so that one field is one contiguous memory-mapped slice:

- ``types.npy``  int8: what the value is (MISSING, TEXT, NUMBER, DATE, BOOL);
- ``hashes.npy`` int64: a 64-bit hash of a TEXT or DATE value (equality and ``in``);
- ``numbers.npy`` float64: a NUMBER, a DATE as seconds since 1970 (UTC), a BOOL as 0/1.

Evaluating a filter is a few vectorized comparisons over 1M rows (milliseconds), and nothing
is loaded until a filter uses a field. Hash equality could in theory collide, so the hits a
filtered search returns are checked once more against their stored metadata
(``core.filters.MetadataFilter.matches``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

FIELDS_DIR = "fields"
TYPES_FILE, HASHES_FILE, NUMBERS_FILE = "types.npy", "hashes.npy", "numbers.npy"
MAX_FIELDS = 64  # more distinct metadata keys than this: the first 64 seen are filterable

MISSING, TEXT, NUMBER, DATE, BOOL = 0, 1, 2, 3, 4

_DATE_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)


def parse_date(text: str) -> float | None:
    """Seconds since 1970 (UTC) of an ISO 8601 date or date-time; None if ``text`` is not one.

    A date alone means midnight UTC; a time without an offset is taken as UTC.
    """
    if not _DATE_RE.match(text):
        return None
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def text_hash(text: str) -> int:
    """A signed 64-bit hash of a string (never 0, which marks "no value")."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    h = h - (1 << 64) if h >= 1 << 63 else h
    return h or 1


def encode_value(value: Any) -> tuple[int, int, float]:
    """(type, hash, number) of one metadata value; lists, objects and null are MISSING."""
    if isinstance(value, bool):
        return BOOL, 0, float(value)
    if isinstance(value, int | float):
        f = float(value)
        return (NUMBER, 0, f) if np.isfinite(f) else (MISSING, 0, np.nan)
    if isinstance(value, str):
        when = parse_date(value)
        return (
            (DATE, text_hash(value), when) if when is not None else (TEXT, text_hash(value), np.nan)
        )
    return MISSING, 0, np.nan


def field_kind(type_counts: dict[int, int]) -> str:
    """The manifest's kind of a field from how many values of each type it holds."""
    present = {t for t, n in type_counts.items() if n and t != MISSING}
    if present == {NUMBER}:
        return "number"
    if present == {DATE}:
        return "date"
    if present == {BOOL}:
        return "bool"
    if present <= {TEXT, DATE}:
        return "text"
    return "mixed"


@dataclass(frozen=True)
class Column:
    """One field's three arrays (views into the memory-mapped files)."""

    types: np.ndarray
    hashes: np.ndarray
    numbers: np.ndarray


class FieldColumns:
    """The metadata columns of one version, memory-mapped on first use."""

    def __init__(self, folder: Path, names: list[str], rows: int, mmap: bool = True) -> None:
        self.folder = folder
        self.names = names
        self.rows = rows
        self._mmap = mmap
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            mode: Literal["r"] | None = "r" if self._mmap else None
            types, hashes, numbers = (
                np.load(self.folder / f, mmap_mode=mode)
                for f in (TYPES_FILE, HASHES_FILE, NUMBERS_FILE)
            )
            self._arrays = (types, hashes, numbers)
        assert self._arrays is not None
        return self._arrays

    def column(self, name: str) -> Column | None:
        """The arrays of field ``name``, or None when the version has no such field."""
        if name not in self.names:
            return None
        j = self.names.index(name)
        types, hashes, numbers = self._load()
        return Column(types[:, j], hashes[:, j], numbers[:, j])


def save_columns(folder: Path, types: np.ndarray, hashes: np.ndarray, numbers: np.ndarray) -> None:
    """Write the three arrays column-major (one field = one contiguous slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((TYPES_FILE, types), (HASHES_FILE, hashes), (NUMBERS_FILE, numbers)):
        np.save(folder / name, np.asfortranarray(arr))
