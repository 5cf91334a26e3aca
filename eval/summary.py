"""From results.jsonl to summary.json: metrics with CIs, paired tests, and the verdict.

Paired tests use only questions every compared variant answered, so an interrupted run
still compares like with like. The oracle is an upper bound, not a contender: it never wins.

With extra retrievers (``rag@tuned``), ``retrievers`` holds each one's retrieval metrics
and ``retrieval_pairs`` tests them against the run's own index question by question.

The loss split (``loss_split``): for every hybrid variant with adapter A, and ``oracle:A``
(the same adapter given the gold passage) on the same questions,

- retrieval loss = F1(oracle:A) - F1(hybrid:A): what better retrieval could still give;
- reading loss = 1 - F1(oracle:A): what the reader (generator + adapter) loses even with the
  right passage in hand;

each with a bootstrap CI over questions, and a CI of their difference (reading - retrieval),
so the verdict can name the bigger one and say whether that is clear.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragtune.eval.metrics import percentile
from ragtune.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap
from ragtune.eval.variants import Variant

if TYPE_CHECKING:  # the runner imports this module when it summarizes
    from ragtune.eval.runner import RunConfig

ANSWER_METRICS = ("em", "f1", "rouge_l")


def _index(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    # Later lines win: a record repeated by a manual rerun replaces the older one.
    return {(r["variant"], r["qid"]): r for r in records if "variant" in r and "qid" in r}


def _batch_gen_ms(r: dict[str, Any]) -> float:
    """The generation time of the record's batch (older records: the row's own, which was
    the batch's under static batching)."""
    return float(r.get("batch_generate_ms", r["generate_ms"]))


def _variant_summary(recs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(recs)}
    if not recs:
        return out
    for m in ANSWER_METRICS:
        out[m] = bootstrap_ci([r[m] for r in recs], n_boot=n_boot).to_dict()
    if all("answer_in_context" in r for r in recs):
        out["answer_in_context"] = bootstrap_ci(
            [r["answer_in_context"] for r in recs], n_boot=n_boot
        ).to_dict()
    if any("gold_in_top_k" in r for r in recs):
        vals = [r["gold_in_top_k"] for r in recs if "gold_in_top_k" in r]
        out["gold_in_top_k"] = sum(vals) / len(vals)
    lat = [r["total_ms"] for r in recs]
    # Each record carries its batch's wall time; dividing by the batch size sums to the total.
    wall_s = sum(r["batch_ms"] / max(1, r["batch_n"]) for r in recs) / 1000
    gen_s = sum(_batch_gen_ms(r) / max(1, r["batch_n"]) for r in recs) / 1000
    completion = sum(r["completion_tokens"] for r in recs)
    out["latency_ms"] = {
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "mean": sum(lat) / len(lat),
    }
    out["s_per_question"] = wall_s / len(recs)
    out["tokens_per_s"] = completion / gen_s if gen_s > 0 else None
    out["prompt_tokens_mean"] = sum(r["prompt_tokens"] for r in recs) / len(recs)
    out["completion_tokens_mean"] = completion / len(recs)
    return out


def _retrieval_summary(
    recs: list[dict[str, Any]], ks: Sequence[int], n_boot: int
) -> dict[str, Any] | None:
    scored = [r for r in recs if f"recall@{ks[0]}" in r]
    if not recs:
        return None
    out: dict[str, Any] = {"n": len(recs), "n_with_gold": len(scored), "source": "retrieve"}
    if scored:
        for k in ks:
            out[f"recall@{k}"] = bootstrap_ci([r[f"recall@{k}"] for r in scored], n_boot).to_dict()
        for m in ("mrr@10", "ndcg@10"):
            out[m] = bootstrap_ci([r[m] for r in scored], n_boot).to_dict()
    out["answer_in_context"] = {
        str(k): sum(r["answer_in_context"][str(k)] for r in recs) / len(recs)
        for k in ks
        if all(str(k) in r.get("answer_in_context", {}) for r in recs)
    }
    return out


def _retrieval_from_sources(
    recs: list[dict[str, Any]], gold: dict[str, list[str]], ks: Sequence[int], n_boot: int
) -> dict[str, Any] | None:
    """Without a retrieve call (HTTP target), score the rag answers' own sources."""
    from ragtune.eval.metrics import retrieval_scores

    rows = [r for r in recs if r.get("sources") is not None and gold.get(r["qid"])]
    if not rows:
        return None
    depth = min(len(r["sources"]) for r in rows)
    usable = [k for k in ks if k <= depth] or [max(1, depth)]
    scores = [retrieval_scores(r["sources"], gold[r["qid"]], usable) for r in rows]
    out: dict[str, Any] = {"n": len(rows), "n_with_gold": len(rows), "source": "answer sources"}
    for key in scores[0]:
        out[key] = bootstrap_ci([s[key] for s in scores], n_boot).to_dict()
    return out


def summarize(
    records: Sequence[dict[str, Any]],
    variants: Sequence[Variant],
    qids: Sequence[str],
    config: RunConfig,
    gold: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The whole summary.json: per-variant metrics, retrieval, pairwise tests, verdict."""
    n_boot = config.n_boot
    ks = list(config.recall_ks)
    by_key = _index(records)
    names = [v.name for v in variants]
    per: dict[str, list[dict[str, Any]]] = {
        n: [by_key[(n, q)] for q in qids if (n, q) in by_key] for n in names
    }
    summary: dict[str, Any] = {
        "n_questions": len(qids),
        "variants": {
            n: {"kind": v.kind, "adapter": v.adapter} for n, v in zip(names, variants, strict=True)
        },
    }
    for n in names:
        summary["variants"][n].update(_variant_summary(per[n], n_boot))

    retr = [by_key[("retrieval", q)] for q in qids if ("retrieval", q) in by_key]
    retrieval = _retrieval_summary(retr, ks, n_boot)
    if retrieval is None and gold:
        rag_like = next((n for n, v in zip(names, variants, strict=True) if v.retrieves), None)
        if rag_like:
            retrieval = _retrieval_from_sources(per[rag_like], gold, ks, n_boot)
    summary["retrieval"] = retrieval
    labels = list(dict.fromkeys(v.retriever for v in variants if v.retriever))
    if labels:
        summary["retrievers"] = {}
        summary["retrieval_pairs"] = []
        for label in labels:
            name = f"retrieval@{label}"
            recs = [by_key[(name, q)] for q in qids if (name, q) in by_key]
            summary["retrievers"][label] = _retrieval_summary(recs, ks, n_boot)
            summary["retrieval_pairs"].append(
                _retrieval_pair(
                    by_key, qids, label, [*(f"recall@{k}" for k in ks), "mrr@10"], n_boot
                )
            )

    pairs = []
    for a, b in itertools.combinations(names, 2):
        common = [q for q in qids if (a, q) in by_key and (b, q) in by_key]
        if not common:
            continue
        ra = [by_key[(a, q)] for q in common]
        rb = [by_key[(b, q)] for q in common]
        entry: dict[str, Any] = {"a": a, "b": b, "n": len(common)}
        for m in ("f1", "em"):
            entry[m] = paired_bootstrap(
                [r[m] for r in ra], [r[m] for r in rb], names=(a, b), metric=m, n_boot=n_boot
            ).to_dict()
        entry["mcnemar_em"] = mcnemar(
            [r["em"] > 0 for r in ra], [r["em"] > 0 for r in rb], names=(a, b)
        ).to_dict()
        pairs.append(entry)
    summary["pairs"] = pairs
    summary["loss_split"] = loss_split(by_key, qids, variants, n_boot)
    summary["verdict"] = verdict(summary, variants)
    return summary


def _retrieval_pair(
    by_key: dict[tuple[str, str], dict[str, Any]],
    qids: Sequence[str],
    label: str,
    metrics: Sequence[str],
    n_boot: int,
) -> dict[str, Any]:
    """Retriever ``label`` minus the run's index, question by question, on each metric."""
    b_name = f"retrieval@{label}"
    common = [
        q
        for q in qids
        if ("retrieval", q) in by_key
        and (b_name, q) in by_key
        and metrics[0] in by_key[("retrieval", q)]
        and metrics[0] in by_key[(b_name, q)]
    ]
    out: dict[str, Any] = {"a": "base", "b": label, "n": len(common)}
    for m in metrics:
        out[m] = paired_bootstrap(
            [by_key[("retrieval", q)][m] for q in common],
            [by_key[(b_name, q)][m] for q in common],
            names=("base", label),
            metric=m,
            n_boot=n_boot,
        ).to_dict()
    return out


def loss_split(
    by_key: dict[tuple[str, str], dict[str, Any]],
    qids: Sequence[str],
    variants: Sequence[Variant],
    n_boot: int,
) -> list[dict[str, Any]]:
    """Retrieval loss and reading loss of every hybrid variant whose oracle ran too."""
    names = {v.name for v in variants}
    out = []
    for v in variants:
        oracle = f"oracle:{v.adapter}"
        if v.kind != "hybrid" or not v.adapter or oracle not in names:
            continue
        common = [q for q in qids if (v.name, q) in by_key and (oracle, q) in by_key]
        if not common:
            continue
        h = [by_key[(v.name, q)]["f1"] for q in common]
        o = [by_key[(oracle, q)]["f1"] for q in common]
        retrieval = paired_bootstrap(h, o, names=(v.name, oracle), n_boot=n_boot)
        reading = bootstrap_ci([1.0 - x for x in o], n_boot=n_boot)
        # per question: reading - retrieval = (1 - o) - (o - h)
        gap = bootstrap_ci([(1.0 - y) - (y - x) for x, y in zip(h, o, strict=True)], n_boot=n_boot)
        bigger = "reading" if reading.mean >= retrieval.diff else "retrieval"
        out.append(
            {
                "variant": v.name,
                "oracle": oracle,
                "n": len(common),
                "hybrid_f1": sum(h) / len(h),
                "oracle_f1": sum(o) / len(o),
                "retrieval_loss": {
                    "mean": retrieval.diff,
                    "lo": retrieval.lo,
                    "hi": retrieval.hi,
                    "p_value": retrieval.p_value,
                    "n": retrieval.n,
                },
                "reading_loss": reading.to_dict(),
                "reading_minus_retrieval": gap.to_dict(),
                "bigger": bigger,
                "clear": gap.lo > 0 or gap.hi < 0,
            }
        )
    return out


def find_pair(summary: dict[str, Any], a: str, b: str) -> tuple[dict[str, Any], int] | None:
    """The pair entry for (a, b) and the sign that turns its differences into b - a."""
    for p in summary.get("pairs", []):
        if p["a"] == a and p["b"] == b:
            return p, 1
        if p["a"] == b and p["b"] == a:
            return p, -1
    return None


def _diff(summary: dict[str, Any], a: str, b: str, metric: str = "f1") -> dict[str, Any] | None:
    """b - a on ``metric``: diff, CI, p, significant."""
    found = find_pair(summary, a, b)
    if found is None:
        return None
    p, sign = found
    d = p[metric]
    lo, hi = (d["lo"], d["hi"]) if sign > 0 else (-d["hi"], -d["lo"])
    return {
        "a": a,
        "b": b,
        "diff": sign * d["diff"],
        "lo": lo,
        "hi": hi,
        "p_value": d["p_value"],
        "significant": d["significant"],
        "mcnemar_p": p["mcnemar_em"]["p_value"],
        "n": p["n"],
    }


def verdict(summary: dict[str, Any], variants: Sequence[Variant]) -> dict[str, Any]:
    """Which non-oracle variant wins on F1, by how much over the runner-up, and the checks
    the project promises (hybrid vs rag, rag vs closed-book fine-tuning)."""
    vs = summary["variants"]
    contenders = [v.name for v in variants if v.kind != "oracle" and "f1" in vs[v.name]]
    out: dict[str, Any] = {"winner": None, "runner_up": None, "margin": None, "checks": []}
    if contenders:
        ranked = sorted(contenders, key=lambda n: vs[n]["f1"]["mean"], reverse=True)
        out["winner"] = ranked[0]
        if len(ranked) > 1:
            out["runner_up"] = ranked[1]
            out["margin"] = _diff(summary, ranked[1], ranked[0])
    names = {v.name: v for v in variants}
    rags = [n for n, v in names.items() if v.kind == "rag"]
    for rag in rags:
        for n, v in names.items():
            if v.kind == "hybrid" and v.retriever == names[rag].retriever:
                d = _diff(summary, rag, n)
                if d:
                    out["checks"].append({"claim": f"{n} beats {rag} on F1", **d})
        for n, v in names.items():
            if v.kind == "finetune":
                d = _diff(summary, n, rag)
                if d:
                    out["checks"].append({"claim": f"{rag} beats {n} on F1", **d})
    for n, v in names.items():
        if v.retriever is not None:
            d = _diff(summary, v.without_retriever.name, n)
            if d:
                out["checks"].append({"claim": f"{n} beats {v.without_retriever.name} on F1", **d})
    oracles = [n for n, v in names.items() if v.kind == "oracle" and "f1" in vs[n]]
    out["upper_bound"] = {n: vs[n]["f1"]["mean"] for n in oracles}
    out["text"] = verdict_text(summary, out)
    return out


def _ci(d: dict[str, Any]) -> str:
    return f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def _s(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0


def _signed(d: dict[str, Any]) -> str:
    return (
        f"{_s(d['diff'])} (95% CI {_s(d['lo'])} to {_s(d['hi'])}, paired bootstrap "
        f"p={d['p_value']:.3g}, McNemar on EM p={d['mcnemar_p']:.3g}, n={d['n']})"
    )


def verdict_text(summary: dict[str, Any], v: dict[str, Any]) -> str:
    """The verdict in a few plain lines (printed at the end of a run and put in the report)."""
    vs = summary["variants"]
    if not v["winner"]:
        return "No results yet."
    w = v["winner"]
    lines = [f"Winner on token F1: {w} with F1 {_ci(vs[w]['f1'])} (EM {vs[w]['em']['mean']:.3f})."]
    m = v["margin"]
    if m:
        real = (
            "a real difference (the CI excludes zero)"
            if m["significant"]
            else "not significant (the CI includes zero)"
        )
        lines.append(f"Ahead of {m['a']} (F1 {_ci(vs[m['a']]['f1'])}) by {_signed(m)}: {real}.")
    for c in v["checks"]:
        state = "holds" if c["lo"] > 0 else ("reversed" if c["hi"] < 0 else "not shown")
        lines.append(f"Check '{c['claim']}': {state}: {_signed(c)}.")
    for n, f1 in v["upper_bound"].items():
        lines.append(f"Upper bound {n} (gold passage given): F1 {f1:.3f}.")
    for rp in summary.get("retrieval_pairs") or []:
        m = next((k for k in rp if k.startswith("recall@")), None)
        if m and rp["n"]:
            d = rp[m]
            lines.append(
                f"Retriever {rp['b']} vs the base index: {m} {_s(d['diff'])} (95% CI "
                f"{_s(d['lo'])} to {_s(d['hi'])}, paired bootstrap p={d['p_value']:.3g}, "
                f"n={rp['n']})."
            )
    for ls in summary.get("loss_split") or []:
        lines.append(loss_split_text(ls))
    return "\n".join(lines)


def loss_split_text(ls: dict[str, Any]) -> str:
    """One verdict line: where a hybrid variant loses F1, and which loss is bigger."""
    r, g, d = ls["retrieval_loss"], ls["reading_loss"], ls["reading_minus_retrieval"]
    clear = (
        "clearly (the CI of the difference excludes zero)"
        if ls["clear"]
        else "not clearly (the CI of the difference includes zero)"
    )
    return (
        f"Where {ls['variant']} loses F1: retrieval loss {_s(r['mean'])} [{_s(r['lo'])}, "
        f"{_s(r['hi'])}] ({ls['oracle']} - {ls['variant']}), reading loss {_ci(g)} "
        f"(1 - {ls['oracle']}); the bigger is {ls['bigger']} loss, {clear}: reading - "
        f"retrieval {_s(d['mean'])} [{_s(d['lo'])}, {_s(d['hi'])}], n={ls['n']}."
    )
