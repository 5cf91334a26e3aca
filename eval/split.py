"""The train/test split: by group (SQuAD: by article), seeded, the same for every mode.

How it works, so anyone can reproduce it by hand (``core.split.hold_out_groups``, the
splitter the tuner's validation split uses too, with every group of size 1):

1. Take the distinct groups (``QARecord.split_group``: SQuAD's article title; an item
   without a group is its own group) and sort them by name.
2. Shuffle that list with ``random.Random(seed)``.
3. The first ``round(n_groups * test_fraction)`` groups (at least 1, at most n-1) are the
   test groups; the rest are train. An explicit ``test_groups`` list replaces steps 1-3.

Whole groups go to one side, so a test question's article was never seen in training:
a closed-book adapter cannot have memorized its answer, and RAFT data never quotes it.
The experiment writes both sides into the run folder (``train.json`` / ``test.json``), the
tuner trains on the train file and every mode is evaluated on the test file.

``sample_items`` picks ``--limit`` questions: a seeded shuffle, then the first N, so a run
with a larger limit is a superset of one with a smaller limit (and resumes cleanly).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ragtune.core.errors import InvalidInput
from ragtune.core.qa import QARecord
from ragtune.core.split import hold_out_groups

SPLITS = ("all", "train", "test")


@dataclass(frozen=True)
class SplitSpec:
    """How to split; recorded in config.json so a run can be repeated exactly."""

    test_fraction: float = 0.25
    seed: int = 0
    test_groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise InvalidInput("test_fraction must be between 0 and 1", field="test_fraction")


def split_groups(groups: Sequence[str], spec: SplitSpec) -> tuple[list[str], list[str]]:
    """Return (train_groups, test_groups), each in sorted order."""
    distinct = sorted(set(groups))
    if spec.test_groups is not None:
        unknown = sorted(set(spec.test_groups) - set(distinct))
        if unknown:
            raise InvalidInput(
                f"test_groups not in the dataset: {', '.join(unknown[:5])}", field="test_groups"
            )
        test = set(spec.test_groups)
    else:
        if len(distinct) < 2:
            raise InvalidInput(
                "cannot split a dataset with fewer than 2 groups into train and test",
                field="split",
            )
        test = set(hold_out_groups(dict.fromkeys(distinct, 1), spec.test_fraction, spec.seed))
    return [g for g in distinct if g not in test], [g for g in distinct if g in test]


def split_items(
    items: Sequence[QARecord], spec: SplitSpec
) -> tuple[list[QARecord], list[QARecord]]:
    """Split items by group; returns (train, test) keeping the dataset order."""
    _, test_groups = split_groups([it.split_group for it in items], spec)
    test = set(test_groups)
    return (
        [it for it in items if it.split_group not in test],
        [it for it in items if it.split_group in test],
    )


def select_split(items: Sequence[QARecord], split: str, spec: SplitSpec) -> list[QARecord]:
    """The items of one side: ``all`` (no split), ``train`` or ``test``."""
    if split not in SPLITS:
        raise InvalidInput(f"split must be one of {', '.join(SPLITS)}", field="split")
    if split == "all":
        return list(items)
    train, test = split_items(items, spec)
    return train if split == "train" else test


def sample_items(items: Sequence[QARecord], limit: int | None, seed: int) -> list[QARecord]:
    """A seeded sample of ``limit`` items (prefix-stable: limit 50 is inside limit 100)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise InvalidInput("limit must be at least 1", field="limit")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:limit])  # dataset order reads better in reports
    return [items[i] for i in keep]
