"""report.md and a self-contained report.html (charts embedded as base64 PNG data URIs).

The HTML needs no other file, so it can be mailed or attached to a ticket; the PNGs are
also kept in ``plots/`` for the Markdown report.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.core.atomic import write_text_atomic
from ragtune.core.qa import QARecord
from ragtune.eval.plots import make_plots
from ragtune.eval.selection import read_selection, selection_markdown, selection_rows
from ragtune.eval.variants import Variant

TITLES = {
    "metrics": "EM, F1 and ROUGE-L per mode with 95% CIs",
    "latency": "Latency per request",
    "recall": "Retrieval recall@k",
}
MAX_DISAGREEMENTS = 25


def _ci(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def metric_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, v in summary["variants"].items():
        if "f1" not in v:
            rows.append(
                {
                    "name": name,
                    "n": 0,
                    **dict.fromkeys(
                        ("em", "f1", "rouge_l", "aic", "latency", "spq", "tps", "prompt"), "-"
                    ),
                }
            )
            continue
        lat = v["latency_ms"]
        rows.append(
            {
                "name": name,
                "n": v["n"],
                "em": _ci(v["em"]),
                "f1": _ci(v["f1"]),
                "rouge_l": _ci(v["rouge_l"]),
                "aic": _ci(v.get("answer_in_context"), 2),
                "latency": f"{lat['p50'] / 1000:.2f} / {lat['p95'] / 1000:.2f}",
                "spq": _num(v["s_per_question"]),
                "tps": _num(v["tokens_per_s"], ".1f"),
                "prompt": _num(v["prompt_tokens_mean"], ".0f"),
            }
        )
    return rows


def retrieval_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    r = summary.get("retrieval")
    if not r:
        return []
    rows = [(k, _ci(v)) for k, v in r.items() if isinstance(v, dict) and "mean" in v]
    for k, share in (r.get("answer_in_context") or {}).items():
        rows.append((f"answer in top-{k} passages", f"{share:.3f}"))
    rows.append(("questions", f"{r['n']} (scored from {r['source']})"))
    return rows


def retriever_table(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Base index vs each extra retriever: one row per metric, with the paired difference."""
    others = summary.get("retrievers") or {}
    base = summary.get("retrieval") or {}
    if not others:
        return None
    labels = list(others)
    pairs = {p["b"]: p for p in summary.get("retrieval_pairs") or []}
    metrics = [k for k, v in base.items() if isinstance(v, dict) and "mean" in v]
    rows = []
    for m in metrics:
        cells, diffs = [], []
        for label in labels:
            cells.append(_ci((others[label] or {}).get(m)))
            d = (pairs.get(label) or {}).get(m)
            diffs.append(
                {
                    "text": f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                    "sig": d["significant"],
                    "cls": "good" if d["lo"] > 0 else "bad" if d["hi"] < 0 else "",
                }
                if d
                else {"text": "-", "sig": False, "cls": ""}
            )
        rows.append({"metric": m, "base": _ci(base.get(m)), "cells": cells, "diffs": diffs})
    return {"labels": labels, "rows": rows}


def loss_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each hybrid variant loses F1: retrieval loss vs reading loss."""
    rows = []
    for ls in summary.get("loss_split") or []:
        r, g = ls["retrieval_loss"], ls["reading_loss"]
        rows.append(
            {
                "variant": ls["variant"],
                "oracle": ls["oracle"],
                "n": ls["n"],
                "hybrid_f1": f"{ls['hybrid_f1']:.3f}",
                "oracle_f1": f"{ls['oracle_f1']:.3f}",
                "retrieval": f"{r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]",
                "reading": _ci(g),
                "bigger": ls["bigger"] + ("" if ls["clear"] else " (not clear)"),
            }
        )
    return rows


def pair_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for p in summary.get("pairs", []):
        f1, em = p["f1"], p["em"]
        rows.append(
            {
                "label": f"{p['b']} vs {p['a']}",
                "n": p["n"],
                "f1": f"{f1['diff']:+.3f} [{f1['lo']:+.3f}, {f1['hi']:+.3f}]",
                "sig": f1["significant"],
                "cls": ("good" if f1["lo"] > 0 else "bad" if f1["hi"] < 0 else ""),
                "p": f"{f1['p_value']:.3g}",
                "em": f"{em['diff']:+.3f}",
                "mcnemar": f"{p['mcnemar_em']['p_value']:.3g}",
            }
        )
    return rows


def disagreements(
    records: Sequence[dict[str, Any]], items: Sequence[QARecord], names: Sequence[str]
) -> list[dict[str, Any]]:
    """Questions where the modes' F1 differ most (at least 0.5 apart), largest spread first."""
    by_key = {(r.get("variant"), r.get("qid")): r for r in records if r.get("kind") == "answer"}
    rows = []
    for it in items:
        recs = [by_key.get((n, it.id)) for n in names]
        if any(r is None for r in recs) or len(names) < 2:
            continue
        f1s = [r["f1"] for r in recs]  # type: ignore[index]
        spread = max(f1s) - min(f1s)
        if spread < 0.5:
            continue
        cells = [
            {
                "text": _short(r["prediction"]),  # type: ignore[index]
                "f1": f"{r['f1']:.2f}",  # type: ignore[index]
                "cls": "good" if r["f1"] >= 0.5 else "bad",  # type: ignore[index]
            }
            for r in recs
        ]
        rows.append(
            {
                "spread": spread,
                "qid": it.id,
                "question": it.question,
                "gold": " | ".join(it.answers[:3]),
                "cells": cells,
            }
        )
    rows.sort(key=lambda d: (-d["spread"], d["qid"]))
    return rows[:MAX_DISAGREEMENTS]


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(ctx: dict[str, Any]) -> str:
    lines = [
        f"# ragtune eval: {ctx['run_name']}",
        "",
        f"{ctx['n_questions']} questions from `{ctx['dataset']}` (split: {ctx['split']}); "
        f"target: {ctx['target']}.",
        "",
        "## Verdict",
        "",
        *[f"> {line}" for line in ctx["verdict"].splitlines()],
        "",
        "## Answer quality",
        "",
        "| mode | n | EM | F1 | ROUGE-L | answer in passages | latency p50 / p95 (s) | s / question | tokens/s | prompt tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ctx["metric_rows"]:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['em']} | {r['f1']} | {r['rouge_l']} | {r['aic']} "
            f"| {r['latency']} | {r['spq']} | {r['tps']} | {r['prompt']} |"
        )
    lines += ["", "Means with 95% bootstrap confidence intervals.", ""]
    for c in ctx["charts"]:
        lines.append(f"![{c['title']}](plots/{c['file']})")
    if ctx["selection"]:
        lines += ["", *selection_markdown(ctx["selection"])]
    if ctx["retrieval_rows"]:
        lines += ["", "## Retrieval", "", "| metric | value (95% CI) |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in ctx["retrieval_rows"]]
    table = ctx["retriever_table"]
    if table:
        labels = table["labels"]
        lines += [
            "",
            "## Retrievers side by side",
            "",
            "The same questions searched in the run's index (base) and in each extra "
            "retriever's; differences paired by question (bold: the CI excludes zero).",
            "",
            "| metric | base | "
            + " | ".join(f"{lb} | {lb} - base (95% CI)" for lb in labels)
            + " |",
            "|---|---:|" + "---:|---:|" * len(labels),
        ]
        for row in table["rows"]:
            cells = " | ".join(
                f"{c} | " + (f"**{d['text']}**" if d["sig"] else d["text"])
                for c, d in zip(row["cells"], row["diffs"], strict=True)
            )
            lines.append(f"| {row['metric']} | {row['base']} | {cells} |")
    if ctx["loss_rows"]:
        lines += [
            "",
            "## Where answers are lost",
            "",
            "Retrieval loss = F1(oracle with the adapter) - F1(hybrid): what better retrieval "
            "could still give. Reading loss = 1 - F1(oracle with the adapter): what the model "
            "loses with the gold passage in hand. 95% bootstrap CIs over questions.",
            "",
            "| hybrid variant | oracle | n | hybrid F1 | oracle F1 | retrieval loss | reading loss | bigger |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in ctx["loss_rows"]:
            lines.append(
                f"| {r['variant']} | {r['oracle']} | {r['n']} | {r['hybrid_f1']} | "
                f"{r['oracle_f1']} | {r['retrieval']} | {r['reading']} | {r['bigger']} |"
            )
    if ctx["pair_rows"]:
        lines += [
            "",
            "## Paired differences",
            "",
            "| b vs a | n | F1 b - a (95% CI) | p (bootstrap) | EM b - a | McNemar p (EM) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in ctx["pair_rows"]:
            f1 = f"**{p['f1']}**" if p["sig"] else p["f1"]
            lines.append(
                f"| {p['label']} | {p['n']} | {f1} | {p['p']} | {p['em']} | {p['mcnemar']} |"
            )
    if ctx["disagreements"]:
        names = ctx["variant_names"]
        lines += [
            "",
            "## Where the modes disagree",
            "",
            "| question | gold | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for d in ctx["disagreements"]:
            cells = " | ".join(_md_cell(f"{c['text']} ({c['f1']})") for c in d["cells"])
            lines.append(f"| {_md_cell(d['question'])} | {_md_cell(d['gold'])} | {cells} |")
    lines += ["", "## Run", "", "```json", ctx["config_json"], "```", ""]
    return "\n".join(lines)


def render_html(ctx: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2").render(**ctx)


def write_report(
    out_dir: Path,
    summary: dict[str, Any],
    records: Sequence[dict[str, Any]],
    items: Sequence[QARecord],
    variants: Sequence[Variant],
) -> tuple[Path, Path]:
    """Write plots/, report.md and report.html into ``out_dir``; return the two reports."""
    config: dict[str, Any] = {}
    if (out_dir / "config.json").is_file():
        config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    names = [v.name for v in variants]
    plots = make_plots(summary, records, names, out_dir / "plots")
    charts = [
        {
            "name": k,
            "title": TITLES[k],
            "file": p.name,
            "data": base64.b64encode(p.read_bytes()).decode("ascii"),
        }
        for k, p in plots.items()
    ]
    target = config.get("target") or {}
    selection = read_selection(out_dir)  # a sweep picked the variant on a validation split
    ctx = {
        "run_name": out_dir.name,
        "n_questions": summary["n_questions"],
        "dataset": Path(config.get("dataset", "?")).name,
        "split": config.get("split", "?"),
        "target": target.get("url") or target.get("generator") or target.get("kind", "?"),
        "batch_size": config.get("batch_size", "?"),
        "verdict": summary["verdict"]["text"],
        "metric_rows": metric_rows(summary),
        "retrieval_rows": retrieval_rows(summary),
        "retriever_table": retriever_table(summary),
        "loss_rows": loss_rows(summary),
        "pair_rows": pair_rows(summary),
        "disagreements": disagreements(records, items, names),
        "variant_names": names,
        "charts": charts,
        "selection": selection,
        "selection_rows": selection_rows(selection) if selection else [],
        "config_json": json.dumps(config, indent=2, sort_keys=True),
    }
    md, html = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(md, render_markdown(ctx))
    write_text_atomic(html, render_html(ctx))
    return md, html
