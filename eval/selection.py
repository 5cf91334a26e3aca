"""Model selection on a validation split: pick one recipe out of a sweep without the test set.

Every candidate (one trained variant of a sweep) was evaluated on the same validation
questions, carved from the *train* articles. The rule, in order:

1. the best validation F1 (mean over the questions) wins;
2. candidates within ``tie_margin`` of the best are tied (with the default 0, only equal
   F1 ties, which small validation sets do produce);
3. among tied candidates the cheaper wins: fewer training tokens (what a retraining costs),
   then fewer prompt tokens per question at validation (what serving costs), then the
   earlier variant.

Each candidate is also compared with the picked one question by question (paired bootstrap
on F1), so the report says whether the validation set could tell them apart at all.
``selection.json`` in the run folder holds the result; ``eval.report`` shows it as the
"Model selection" section of the test report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.eval.stats import paired_bootstrap

SELECTION = "selection.json"


@dataclass
class Candidate:
    """One sweep variant's validation figures and costs."""

    key: str  # v1, v2, ...
    label: str  # the options that make it, "p_oracle=0.5 top_k=2"
    adapter: str
    n: int  # validation questions answered
    f1: dict[str, float]  # mean, lo, hi (95% bootstrap CI)
    em: float
    train_tokens: int  # tokens the training processed: the cost of a retraining
    train_seconds: float
    prompt_tokens: float  # mean prompt tokens at validation: the cost of serving
    per_question_f1: dict[str, float] = field(default_factory=dict, repr=False)


@dataclass
class Selection:
    picked: str  # the key of the picked candidate
    rule: str
    reason: str
    candidates: list[dict[str, Any]]  # each candidate's figures, plus vs_picked and tied
    tie_margin: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RULE = (
    "best validation F1; candidates within tie_margin of it are tied, and the cheaper of "
    "those wins (fewer training tokens, then fewer prompt tokens per question)"
)


def pick(candidates: list[Candidate], tie_margin: float = 0.0, n_boot: int = 10_000) -> Selection:
    """Apply the rule above; ``candidates`` must be non-empty and in variant order."""
    if not candidates:
        raise ValueError("nothing to pick from")
    best_f1 = max(c.f1["mean"] for c in candidates)
    tied = [c for c in candidates if c.f1["mean"] >= best_f1 - tie_margin - 1e-12]
    order = {c.key: i for i, c in enumerate(candidates)}
    chosen = min(tied, key=lambda c: (c.train_tokens, c.prompt_tokens, order[c.key]))
    rows = []
    for c in candidates:
        row = {k: v for k, v in asdict(c).items() if k != "per_question_f1"}
        row["tied"] = c in tied
        row["vs_picked"] = None if c is chosen else _paired(chosen, c, n_boot)
        rows.append(row)
    return Selection(
        picked=chosen.key,
        rule=RULE,
        reason=_reason(chosen, candidates, tied, rows, tie_margin),
        candidates=rows,
        tie_margin=tie_margin,
    )


def _paired(chosen: Candidate, other: Candidate, n_boot: int) -> dict[str, Any] | None:
    """other - chosen on F1, over the validation questions both answered."""
    common = sorted(set(chosen.per_question_f1) & set(other.per_question_f1))
    if not common:
        return None
    d = paired_bootstrap(
        [chosen.per_question_f1[q] for q in common],
        [other.per_question_f1[q] for q in common],
        names=(chosen.key, other.key),
        n_boot=n_boot,
    ).to_dict()
    return {k: d[k] for k in ("diff", "lo", "hi", "p_value", "significant", "n")}


def _ci(f1: dict[str, float]) -> str:
    return f"{f1['mean']:.3f} [{f1['lo']:.3f}, {f1['hi']:.3f}]"


def _reason(
    chosen: Candidate,
    candidates: list[Candidate],
    tied: list[Candidate],
    rows: list[dict[str, Any]],
    tie_margin: float,
) -> str:
    parts = [
        f"{chosen.key} ({chosen.label}) has validation F1 {_ci(chosen.f1)} on {chosen.n} "
        "questions from held-out train articles"
    ]
    best = max(candidates, key=lambda c: c.f1["mean"])
    others = [c for c in tied if c is not chosen]
    if others:
        names = ", ".join(c.key for c in others)
        within = "equal F1" if tie_margin == 0 else f"F1 within {tie_margin:g} of the best"
        parts.append(
            f"tied with {names} ({within}); picked as the cheapest: "
            f"{chosen.train_tokens:,} training tokens and {chosen.prompt_tokens:.0f} prompt "
            "tokens per question"
        )
    elif len(candidates) == 1:
        parts.append("the only variant")
    else:
        parts.append("the best of the sweep")
    if best is not chosen and best.f1["mean"] > chosen.f1["mean"]:
        parts.append(f"(the best point estimate is {best.key}'s {best.f1['mean']:.3f})")
    runner = [r for r in rows if r["vs_picked"] is not None]
    if runner:
        r = max(runner, key=lambda r: r["f1"]["mean"])
        d = r["vs_picked"]
        clear = (
            "the validation set tells them apart (the CI excludes zero)"
            if d["significant"]
            else "not significant: the validation set cannot tell them apart"
        )
        parts.append(
            f"next best {r['key']}: {d['diff']:+.3f} F1 vs the pick (paired 95% CI "
            f"{d['lo']:+.3f} to {d['hi']:+.3f}, n={d['n']}), {clear}"
        )
    return "; ".join(parts) + "."


def write_selection(folder: Path, data: dict[str, Any]) -> None:
    from ragtune.core.atomic import write_json_atomic

    write_json_atomic(folder / SELECTION, data)


def read_selection(folder: Path) -> dict[str, Any] | None:
    """The run folder's selection.json, if the run picked a variant on a validation split."""
    path = folder / SELECTION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def selection_rows(sel: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep table as the report shows it (strings, one row per variant)."""
    rows = []
    for c in sel.get("candidates") or []:
        d = c.get("vs_picked")
        rows.append(
            {
                "key": c["key"],
                "label": c["label"],
                "adapter": c["adapter"],
                "n": c["n"],
                "f1": _ci(c["f1"]),
                "em": f"{c['em']:.3f}",
                "vs_picked": "picked"
                if c["key"] == sel["picked"]
                else (f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "-"),
                "sig": bool(d and d["significant"]),
                "train_tokens": f"{c['train_tokens']:,}",
                "train_seconds": f"{c['train_seconds']:.0f}",
                "prompt_tokens": f"{c['prompt_tokens']:.0f}",
                "picked": c["key"] == sel["picked"],
                "tied": bool(c.get("tied")),
            }
        )
    return rows


def selection_markdown(sel: dict[str, Any]) -> list[str]:
    """The report's "Model selection" section, as Markdown lines."""
    split = sel.get("split") or {}
    lines = [
        "## Model selection (validation split: no test question was used)",
        "",
        f"Each variant was trained on {split.get('fit_articles', '?')} train articles and "
        f"scored on {split.get('questions', '?')} questions about "
        f"{split.get('validation_articles', '?')} other train articles (held out by article, "
        f"seed {split.get('seed', '?')}); only the picked variant was evaluated on the test "
        "split above.",
        "",
        f"Rule: {sel.get('rule', RULE)}.",
        "",
        f"**Picked {sel['picked']}**: {sel['reason']}",
        "",
        "| variant | options | adapter | n | validation F1 (95% CI) | EM | vs picked (paired 95% CI) | training tokens | training s | prompt tokens |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in selection_rows(sel):
        key = f"**{r['key']}**" if r["picked"] else r["key"]
        vs = f"**{r['vs_picked']}**" if r["sig"] else r["vs_picked"]
        lines.append(
            f"| {key} | {r['label']} | {r['adapter']} | {r['n']} | {r['f1']} | {r['em']} | "
            f"{vs} | {r['train_tokens']} | {r['train_seconds']} | {r['prompt_tokens']} |"
        )
    tested = sel.get("tested") or []
    if len(tested) > 1:
        lines += [
            "",
            f"Note: this run folder's test split has been evaluated for {len(tested)} "
            f"different picks over its reruns ({', '.join(tested)}); the figures above are "
            "the latest pick's.",
        ]
    return [*lines, ""]
