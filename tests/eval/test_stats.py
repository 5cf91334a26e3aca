"""Bootstrap CIs cover the truth; paired tests find a planted difference and not a null one."""

from __future__ import annotations

import numpy as np
import pytest

from ragtune.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap


def test_ci_covers_true_mean_most_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    trials = 100
    for t in range(trials):
        x = rng.binomial(1, 0.3, size=200)  # true mean 0.3
        ci = bootstrap_ci(x, n_boot=1000, seed=t)
        assert ci.lo <= ci.mean <= ci.hi
        covered += ci.lo <= 0.3 <= ci.hi
    # nominal 95%; with 100 trials anything below ~85% would mean a broken interval
    assert covered >= 85


def test_ci_degenerate_inputs() -> None:
    assert bootstrap_ci([]).n == 0
    c = bootstrap_ci([1.0, 1.0, 1.0])
    assert (c.mean, c.lo, c.hi) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_detects_planted_difference() -> None:
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, size=300)  # question difficulty, shared by both modes
    a = np.clip(base + rng.normal(0, 0.1, 300), 0, 1)
    b = np.clip(base + 0.08 + rng.normal(0, 0.1, 300), 0, 1)
    r = paired_bootstrap(a, b, names=("rag", "hybrid"), n_boot=2000)
    assert r.significant and r.lo > 0
    assert r.diff == pytest.approx(float(np.mean(b - a)))
    assert r.p_value < 0.01


def test_paired_bootstrap_null_difference_is_not_significant() -> None:
    rng = np.random.default_rng(3)
    hits = 0
    for t in range(40):
        base = rng.uniform(0, 1, size=200)
        a = base + rng.normal(0, 0.1, 200)
        b = base + rng.normal(0, 0.1, 200)
        hits += paired_bootstrap(a, b, n_boot=1000, seed=t).significant
    assert hits <= 6  # ~5% false positives expected


def test_mcnemar_exact_values() -> None:
    # 10 discordant pairs all favouring b: p = 2 * 0.5**10
    a = [0] * 10 + [1] * 5
    b = [1] * 10 + [1] * 5
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b) == (0, 10)
    assert r.p_value == pytest.approx(2 * 0.5**10)
    # balanced disagreement: p = 1
    assert mcnemar([1, 0], [0, 1]).p_value == pytest.approx(1.0)
    assert mcnemar([1, 1], [1, 1]).p_value == 1.0
    # large n stays finite
    big = mcnemar([1] * 3000 + [0] * 3000, [0] * 3000 + [1] * 3000)
    assert big.p_value == pytest.approx(1.0)
