"""Uncertainty: bootstrap confidence intervals and paired tests between modes.

Every mode answers the same questions, so differences are tested *paired* (question by
question): resampling questions keeps each question's pair of scores together, which cancels
the large question-to-question variation in difficulty and makes small differences visible.

- ``bootstrap_ci``: percentile bootstrap of the mean (default 10,000 resamples).
- ``paired_bootstrap``: bootstrap of the mean difference b - a; CI and a two-sided p-value
  (twice the share of resampled differences on the other side of zero).
- ``mcnemar``: exact McNemar test on binary outcomes (exact match): only the questions where
  the two modes disagree count; under the null each is a fair coin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

N_BOOT = 10_000
ALPHA = 0.05


@dataclass(frozen=True)
class CI:
    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class PairedResult:
    """Mode b minus mode a on the same questions."""

    a: str
    b: str
    metric: str
    diff: float
    lo: float
    hi: float
    p_value: float
    n: int

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _resample_means(values: Any, n_boot: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(values)
    # Chunked so 10k resamples of a few thousand questions stay within a few MB.
    out = np.empty(n_boot)
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0
) -> CI:
    """Percentile-bootstrap (1 - alpha) interval of the mean."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return CI(float("nan"), float("nan"), float("nan"), 0)
    if len(x) == 1 or np.all(x == x[0]):
        m = float(x.mean())
        return CI(m, m, m, len(x))
    means = _resample_means(x, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return CI(float(x.mean()), float(lo), float(hi), len(x))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    names: tuple[str, str] = ("a", "b"),
    metric: str = "f1",
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> PairedResult:
    """Mean of b - a over paired questions, its bootstrap CI and a two-sided p-value."""
    import numpy as np

    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError("paired samples must have the same length")
    d = xb - xa
    n = len(d)
    if n == 0:
        nan = float("nan")
        return PairedResult(names[0], names[1], metric, nan, nan, nan, nan, 0)
    mean = float(d.mean())
    if np.all(d == d[0]):
        return PairedResult(
            names[0], names[1], metric, mean, mean, mean, 1.0 if mean == 0 else 0.0, n
        )
    means = _resample_means(d, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Two-sided p: how often the resampled mean lands on the far side of zero (+1 smoothing,
    # so a p-value is never exactly 0 from a finite number of resamples).
    far = np.sum(means <= 0) if mean > 0 else np.sum(means >= 0)
    p = min(1.0, 2 * (far + 1) / (n_boot + 1))
    return PairedResult(names[0], names[1], metric, mean, float(lo), float(hi), float(p), n)


@dataclass(frozen=True)
class McNemarResult:
    a: str
    b: str
    only_a: int  # a right, b wrong
    only_b: int  # b right, a wrong
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(
    a: Sequence[bool | float], b: Sequence[bool | float], names: tuple[str, str] = ("a", "b")
) -> McNemarResult:
    """Exact (binomial) two-sided McNemar test on paired binary outcomes."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return McNemarResult(names[0], names[1], 0, 0, 1.0)
    k = min(only_a, only_b)
    # P(X <= k) for X ~ Binomial(n, 1/2), doubled; exact integer arithmetic, then one division.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(1.0, 2 * tail / 2**n)
    return McNemarResult(names[0], names[1], only_a, only_b, p)
