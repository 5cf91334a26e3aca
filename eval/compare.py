"""`ragtune eval compare RUN_A RUN_B`: what changed between two runs, variant by variant.

For each variant present in both runs: the metric means of A and B and B - A. Where the runs
share questions, the F1 change is also tested paired (bootstrap over the shared questions),
so "the new adapter is better" comes with a CI like everything else.

Each run's ``config.json`` records the index and adapter versions it answered with; the
comparison says where they differ (a rebuilt index, a retrained adapter), since a change in
F1 then has more than one possible cause.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.core.errors import InvalidInput
from ragtune.eval.runner import RESULTS, SUMMARY, read_results
from ragtune.eval.stats import paired_bootstrap

METRICS = ("em", "f1", "rouge_l")


def load_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of a finished run folder."""
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise InvalidInput(
            f"{Path(folder).name}: no {SUMMARY} (not a finished eval run folder)", field="run"
        )
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary, read_results(Path(folder) / RESULTS)


def compare_runs(a: Path, b: Path, n_boot: int = 5_000) -> dict[str, Any]:
    """Per shared variant: metric means in A and B, deltas, and a paired F1 test."""
    sa, ra = load_run(a)
    sb, rb = load_run(b)
    rows = []
    shared = [n for n in sa["variants"] if n in sb["variants"]]
    for name in shared:
        va, vb = sa["variants"][name], sb["variants"][name]
        if "f1" not in va or "f1" not in vb:
            continue
        row: dict[str, Any] = {"variant": name}
        for m in METRICS:
            row[m] = {
                "a": va[m]["mean"],
                "b": vb[m]["mean"],
                "delta": vb[m]["mean"] - va[m]["mean"],
            }
        row["latency_p50_ms"] = {
            "a": va["latency_ms"]["p50"],
            "b": vb["latency_ms"]["p50"],
            "delta": vb["latency_ms"]["p50"] - va["latency_ms"]["p50"],
        }
        fa = {r["qid"]: r["f1"] for r in ra if r.get("variant") == name}
        fb = {r["qid"]: r["f1"] for r in rb if r.get("variant") == name}
        common = sorted(set(fa) & set(fb))
        if common:
            row["paired_f1"] = paired_bootstrap(
                [fa[q] for q in common], [fb[q] for q in common], names=("A", "B"), n_boot=n_boot
            ).to_dict()
        rows.append(row)
    retrieval = {}
    ret_a, ret_b = sa.get("retrieval") or {}, sb.get("retrieval") or {}
    for k in ret_a:
        if isinstance(ret_a[k], dict) and "mean" in ret_a[k] and k in ret_b:
            retrieval[k] = {
                "a": ret_a[k]["mean"],
                "b": ret_b[k]["mean"],
                "delta": ret_b[k]["mean"] - ret_a[k]["mean"],
            }
    ca, cb = _config(a), _config(b)
    return {
        "a": str(a),
        "b": str(b),
        "versions": version_differences(ca, cb),
        "versions_known": bool(ca.get("versions") and cb.get("versions")),
        "only_a": [n for n in sa["variants"] if n not in sb["variants"]],
        "only_b": [n for n in sb["variants"] if n not in sa["variants"]],
        "variants": rows,
        "retrieval": retrieval,
        "winner_a": sa.get("verdict", {}).get("winner"),
        "winner_b": sb.get("verdict", {}).get("winner"),
    }


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def version_differences(ca: dict[str, Any], cb: dict[str, Any]) -> list[dict[str, Any]]:
    """Where two runs' index and adapter versions differ: one entry per difference
    (``what``: index / adapter / retriever, ``name``, ``a``, ``b``; None = not in that run)."""
    va, vb = ca.get("versions") or {}, cb.get("versions") or {}
    out: list[dict[str, Any]] = []
    ia, ib = ca.get("index"), cb.get("index")
    if ia != ib and (ia or ib):
        out.append({"what": "index name", "name": None, "a": ia, "b": ib})
    if va.get("index_version") != vb.get("index_version"):
        out.append(
            {
                "what": "index",
                "name": ib or ia,
                "a": va.get("index_version"),
                "b": vb.get("index_version"),
            }
        )
    aa, ab = va.get("adapters") or {}, vb.get("adapters") or {}
    for name in sorted(set(aa) | set(ab)):
        if aa.get(name) != ab.get(name):
            out.append({"what": "adapter", "name": name, "a": aa.get(name), "b": ab.get(name)})
    ra, rb = va.get("retrievers") or {}, vb.get("retrievers") or {}
    for label in sorted(set(ra) | set(rb)):
        if ra.get(label) != rb.get(label):
            out.append({"what": "retriever", "name": label, "a": ra.get(label), "b": rb.get(label)})
    return out


def _version_line(d: dict[str, Any]) -> str:
    name = f" {d['name']!r}" if d["name"] else ""
    a, b = d["a"] or "(not in A)", d["b"] or "(not in B)"
    return f"  {d['what']}{name}: {a} → {b}"


def format_comparison(c: dict[str, Any]) -> str:
    """A plain-text table of the comparison (what the CLI prints)."""
    lines = [f"A = {Path(c['a']).name}   B = {Path(c['b']).name}", ""]
    head = f"{'mode':<24}" + "".join(f"{m:>22}" for m in ("EM A→B", "F1 A→B", "ROUGE-L A→B"))
    lines += [head + f"{'F1 B-A paired (95% CI)':>34}", "-" * (len(head) + 34)]
    for r in c["variants"]:
        cells = "".join(
            f"{r[m]['a']:>7.3f}→{r[m]['b']:.3f} {r[m]['delta']:+.3f}".rjust(22) for m in METRICS
        )
        p = r.get("paired_f1")
        paired = (
            f"{p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]{' *' if p['significant'] else ''}"
            if p
            else "no shared questions"
        )
        lines.append(f"{r['variant']:<24}{cells}{paired:>34}")
    if c["retrieval"]:
        lines += ["", "retrieval:"]
        for k, v in c["retrieval"].items():
            lines.append(f"  {k:<12} {v['a']:.3f} → {v['b']:.3f} ({v['delta']:+.3f})")
    if c["only_a"]:
        lines.append(f"only in A: {', '.join(c['only_a'])}")
    if c["only_b"]:
        lines.append(f"only in B: {', '.join(c['only_b'])}")
    lines.append(f"winner on F1: A {c['winner_a']}, B {c['winner_b']}")
    lines.append("* = the paired 95% CI excludes zero")
    diffs = c.get("versions") or []
    if diffs:
        lines += [
            "",
            "note: the runs answered with different index or adapter versions, so a change "
            "above may come from either:",
            *(_version_line(d) for d in diffs),
        ]
    elif c.get("versions_known"):
        lines.append("same index and adapter versions in both runs")
    return "\n".join(lines)
