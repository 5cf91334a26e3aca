"""The experiment's ``[sweep]`` section: which adapter's recipe to choose, and among what.

```toml
[sweep]
adapter = "raft"            # the [adapters.KEY] whose recipe is chosen
validation_fraction = 0.25  # share of the TRAIN articles held out for validation (by article)
validation_questions = 40   # a seeded sample of their questions (all when left out)
seed = 0                    # the validation split's seed (default: [data] seed)
tie_margin = 0.0            # validation F1 within this of the best is a tie: the cheaper wins
[sweep.grid]                # every combination of these values is one variant
p_oracle = [0.5, 1.0]       # any `ragtune tune` option...
top_k = [2, 3]              # ...and the retrieval settings top_k and retrieval
```

A variant's tune options go on top of ``[adapters.KEY.tune]``; its retrieval settings
(``top_k``, ``retrieval``) are the settings it is trained with (RAFT passages: ``raft_k``
defaults to ``top_k``) and evaluated with, on the validation split and, if picked, on the
test split, where every retrieving mode then shares them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragtune.core.errors import InvalidInput

if TYPE_CHECKING:
    from ragtune.workflows.experiment_config import Experiment

SWEEP_KEYS = {
    "adapter",
    "validation_fraction",
    "validation_questions",
    "seed",
    "tie_margin",
    "grid",
}
RETRIEVAL_KEYS = ("top_k", "retrieval")  # settings, not tune options
# Tune options a sweep cannot vary: they name the data and the adapter, not the recipe.
FIXED_TUNE_KEYS = {"data", "name", "format", "template", "overwrite", "restart", "index"}
MAX_VARIANTS = 16  # a sweep trains every variant: keep it small


@dataclass(frozen=True)
class SweepVariant:
    """One combination of the grid."""

    key: str  # v1, v2, ... in grid order
    tune: dict[str, Any]  # tune options on top of the adapter's [tune]
    retrieval: dict[str, Any]  # top_k / retrieval settings

    @property
    def label(self) -> str:
        opts = {**self.tune, **self.retrieval}
        return " ".join(f"{k}={_show(v)}" for k, v in opts.items()) or "(as configured)"


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


@dataclass
class SweepSpec:
    """A checked ``[sweep]`` section."""

    adapter: str  # the [adapters.KEY] swept
    grid: dict[str, list[Any]]
    validation_fraction: float = 0.25
    validation_questions: int | None = None
    seed: int = 0
    tie_margin: float = 0.0
    variants: list[SweepVariant] = field(default_factory=list)

    def variant(self, key: str) -> SweepVariant:
        return next(v for v in self.variants if v.key == key)


def expand_grid(grid: dict[str, list[Any]]) -> list[SweepVariant]:
    """Every combination, in the order the keys and values are written (v1 first)."""
    keys = list(grid)
    out = []
    for i, values in enumerate(itertools.product(*(grid[k] for k in keys)), 1):
        combo = dict(zip(keys, values, strict=True))
        tune = {k: v for k, v in combo.items() if k not in RETRIEVAL_KEYS}
        retrieval = {k: v for k, v in combo.items() if k in RETRIEVAL_KEYS}
        out.append(SweepVariant(f"v{i}", tune, retrieval))
    return out


def load_sweep(raw: dict[str, Any], exp: Experiment) -> SweepSpec:
    """Check a ``[sweep]`` table against the experiment it belongs to."""
    from ragtune.tuner.args import TuneArgs
    from ragtune.workflows.experiment_config import mode_list

    extra = sorted(set(raw) - SWEEP_KEYS)
    if extra:
        raise InvalidInput(f"experiment [sweep]: unknown key(s) {', '.join(extra)}")
    key = raw.get("adapter")
    if not isinstance(key, str) or key not in exp.adapters:
        raise InvalidInput(
            "experiment [sweep] adapter must name one of the [adapters.*] sections "
            f"({', '.join(exp.adapters) or 'there are none'})"
        )
    if not any(m.partition(":")[2] == key for m in mode_list(exp) if not m.startswith("oracle")):
        raise InvalidInput(
            f"experiment [sweep] adapter {key!r} is not evaluated: add e.g. 'hybrid:{key}' "
            "to [eval] modes"
        )
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict) or not grid_raw:
        raise InvalidInput("experiment [sweep.grid] must list at least one option and its values")
    tune_fields = set(TuneArgs.__dataclass_fields__)
    grid: dict[str, list[Any]] = {}
    for name, values in grid_raw.items():
        norm = name.replace("-", "_")
        if norm in FIXED_TUNE_KEYS:
            raise InvalidInput(f"experiment [sweep.grid] {name}: not something a sweep can vary")
        if norm not in tune_fields and norm not in RETRIEVAL_KEYS:
            raise InvalidInput(
                f"experiment [sweep.grid] {name}: not a tune option or a retrieval setting "
                f"({', '.join(RETRIEVAL_KEYS)})"
            )
        vals = values if isinstance(values, list) else [values]
        if not vals:
            raise InvalidInput(f"experiment [sweep.grid] {name}: give at least one value")
        grid[norm] = vals
    spec = SweepSpec(
        adapter=key,
        grid=grid,
        validation_fraction=_number(raw, "validation_fraction", 0.25, float),
        validation_questions=raw.get("validation_questions"),
        seed=int(raw.get("seed", exp.split.seed)),
        tie_margin=_number(raw, "tie_margin", 0.0, float),
    )
    if not 0.0 < spec.validation_fraction < 1.0:
        raise InvalidInput("experiment [sweep] validation_fraction must be between 0 and 1")
    vq = spec.validation_questions
    if vq is not None and (not isinstance(vq, int) or vq < 1):
        raise InvalidInput("experiment [sweep] validation_questions must be a positive integer")
    if spec.tie_margin < 0:
        raise InvalidInput("experiment [sweep] tie_margin must not be negative")
    spec.variants = expand_grid(grid)
    if len(spec.variants) > MAX_VARIANTS:
        raise InvalidInput(
            f"experiment [sweep.grid] makes {len(spec.variants)} variants; at most "
            f"{MAX_VARIANTS} (every variant is trained and evaluated)"
        )
    base = exp.adapters[key].tune
    for v in spec.variants:  # every variant's options must be valid before any training
        _check_variant(v, base, exp.adapter_name(key))
    return spec


def _number(raw: dict[str, Any], key: str, default: float, kind: type) -> Any:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"experiment [sweep] {key} must be a number")
    return kind(value)


def _check_variant(v: SweepVariant, base: dict[str, Any], name: str) -> None:
    from ragtune.tuner.args import TuneArgs

    try:
        TuneArgs.from_dict({**base, **v.tune, "data": ["x.json"], "name": name}).validate()
    except (InvalidInput, TypeError) as e:
        msg = e.message if isinstance(e, InvalidInput) else str(e)
        raise InvalidInput(f"experiment [sweep] variant {v.key} ({v.label}): {msg}") from e
    k = v.retrieval.get("top_k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100):
        raise InvalidInput(f"experiment [sweep] variant {v.key}: top_k must be between 1 and 100")
    method = v.retrieval.get("retrieval")
    if method is not None and method not in ("dense", "bm25", "hybrid"):
        raise InvalidInput(
            f"experiment [sweep] variant {v.key}: retrieval must be dense, bm25 or hybrid"
        )
