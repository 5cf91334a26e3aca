"""The one group splitter (core.split) and the demo's splits, pinned.

The pinned titles were computed with the two splitters that existed before core.split (the
tuner's greedy split and eval's "first round(n * f) shuffled groups"): the demo must keep
the same train/validation/test articles, hence the same trained adapters and scores.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from ragtune.core.qa import load_squad_json, squad_titles
from ragtune.core.split import hold_out_groups
from ragtune.eval.datasets import subset_squad
from ragtune.eval.split import SplitSpec, split_groups
from ragtune.tuner.formats import load_examples
from ragtune.tuner.split import dedup, split
from ragtune.workflows.experiment import sample_questions

DEMO = Path(str(files("ragtune.examples").joinpath("squad-mini", "demo.json")))


def test_hold_out_is_seeded_and_stops_at_the_fraction() -> None:
    sizes = {f"g{i}": 10 for i in range(10)}
    held = hold_out_groups(sizes, 0.3, seed=3)
    assert len(held) == 3 and held == hold_out_groups(sizes, 0.3, seed=3)
    assert hold_out_groups(sizes, 0.3, seed=4) != held
    # the groups are sorted before the shuffle: their order in the mapping does not matter
    assert hold_out_groups(dict(reversed(sizes.items())), 0.3, seed=3) == held


def test_hold_out_passes_over_a_group_that_would_take_everything() -> None:
    sizes = {"big": 8, "a": 1, "b": 1}
    picks = {frozenset(hold_out_groups(sizes, 0.9, seed)) for seed in range(20)}
    # held out: up to the 9 of 10 asked for, never all 10; after a and b, big is passed over
    assert picks == {frozenset({"big", "a"}), frozenset({"big", "b"}), frozenset({"a", "b"})}
    assert hold_out_groups({"only": 4}, 0.5, 0) == []


def test_unit_sizes_hold_out_round_fraction_groups_at_most_n_minus_1() -> None:
    groups = dict.fromkeys("abcdefgh", 1)
    assert len(hold_out_groups(groups, 0.25, 0)) == 2
    assert len(hold_out_groups(groups, 0.01, 0)) == 1  # at least one
    assert len(hold_out_groups(groups, 0.99, 0)) == 7  # never all


@pytest.mark.parametrize(
    ("fraction", "seed", "test_titles"),
    [
        (0.25, 0, ["Apollo_program", "Packet_switching", "Prime_number"]),  # the demo's
        (
            0.5,
            1,
            [
                "Amazon_rainforest",
                "Harvard_University",
                "Kenya",
                "Oxygen",
                "Packet_switching",
                "Steam_engine",
            ],
        ),
        (0.1, 7, ["Oxygen"]),
    ],
)
def test_demo_test_articles_are_pinned(fraction: float, seed: int, test_titles: list) -> None:
    titles = squad_titles(load_squad_json(DEMO))
    train, test = split_groups(titles, SplitSpec(fraction, seed))
    assert test == test_titles
    assert sorted(train + test) == sorted(titles)


@pytest.mark.parametrize(
    ("questions", "val_fraction", "n_val", "val_titles"),
    [
        (300, 0.1, 31, ["Genghis_Khan"]),  # the demo's closed-book adapter
        (100, 0.1, 15, ["Genghis_Khan"]),  # the demo's RAFT adapter
        (None, 0.1, 55, ["Genghis_Khan"]),
        (None, 0.3, 174, ["Genghis_Khan", "Oxygen", "Rhine"]),
    ],
)
def test_demo_validation_articles_are_pinned(
    tmp_path: Path, questions: int | None, val_fraction: float, n_val: int, val_titles: list
) -> None:
    """The tuner's validation split of the demo's train articles, as the demo draws them
    (a seeded sample of ``questions``, experiment seed 0, the tuner's default seed 42)."""
    raw = load_squad_json(DEMO)
    train_titles, _ = split_groups(squad_titles(raw), SplitSpec(0.25, 0))
    data = tmp_path / "train.json"
    data.write_text(json.dumps(sample_questions(subset_squad(raw, train_titles), questions, 0)))
    examples, _ = dedup(load_examples(data, "squad").examples)
    train, val = split(examples, val_fraction, seed=42)
    assert len(val) == n_val and len(train) + len(val) == len(examples)
    assert sorted({e.group for e in val}) == val_titles
