"""The report's charts (matplotlib, Agg backend: no display needed), saved as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.eval.summary import ANSWER_METRICS

LABELS = {"em": "Exact match", "f1": "Token F1", "rouge_l": "ROUGE-L"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def metrics_chart(summary: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: EM / F1 / ROUGE-L per variant, with 95% bootstrap CI error bars."""
    plt = _plt()
    names = [n for n, v in summary["variants"].items() if "f1" in v]
    if not names:
        return None
    width = 0.8 / len(ANSWER_METRICS)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4), dpi=110)
    for j, m in enumerate(ANSWER_METRICS):
        means = [summary["variants"][n][m]["mean"] for n in names]
        lo = [means[i] - summary["variants"][n][m]["lo"] for i, n in enumerate(names)]
        hi = [summary["variants"][n][m]["hi"] - means[i] for i, n in enumerate(names)]
        xs = [i + (j - 1) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=LABELS[m])
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.set_ylabel("score (95% bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Answer quality per mode (n={summary['n_questions']})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_chart(
    records: Sequence[dict[str, Any]], names: Sequence[str], path: Path
) -> Path | None:
    """Box plots of per-request latency (seconds) per variant."""
    plt = _plt()
    data = [
        [r["total_ms"] / 1000 for r in records if r.get("variant") == n and "total_ms" in r]
        for n in names
    ]
    keep = [(n, d) for n, d in zip(names, data, strict=True) if d]
    if not keep:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(keep) + 2), 4), dpi=110)
    ax.boxplot([d for _, d in keep], showfliers=True)
    ax.set_xticks(range(1, len(keep) + 1), [n for n, _ in keep], rotation=15, ha="right")
    ax.set_ylabel("seconds per request (batched)")
    ax.set_title("Latency distribution")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def recall_chart(summary: dict[str, Any], path: Path) -> Path | None:
    """Retrieval recall@k against k, with CI error bars."""
    plt = _plt()
    r = summary.get("retrieval") or {}
    ks = sorted(int(k.split("@")[1]) for k in r if k.startswith("recall@"))
    if not ks:
        return None
    means = [r[f"recall@{k}"]["mean"] for k in ks]
    lo = [m - r[f"recall@{k}"]["lo"] for m, k in zip(means, ks, strict=True)]
    hi = [r[f"recall@{k}"]["hi"] - m for m, k in zip(means, ks, strict=True)]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    others = {lb: o for lb, o in (summary.get("retrievers") or {}).items() if o}
    label = "recall@k (gold doc)" + (", base index" if others else "")
    ax.errorbar(ks, means, yerr=[lo, hi], marker="o", capsize=3, label=label)
    for name, o in others.items():  # extra retrievers (a tuned embedder's index)
        oks = [k for k in ks if f"recall@{k}" in o]
        if oks:
            ax.plot(
                oks, [o[f"recall@{k}"]["mean"] for k in oks], marker="^", label=f"recall@k, {name}"
            )
    aic = r.get("answer_in_context") or {}
    if aic:
        ak = sorted(int(k) for k in aic)
        ax.plot(ak, [aic[str(k)] for k in ak], marker="s", ls="--", label="answer in top-k text")
    ax.set_xlabel("k (retrieved chunks)")
    ax.set_ylabel("share of questions")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ks)
    ax.set_title(f"Retrieval (n={r.get('n_with_gold', r.get('n'))})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_plots(
    summary: dict[str, Any], records: Sequence[dict[str, Any]], names: Sequence[str], folder: Path
) -> dict[str, Path]:
    """Write every chart that has data into ``folder``; return {chart name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    charts = {
        "metrics": metrics_chart(summary, folder / "metrics.png"),
        "latency": latency_chart(records, names, folder / "latency.png"),
        "recall": recall_chart(summary, folder / "recall_at_k.png"),
    }
    return {k: v for k, v in charts.items() if v is not None}
