"""Build and update a version's metadata columns (``core.fields`` describes the format).

An update keeps the previous version's rows for the chunks it keeps and encodes only the new
chunks' metadata; a field seen for the first time gets a new column (empty for the old rows),
and a field no chunk carries any more is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.fields import (
    HASHES_FILE,
    MAX_FIELDS,
    MISSING,
    NUMBERS_FILE,
    TYPES_FILE,
    encode_value,
    field_kind,
    save_columns,
)
from ragtune.core.manifests import FieldInfo


@dataclass
class Columns:
    """The three arrays (rows x fields) and the field names, in column order."""

    names: list[str]
    types: np.ndarray  # int8
    hashes: np.ndarray  # int64
    numbers: np.ndarray  # float64

    @classmethod
    def empty(cls, rows: int = 0, names: list[str] | None = None) -> Columns:
        f = len(names or [])
        return cls(
            list(names or []),
            np.zeros((rows, f), dtype=np.int8),
            np.zeros((rows, f), dtype=np.int64),
            np.full((rows, f), np.nan, dtype=np.float64),
        )

    @classmethod
    def load(cls, folder: Path, names: list[str]) -> Columns:
        return cls(
            list(names),
            np.load(folder / TYPES_FILE, mmap_mode="r"),
            np.load(folder / HASHES_FILE, mmap_mode="r"),
            np.load(folder / NUMBERS_FILE, mmap_mode="r"),
        )

    @property
    def rows(self) -> int:
        return int(self.types.shape[0])

    def keep(self, mask: np.ndarray) -> Columns:
        return Columns(
            self.names,
            np.asarray(self.types[mask]),
            np.asarray(self.hashes[mask]),
            np.asarray(self.numbers[mask]),
        )

    def widened(self, names: list[str]) -> Columns:
        """The same rows with columns for ``names`` (a superset, same order first)."""
        if names == self.names:
            return self
        out = Columns.empty(self.rows, names)
        f = len(self.names)
        out.types[:, :f], out.hashes[:, :f], out.numbers[:, :f] = (
            self.types,
            self.hashes,
            self.numbers,
        )
        return out

    def append(self, other: Columns) -> Columns:
        names = self.names + [n for n in other.names if n not in self.names]
        a, b = self.widened(names), other.widened(names)
        return Columns(
            names,
            np.concatenate([a.types, b.types]),
            np.concatenate([a.hashes, b.hashes]),
            np.concatenate([a.numbers, b.numbers]),
        )

    def compact(self) -> tuple[Columns, dict[str, FieldInfo]]:
        """Drop fields no row carries; return the manifest's description of the others."""
        infos: dict[str, FieldInfo] = {}
        keep_cols = []
        for j, name in enumerate(self.names):
            counts = np.bincount(np.asarray(self.types[:, j], dtype=np.int64), minlength=5)
            present = int(self.rows - counts[MISSING])
            if present:
                keep_cols.append(j)
                infos[name] = FieldInfo(
                    kind=field_kind(dict(enumerate(counts.tolist()))),  # type: ignore[arg-type]
                    chunks=present,
                )
        if len(keep_cols) == len(self.names):
            return self, infos
        cols = Columns(
            [self.names[j] for j in keep_cols],
            np.asarray(self.types[:, keep_cols]),
            np.asarray(self.hashes[:, keep_cols]),
            np.asarray(self.numbers[:, keep_cols]),
        )
        return cols, infos

    def save(self, folder: Path) -> None:
        save_columns(folder, self.types, self.hashes, self.numbers)


def encode_documents(
    metadatas: Sequence[dict[str, Any]], chunk_counts: Sequence[int], known: list[str]
) -> Columns:
    """Columns for new chunks: each document's metadata repeated over its chunks.

    ``known``: the fields that already have columns; a new key gets a column after them while
    there is room (``MAX_FIELDS``).
    """
    names = list(known)
    index = {n: j for j, n in enumerate(names)}
    docs = len(metadatas)
    # One set of arrays per field, made when the field first shows up (no per-cell objects).
    cols: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    cache: dict[Any, tuple[int, int, float]] = {}
    for d, meta in enumerate(metadatas):
        for key, value in meta.items():
            j = index.get(key)
            if j is None:
                if len(names) >= MAX_FIELDS or not isinstance(key, str):
                    continue
                j = index[key] = len(names)
                names.append(key)
            try:
                enc = cache[(type(value), value)]
            except TypeError:  # unhashable (a list or an object): not filterable
                continue
            except KeyError:
                enc = cache[(type(value), value)] = encode_value(value)
            if enc[0] == MISSING:
                continue
            col = cols.get(j)
            if col is None:
                col = cols[j] = (
                    np.zeros(docs, dtype=np.int8),
                    np.zeros(docs, dtype=np.int64),
                    np.full(docs, np.nan, dtype=np.float64),
                )
            col[0][d], col[1][d], col[2][d] = enc
        if len(cache) > 100_000:  # mostly unique values (paths, titles): do not hoard them
            cache.clear()
    doc_cols = Columns.empty(docs, names)
    for j, (t, h, x) in cols.items():
        doc_cols.types[:, j], doc_cols.hashes[:, j], doc_cols.numbers[:, j] = t, h, x
    counts = np.asarray(chunk_counts, dtype=np.int64)
    return Columns(
        names,
        np.repeat(doc_cols.types, counts, axis=0),
        np.repeat(doc_cols.hashes, counts, axis=0),
        np.repeat(doc_cols.numbers, counts, axis=0),
    )
