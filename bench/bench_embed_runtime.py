"""Embedder runtimes on SQuAD dev: torch vs ONNX Runtime fp32 vs ONNX Runtime int8.

Run: ``flock /tmp/ragtune-heavy.lock python bench/bench_embed_runtime.py`` (about 15 minutes
on a shared 2-core machine with every paragraph; ``--articles 4`` for a 2-minute smoke run).

Measured, every backend in the same run:
- indexing throughput: the indexer's own embedding path (``indexer.build.embed_chunks``,
  batches of ``embed_batch_size``, longest first) over every paragraph of SQuAD dev, in
  slices interleaved across the backends (each round rotates who goes first), so the load
  of a shared machine falls on all of them alike; ratio = torch time / backend time;
- dense recall@5 / @1 on the questions (a question's gold is its paragraph), with the
  paragraphs and the questions embedded by that backend;
- cross queries: the torch-built vectors searched with ONNX fp32 query vectors (the
  combination ragtune accepts) and with int8 query vectors (the one it refuses);
- how far each backend's vectors are from torch's (1 - cosine, max and mean).
Results: bench/results/embed_runtime.txt (appended).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ragtune.core.config import resolve_settings  # noqa: E402
from ragtune.core.models import load_embedder  # noqa: E402
from ragtune.core.qa import load_squad_json, squad_doc_id, squad_paragraphs  # noqa: E402
from ragtune.indexer.build import embed_chunks  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad" / "squaddev_v1.1.json"
RESULTS = REPO / "bench" / "results" / "embed_runtime.txt"
BACKENDS = ("torch", "onnx", "onnx-int8")

_lines: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    _lines.append(line)


def load(articles: int | None, every: int) -> tuple[list[str], list[str], list[str], list[str]]:
    raw = load_squad_json(SQUAD)
    arts = raw["data"][:articles] if articles else raw["data"]
    texts, ids, questions, gold = [], [], [], []
    n = 0
    for p in squad_paragraphs(arts, lambda msg: None):
        texts.append(p.context)
        ids.append(squad_doc_id(p.title, p.index))
        for qa in p.qas:
            if n % every == 0:
                questions.append(qa["question"])
                gold.append(ids[-1])
            n += 1
    return texts, ids, questions, gold


def recall(doc_vecs: np.ndarray, q_vecs: np.ndarray, ids: list[str], gold: list[str]) -> dict:
    scores = q_vecs @ doc_vecs.T
    top = np.argsort(-scores, axis=1)[:, :5]
    r1 = np.mean([ids[t[0]] == g for t, g in zip(top, gold, strict=True)])
    r5 = np.mean([g in {ids[i] for i in t} for t, g in zip(top, gold, strict=True)])
    return {"r1": float(r1), "r5": float(r5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--articles", type=int, default=None, help="first N articles (default all)")
    ap.add_argument("--every", type=int, default=5, help="every Nth question")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved slices")
    ap.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    ap.add_argument("--save", action="store_true", help=f"append to {RESULTS.name}")
    args = ap.parse_args()

    texts, ids, questions, gold = load(args.articles, args.every)
    cache = Path(tempfile.gettempdir()) / "ragtune-bench-embed-cache"  # exports kept across runs
    embedders = {}
    for b in BACKENDS:
        s, _ = resolve_settings(
            overrides={"embedder_backend": b, "cache_dir": cache, "torch_threads": args.threads},
            environ={},
        )
        t0 = time.perf_counter()
        embedders[b] = load_embedder(s)
        say(f"# {b}: loaded in {time.perf_counter() - t0:.1f} s (model id {embedders[b].model_id})")
    load_avg = os.getloadavg()
    say(
        f"# bench_embed_runtime {time.strftime('%Y-%m-%d %H:%M')}, {len(texts)} paragraphs, "
        f"{len(questions)} questions, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average {load_avg[0]:.2f}/{load_avg[1]:.2f}/{load_avg[2]:.2f}"
    )
    tok = embedders["torch"].tokenizer
    lengths = [len(t) for t in tok(texts, truncation=True, max_length=256)["input_ids"]]
    vecs = {b: np.zeros((len(texts), 384), np.float32) for b in BACKENDS}
    secs = dict.fromkeys(BACKENDS, 0.0)
    bounds = np.linspace(0, len(texts), args.rounds + 1).astype(int)
    per_round = []
    for r in range(args.rounds):
        lo, hi = bounds[r], bounds[r + 1]
        order = BACKENDS[r % 3 :] + BACKENDS[: r % 3]
        took = {}
        for b in order:
            t0 = time.perf_counter()
            vecs[b][lo:hi] = embed_chunks(embedders[b], texts[lo:hi], lengths[lo:hi], 64, False)
            took[b] = time.perf_counter() - t0
            secs[b] += took[b]
        per_round.append({b: took["torch"] / took[b] for b in BACKENDS[1:]})
    for b in BACKENDS:
        say(f"{b:10s} {len(texts) / secs[b]:6.1f} paragraphs/s ({secs[b]:.0f} s)")
    for b in BACKENDS[1:]:
        rounds = ", ".join(f"{x[b]:.2f}" for x in per_round)
        say(f"  throughput {b} / torch: {secs['torch'] / secs[b]:.2f}x (rounds: {rounds})")
    qv = {b: embedders[b].encode(questions) for b in BACKENDS}
    for b in BACKENDS[1:]:
        d = 1 - (vecs[b] * vecs["torch"]).sum(1)
        dq = 1 - (qv[b] * qv["torch"]).sum(1)
        say(
            f"  {b} vs torch, 1 - cosine: paragraphs max {d.max():.2e} mean {d.mean():.2e}; "
            f"questions max {dq.max():.2e}"
        )
    say("dense retrieval (gold = the question's paragraph):")
    base = recall(vecs["torch"], qv["torch"], ids, gold)
    for b in BACKENDS:
        rr = recall(vecs[b], qv[b], ids, gold)
        say(
            f"  {b:10s} recall@1 {rr['r1']:.4f} recall@5 {rr['r5']:.4f} "
            f"(recall@5 - torch's: {rr['r5'] - base['r5']:+.4f})"
        )
    for b in BACKENDS[1:]:
        rr = recall(vecs["torch"], qv[b], ids, gold)
        say(f"  torch-built vectors, {b} queries: recall@5 {rr['r5']:.4f}")
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join(_lines) + "\n\n")


if __name__ == "__main__":
    main()
