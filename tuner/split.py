"""Dedup, length filter and a seeded train/validation split by group.

The split is ``core.split.hold_out_groups`` with each group sized by its number of
examples, so validation holds about ``val_fraction`` of the examples and never a question
about a training group. Every step returns counts; the tuner prints them and records them
in the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from ragtune.core.errors import DataError
from ragtune.core.qa import QARecord
from ragtune.core.split import hold_out_groups

T = TypeVar("T")


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def dedup(examples: Sequence[QARecord]) -> tuple[list[QARecord], int]:
    """Drop exact repeats (same question, answer and context, ignoring case and spacing)."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for e in examples:
        key = (_norm(e.question), _norm(e.answer), _norm(e.context))
        if key in seen:
            continue
        seen.add(key)
        kept.append(e)
    return kept, len(examples) - len(kept)


def length_filter(
    items: Sequence[T], length: Callable[[T], int], max_length: int
) -> tuple[list[T], int]:
    """Keep items whose length (in tokens) is at most ``max_length``; return the drop count."""
    kept = [x for x in items if length(x) <= max_length]
    return kept, len(items) - len(kept)


def group_key(e: QARecord, group_by: str | None) -> str:
    """The split unit of an example: a named field, else its own group, else itself."""
    if group_by and group_by != "group":
        v = e.meta.get(group_by)
        return str(v) if v is not None else f"<no {group_by}>"
    return e.split_group


def split(
    examples: Sequence[QARecord],
    val_fraction: float,
    seed: int,
    group_by: str | None = None,
) -> tuple[list[QARecord], list[QARecord]]:
    """A seeded split: whole groups go to validation until it holds ``val_fraction``.

    Raises:
        DataError: the validation part would leave no training data (or too few groups).
    """
    if val_fraction <= 0:
        return list(examples), []
    n = len(examples)
    sizes = Counter(group_key(e, group_by) for e in examples)
    target = max(1, round(val_fraction * n))
    by = f" grouped by {group_by!r}" if group_by else ""
    if target >= n or len(sizes) < 2:
        raise DataError(
            f"validation split larger than the data: --val-fraction {val_fraction} of "
            f"{n} examples in {len(sizes)} group(s){by} leaves nothing to train on "
            "(use more data, a smaller --val-fraction, or --val-fraction 0)",
            field="val_fraction",
        )
    val_keys = set(hold_out_groups(sizes, val_fraction, seed))
    if not val_keys:
        raise DataError(
            f"validation split larger than the data: every group{by} is too big to hold out",
            field="val_fraction",
        )
    train = [e for e in examples if group_key(e, group_by) not in val_keys]
    val = [e for e in examples if group_key(e, group_by) in val_keys]
    return train, val
