"""The seeded group split shared by the tuner (validation) and eval (test).

Splitting by group (an article, a product, a customer) keeps every record of a group on one
side, so the held-out side measures questions about material never trained on. How it
works, so anyone can reproduce it by hand:

1. Sort the distinct groups by name and shuffle them with ``random.Random(seed)``.
2. Walk that order, holding groups out until the held-out size reaches
   ``max(1, round(fraction * total size))``; a group that would leave nothing on the other
   side is passed over.

The tuner sizes a group by its number of examples; eval gives each group size 1, which
holds out the first ``max(1, round(fraction * n_groups))`` groups (at most n - 1).
"""

from __future__ import annotations

import random
from collections.abc import Mapping


def hold_out_groups(sizes: Mapping[str, int], fraction: float, seed: int) -> list[str]:
    """The groups to hold out, in the seeded order they were picked.

    Args:
        sizes: each group's size (records in it, or 1 to count groups).
        fraction: share of the total size to hold out.
        seed: seed of the shuffle.

    Returns:
        Held-out groups; empty when every group is too big to hold out.
    """
    total = sum(sizes.values())
    target = max(1, round(fraction * total))
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    held: list[str] = []
    count = 0
    for group in order:
        if count >= target:
            break
        if count + sizes[group] >= total:
            continue  # this group would leave nothing on the other side
        held.append(group)
        count += sizes[group]
    return held
