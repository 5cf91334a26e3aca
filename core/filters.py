"""The metadata filter language, one for every entry point (``ragtune search --filter``,
``POST /v1/query`` ``filter``, the OpenAI extra body, ``ragtune eval run``).

A filter is a JSON object of ``field: condition``; every condition must hold (AND)::

    {"file_type": "pdf"}                             equality (a string, number or bool)
    {"tenant": {"in": ["acme", "globex"]}}           one of several values
    {"year": {"gte": 2020, "lt": 2024}}              a range on numbers
    {"modified": {"gte": "2026-01-01"}}              a range on ISO 8601 dates (UTC)
    {"title": {"eq": "Nile"}}                        equality, spelled out

Operators: ``eq``, ``in``, ``gt``, ``gte``, ``lt``, ``lte``. Strings compare exactly, numbers
by value (2020 equals 2020.0), dates as instants. A chunk without the field never matches.
Parsing checks the syntax (``parse_filter``); evaluating checks the fields against the
index's metadata columns (``MetadataFilter.mask``). Both raise ``InvalidInput`` with
``field="filter"`` and a message naming the problem: bad syntax is a 400; a filter this
index cannot answer (a field none of its chunks has, a range over another kind of value) is
a ``FilterMismatch``, 409, like any request that does not fit the index's state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragtune.core.errors import FilterMismatch, InvalidInput
from ragtune.core.fields import BOOL, DATE, NUMBER, FieldColumns, parse_date, text_hash

OPERATORS = ("eq", "in", "gt", "gte", "lt", "lte")
RANGES = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}
MAX_FIELDS = 32
MAX_IN_VALUES = 1000
MAX_FIELD_CHARS = 128

Scalar = str | int | float | bool


def _bad(message: str) -> InvalidInput:
    return InvalidInput(f"filter: {message}", field="filter")


def _misfit(message: str) -> FilterMismatch:
    return FilterMismatch(f"filter: {message}", field="filter")


@dataclass(frozen=True)
class Condition:
    """One test on one field: ``op`` is eq/in (``values``: what may match) or a range."""

    field: str
    op: str
    values: tuple[Scalar, ...]

    def to_json(self) -> Any:
        return list(self.values) if self.op == "in" else self.values[0]


@dataclass(frozen=True)
class MetadataFilter:
    """A parsed filter: conditions that must all hold."""

    conditions: tuple[Condition, ...]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.conditions:
            out.setdefault(c.field, {})[c.op] = c.to_json()
        return out

    def key(self) -> str:
        """A canonical string: equal filters give equal keys (batches group on it)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def mask(self, columns: FieldColumns, index: str) -> np.ndarray:
        """Which rows (the version's positions) pass; InvalidInput names a field the index
        does not have or a comparison its values cannot take."""
        keep: np.ndarray | None = None
        for c in self.conditions:
            col = columns.column(c.field)
            if col is None:
                have = ", ".join(columns.names) or "none"
                raise _misfit(
                    f"field {c.field!r} is not a metadata field of index {index!r} "
                    f"(its fields: {have})"
                )
            m = _condition_mask(c, col.types, col.hashes, col.numbers, index)
            if keep is None:
                keep = m
            else:
                keep &= m
        return np.asarray(keep) if keep is not None else np.ones(columns.rows, dtype=bool)

    def matches(self, metadata: dict[str, Any]) -> bool:
        """The same test on one chunk's metadata (the check on a filtered search's hits)."""
        for c in self.conditions:
            value = metadata.get(c.field)
            if c.op in ("eq", "in"):
                if not any(_equal(value, v) for v in c.values):
                    return False
            else:
                mine, bound = _comparable(value, c.values[0])
                if mine is None or not RANGES[c.op](mine, bound):
                    return False
        return True


def _equal(value: Any, wanted: Scalar) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(wanted, str):
        return isinstance(value, str) and value == wanted
    return isinstance(value, int | float) and float(value) == float(wanted)


def _comparable(value: Any, bound: Scalar) -> tuple[float | None, float]:
    """(the value, the bound) as numbers when they are the same kind (number or date)."""
    if isinstance(bound, str):
        when = parse_date(value) if isinstance(value, str) else None
        b = parse_date(bound)
        assert b is not None  # checked by parse_filter
        return when, b
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, float(bound)
    return float(value), float(bound)


def _condition_mask(
    c: Condition, types: np.ndarray, hashes: np.ndarray, numbers: np.ndarray, index: str
) -> np.ndarray:
    if c.op in ("eq", "in"):
        texts = [text_hash(v) for v in c.values if isinstance(v, str)]
        nums = [float(v) for v in c.values if not isinstance(v, str | bool)]
        bools = [float(v) for v in c.values if isinstance(v, bool)]
        # Only text and date values have a hash (never 0), so a hash match needs no type
        # check; a number column also holds dates and booleans, so those matches do.
        out = _any_equal(hashes, texts) if texts else np.zeros(len(types), dtype=bool)
        for values, kind in ((nums, NUMBER), (bools, BOOL)):
            if values:
                out |= _any_equal(numbers, values) & (types == kind)
        return out
    bound = c.values[0]
    want = DATE if isinstance(bound, str) else NUMBER
    of_type = types == want
    if not of_type.any():
        what = "dates" if want == DATE else "numbers"
        raise _misfit(
            f"field {c.field!r}: {c.op} compares {what}, but no chunk of index {index!r} has "
            f"{'a date' if want == DATE else 'a number'} there"
        )
    b = parse_date(bound) if isinstance(bound, str) else float(bound)
    assert b is not None  # a date bound was checked by parse_filter
    with np.errstate(invalid="ignore"):
        return of_type & RANGES[c.op](numbers, b)


def _any_equal(column: np.ndarray, values: list[Any]) -> np.ndarray:
    """column == any of values: a few comparisons (np.isin sorts the whole column)."""
    if len(values) > 16:
        return np.isin(column, values)
    out = column == values[0]
    for v in values[1:]:
        out |= column == v
    return out


def _scalar(field: str, value: Any, op: str) -> Scalar:
    if value is None:
        raise _bad(f"field {field!r}: null is not a value (use a string, a number or true/false)")
    if isinstance(value, list | tuple):
        raise _bad(f"field {field!r}: a list needs the 'in' operator: {{\"in\": [...]}}")
    if isinstance(value, dict):
        raise _bad(f"field {field!r}: {op} takes a string, a number or true/false, not an object")
    if isinstance(value, float) and not np.isfinite(value):
        raise _bad(f"field {field!r}: {value!r} is not a usable number")
    if not isinstance(value, str | int | float | bool):
        raise _bad(f"field {field!r}: {type(value).__name__} is not a filter value")
    return value


def _bound(field: str, op: str, value: Any) -> Scalar:
    v = _scalar(field, value, op)
    if isinstance(v, bool) or (isinstance(v, str) and parse_date(v) is None):
        raise _bad(
            f"field {field!r}: {op} needs a number or an ISO 8601 date "
            f'(e.g. "2026-01-31"), got {json.dumps(v)}'
        )
    return v


def _conditions(field: str, spec: Any) -> list[Condition]:
    if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS:
        raise _bad(f"field names are 1-{MAX_FIELD_CHARS} characters, got {field!r}")
    if not isinstance(spec, dict):
        return [Condition(field, "eq", (_scalar(field, spec, "eq"),))]
    if not spec:
        raise _bad(f'field {field!r}: an empty condition (use e.g. {{"eq": ...}})')
    out = []
    kinds = set()
    for op, value in spec.items():
        if op not in OPERATORS:
            raise _bad(f"field {field!r}: unknown operator {op!r} (use {', '.join(OPERATORS)})")
        if op == "in":
            if not isinstance(value, list) or not value:
                raise _bad(f"field {field!r}: 'in' takes a non-empty list of values")
            if len(value) > MAX_IN_VALUES:
                raise _bad(f"field {field!r}: 'in' takes at most {MAX_IN_VALUES} values")
            out.append(Condition(field, op, tuple(_scalar(field, v, "in") for v in value)))
        elif op == "eq":
            out.append(Condition(field, op, (_scalar(field, value, op),)))
        else:
            b = _bound(field, op, value)
            kinds.add(isinstance(b, str))
            out.append(Condition(field, op, (b,)))
    if len(kinds) > 1:
        raise _bad(f"field {field!r}: a range compares either numbers or dates, not both")
    return out


def parse_filter(obj: Any) -> MetadataFilter | None:
    """Check a filter's syntax; None (or an empty object) means no filter.

    Raises:
        InvalidInput: naming the field and the problem (``field="filter"``).
    """
    if obj is None:
        return None
    if isinstance(obj, MetadataFilter):
        return obj
    if not isinstance(obj, dict):
        raise _bad(
            'a filter is a JSON object of field: condition, e.g. {"file_type": "pdf"} '
            f"(got {type(obj).__name__})"
        )
    if len(obj) > MAX_FIELDS:
        raise _bad(f"at most {MAX_FIELDS} fields")
    conditions = [c for field, spec in obj.items() for c in _conditions(field, spec)]
    return MetadataFilter(tuple(conditions)) if conditions else None


def parse_filter_text(text: str) -> MetadataFilter | None:
    """A filter given as JSON text (the CLI's --filter)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(
            f"not valid JSON ({e.msg} at column {e.colno}); quote it, e.g. "
            '--filter \'{"file_type": "pdf"}\''
        ) from None
    return parse_filter(obj)
