"""Dedup, length filter and a seeded train/validation split by group.

Splitting by group (an article, a product, a customer) keeps every question about one
group on one side, so validation measures questions about unseen material. Every step
returns counts; the tuner prints them and records them in the manifest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from ragtune.core.errors import DataError
from ragtune.tuner.formats import QAExample

T = TypeVar("T")


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def dedup(examples: Sequence[QAExample]) -> tuple[list[QAExample], int]:
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


def group_key(e: QAExample, group_by: str | None) -> str:
    """The split unit of an example: a named field, else its own group, else itself."""
    if group_by:
        if group_by == "group":
            return e.group or e.source
        v = e.meta.get(group_by)
        return str(v) if v is not None else f"<no {group_by}>"
    return e.group or e.source


def split(
    examples: Sequence[QAExample],
    val_fraction: float,
    seed: int,
    group_by: str | None = None,
) -> tuple[list[QAExample], list[QAExample]]:
    """A seeded split: whole groups go to validation until it holds ``val_fraction``.

    Raises:
        DataError: the validation part would leave no training data (or too few groups).
    """
    if val_fraction <= 0:
        return list(examples), []
    n = len(examples)
    groups: dict[str, list[QAExample]] = {}
    for e in examples:
        groups.setdefault(group_key(e, group_by), []).append(e)
    target = max(1, round(val_fraction * n))
    by = f" grouped by {group_by!r}" if group_by else ""
    if target >= n or len(groups) < 2:
        raise DataError(
            f"validation split larger than the data: --val-fraction {val_fraction} of "
            f"{n} examples in {len(groups)} group(s){by} leaves nothing to train on "
            "(use more data, a smaller --val-fraction, or --val-fraction 0)",
            field="val_fraction",
        )
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    val_keys: set[str] = set()
    count = 0
    for k in keys:
        if count >= target:
            break
        if count + len(groups[k]) >= n:
            continue  # this group would swallow all training data
        val_keys.add(k)
        count += len(groups[k])
    if not val_keys:
        raise DataError(
            f"validation split larger than the data: every group{by} is too big to hold out",
            field="val_fraction",
        )
    train = [e for e in examples if group_key(e, group_by) not in val_keys]
    val = [e for e in examples if group_key(e, group_by) in val_keys]
    return train, val
