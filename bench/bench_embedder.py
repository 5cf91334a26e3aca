"""Embedder tuning on SQuAD dev split by article: held-out recall, cost, end-to-end F1.

    python bench/bench_embedder.py recall [--pairs 2400] [--save]   # ~40 min on a busy 2-core box
    python bench/bench_embedder.py e2e [--limit 40] [--save]        # the demo experiment, twice
    python bench/bench_embedder.py sweep --sweep '[{}, {"schedule": "cosine"}]'  # validation only
    python bench/bench_embedder.py recall --sweep '[...]'  # choose on validation, then test once

1. recall: SQuAD v1.1 dev (48 articles, 2,067 paragraphs) split by article (25% test,
   seed 0, ``eval.split.split_groups``, as the experiment splits). The base index (the
   packaged all-MiniLM-L6-v2) holds every paragraph; ``train_embedder`` trains on a seeded
   sample of ``--pairs`` train-article questions (its validation split: held-out train
   articles), hard negatives mined from that index; a second index holds every paragraph
   embedded by the tuned model. Then every test-article question is searched in both:
   recall@1/2/5 and MRR@10, dense and hybrid, the base retriever as the baseline of the same
   run, with a paired bootstrap CI (over questions) of tuned - base recall@2. Also the
   training time per 1,000 pairs on this machine (train_seconds of the loop, and wall time
   of the whole ``train_embedder`` call, mining and validation included).
2. e2e: ``examples/experiment-demo.toml`` reduced to rag and hybrid (RAFT adapter) with an
   ``[embedder]`` section: the experiment tunes the embedder on its own train split, builds
   the second index and evaluates rag / hybrid with the base and the tuned retriever side
   by side on the same held-out questions (plus oracle:raft); prints the F1 changes with
   their paired CIs.

Figures swing with the machine's load: the load average is printed (and saved) with them.
Run long jobs under ``flock /tmp/ragtune-heavy.lock``. Results: bench/results/embedder.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SQUAD = REPO.parent / "shared" / "data" / "squad" / "squaddev_v1.1.json"
RESULTS = REPO / "bench" / "results" / "embedder.txt"
KS = (1, 2, 5)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def settings_for(work: Path, threads: int, **more: Any) -> Any:
    from ragtune.core.config import resolve_settings

    overrides = {
        "data_dir": work / "data",
        "torch_threads": threads,
        "chunk_size": 256,  # one chunk per paragraph for nearly all of them (as the demo)
        "top_k": 2,
        **more,
    }
    return resolve_settings(overrides=overrides, environ={})[0]


def split_squad(squad: Path, work: Path) -> tuple[Path, Path]:
    from ragtune.core.qa import load_squad_json, squad_titles
    from ragtune.eval.datasets import subset_squad
    from ragtune.eval.split import SplitSpec, split_groups

    raw = load_squad_json(squad)
    train, test = split_groups(squad_titles(raw), SplitSpec(0.25, 0))
    paths = work / "train.json", work / "test.json"
    for path, titles in zip(paths, (train, test), strict=True):
        path.write_text(json.dumps(subset_squad(raw, titles)), encoding="utf-8")
    return paths


def scores(index: Any, questions: list[Any], method: str) -> dict[str, list[float]]:
    """Per-question recall@k and MRR@10 (documents counted once, at their best rank)."""
    from ragtune.eval.metrics import retrieval_scores

    out: dict[str, list[float]] = {}
    for i in range(0, len(questions), 128):
        part = questions[i : i + 128]
        hits = index.search_batch([q.question for q in part], 10, method)
        for q, row in zip(part, hits, strict=True):
            s = retrieval_scores([h.doc_id for h in row], q.gold_doc_ids, KS)
            for k, v in s.items():
                out.setdefault(k, []).append(v)
    return out


def sweep(
    settings: Any, train_json: Path, a: argparse.Namespace, recipe: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Train each candidate recipe on --sweep-pairs pairs; keep the best validation recall@k
    (the validation split is held-out train articles: the test articles are never looked at)."""
    from ragtune.core.embedders import remove
    from ragtune.tuner.embed_api import train_embedder
    from ragtune.tuner.embed_args import EmbedTuneArgs

    lines = [f"recipe sweep ({a.sweep_pairs} pairs each unless given, validation split only):"]
    best: tuple[tuple[float, float], dict[str, Any]] | None = None
    for cand in json.loads(a.sweep):
        r = {**recipe, **cand}  # the recipe the final run gets if this candidate wins
        sized = {"max_pairs": a.sweep_pairs, "max_val_corpus": a.val_corpus, **r}
        t0 = time.perf_counter()
        info = train_embedder(
            settings,
            EmbedTuneArgs(
                data=[str(train_json)],
                name="squad-sweep",
                index="squad-base",
                overwrite=True,
                **sized,
            ),
            progress=True,
        )
        met = info.manifest.metrics
        k = str(met.k)
        score = (met.best.recall[k], met.best.mrr) if met.best else (0.0, 0.0)
        line = (
            f"  {json.dumps(cand, sort_keys=True)}: val recall@{k} base "
            f"{met.base.recall[k] if met.base else None} -> {score[0]} MRR {score[1]} "
            f"(step {met.best.step if met.best else None} of {met.steps}"
            f"{', stopped early' if met.stopped_early else ''}; "
            + ", ".join(f"{h.step}: {h.recall[k]}" for h in met.history)
            + f"); {met.val_questions} val questions in {met.val_corpus} passages; "
            f"loop {met.train_seconds:.0f} s, whole {time.perf_counter() - t0:.0f} s; {load()}"
        )
        print(line, flush=True)
        lines.append(line)
        if best is None or score > best[0]:
            best = (score, r)
        remove(settings, "squad-sweep")
    assert best is not None
    lines.append(f"  chosen: {json.dumps(best[1], sort_keys=True)}")
    return best[1], lines


def bench_sweep(a: argparse.Namespace) -> list[str]:
    """Only the recipe sweep: train articles and their validation split, never the test ones."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"== sweep ({time.strftime('%Y-%m-%d %H:%M')}, {a.threads} torch thread(s)) =="]
    lines.append(f"start: {load()}")
    train_json, _ = split_squad(Path(a.squad), work)
    from ragtune.indexer.api import build_index

    base = settings_for(work, a.threads)
    build_index(base, [Path(a.squad)], "squad-base", progress=True)
    _, sweep_lines = sweep(base, train_json, a, json.loads(a.recipe))
    lines += sweep_lines
    lines.append(f"end: {load()}")
    return lines


def bench_recall(a: argparse.Namespace) -> list[str]:
    from ragtune.core.index_store import current_version, open_index
    from ragtune.core.models import load_embedder
    from ragtune.core.qa import read_squad
    from ragtune.eval.stats import bootstrap_ci, paired_bootstrap
    from ragtune.indexer.api import build_index, remove_index
    from ragtune.tuner.embed_api import train_embedder
    from ragtune.tuner.embed_args import EmbedTuneArgs

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"== recall ({time.strftime('%Y-%m-%d %H:%M')}, {a.threads} torch thread(s)) =="]
    lines.append(f"start: {load()}")
    train_json, test_json = split_squad(Path(a.squad), work)
    base = settings_for(work, a.threads)
    t0 = time.perf_counter()
    s = build_index(base, [Path(a.squad)], "squad-base", progress=True)
    lines.append(f"base index: {s.total_chunks} chunks ({time.perf_counter() - t0:.0f} s)")

    recipe = json.loads(a.recipe)
    if a.sweep:  # recipe options chosen on the validation split (held-out train articles)
        recipe, sweep_lines = sweep(base, train_json, a, recipe)
        lines += sweep_lines
    args = EmbedTuneArgs(
        data=[str(train_json)],
        name="squad-emb",
        index="squad-base",
        overwrite=True,
        **{"max_pairs": a.pairs, "max_val_corpus": a.val_corpus, **recipe},
    )
    t0 = time.perf_counter()
    info = train_embedder(base, args, progress=True)
    wall = time.perf_counter() - t0
    m = info.manifest
    met, counts = m.metrics, m.data.counts
    k = str(met.k)
    lines.append(f"recipe: {json.dumps(m.hyperparameters, sort_keys=True)}")
    lines.append(
        f"training: {counts.train} pairs ({counts.train_groups} articles), validation "
        f"{counts.val} questions ({counts.val_groups} held-out train articles) in "
        f"{met.val_corpus} passages; mining: {m.mining.model_dump() if m.mining else None}"
    )
    lines.append(
        f"validation recall@{k}: base {met.base.recall[k] if met.base else None} -> "
        f"kept step {met.best.step if met.best else None} "
        f"{met.best.recall[k] if met.best else None}; history "
        + "; ".join(f"step {h.step}: {h.recall[k]}" for h in met.history)
    )
    per_1k = 1000 * met.train_seconds / max(1, met.steps * args.batch_size)
    lines.append(
        f"training time: {met.train_seconds:.0f} s in the loop for {met.steps} steps x "
        f"{args.batch_size} pairs = {per_1k:.0f} s per 1,000 pairs ({met.pairs_per_s} pairs/s); "
        f"whole call {wall:.0f} s (data, mining, validations, save); peak RSS "
        f"{met.peak_rss_mb:.0f} MB; {load()}"
    )

    tuned = base.model_copy(update={"embedder": info.spec})
    if current_version(tuned, "squad-tuned") is not None:  # an earlier run's embedder built it
        remove_index(tuned, "squad-tuned")
    t0 = time.perf_counter()
    s = build_index(tuned, [Path(a.squad)], "squad-tuned", progress=True)
    lines.append(f"tuned index: {s.total_chunks} chunks ({time.perf_counter() - t0:.0f} s)")

    test = read_squad(test_json).records
    indexes = {
        "base": open_index(base, "squad-base", load_embedder(base)),
        "tuned": open_index(tuned, "squad-tuned", load_embedder(tuned)),
    }
    lines.append(f"held-out: {len(test)} questions of {len({q.group for q in test})} test articles")
    lines.append("| retriever | method | recall@1 | recall@2 | recall@5 | MRR@10 |")
    lines.append("|---|---|---|---|---|---|")
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for method in ("dense", "hybrid"):
        for name, index in indexes.items():
            per[(name, method)] = sc = scores(index, test, method)
            cells = [bootstrap_ci(sc[f"recall@{k}"], 2000).fmt() for k in KS]
            lines.append(
                f"| {name} | {method} | {' | '.join(cells)} | "
                f"{bootstrap_ci(sc['mrr@10'], 2000).fmt()} |"
            )
    for method in ("dense", "hybrid"):
        for metric in ("recall@1", "recall@2", "mrr@10"):
            d = paired_bootstrap(
                per[("base", method)][metric], per[("tuned", method)][metric], n_boot=10_000
            )
            lines.append(
                f"tuned - base, {method} {metric}: {d.diff:+.4f} "
                f"(95% CI {d.lo:+.4f} to {d.hi:+.4f}, p={d.p_value:.3g}, n={d.n})"
            )
    lines.append(f"end: {load()}")
    return lines


E2E_TOML = """
name = "bench-emb"
[settings]
top_k = 2
retrieval = "hybrid"
chunk_size = 256
max_context_chars = 900
[data]
dataset = "{dataset}"
test_fraction = 0.25
seed = 0
[index]
name = "bench-emb-squad"
[adapters.raft]
questions = 100
[adapters.raft.tune]
raft = true
p_oracle = 0.8
r = 16
alpha = 32
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lr = 4e-4
epochs = 1
batch_size = 4
val_fraction = 0.1
max_val_examples = 12
forgetting = false
[embedder]
{embedder}
[eval]
modes = ["rag", "hybrid:raft"]
limit = {limit}
batch_size = 8
max_new_tokens = 24
n_boot = 10000
"""


def bench_e2e(a: argparse.Namespace) -> list[str]:
    from ragtune.workflows.experiment import run_experiment
    from ragtune.workflows.experiment_config import load_experiment

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    toml = work / "bench-emb.toml"
    toml.write_text(
        E2E_TOML.format(
            dataset=REPO / "examples" / "squad-mini" / "demo.json",
            limit=a.limit,
            embedder=a.embedder_toml,
        )
    )
    exp = load_experiment(toml)
    settings = settings_for(work, a.threads).model_copy(update=exp.settings)
    lines = [f"== e2e ({time.strftime('%Y-%m-%d %H:%M')}, {a.threads} torch thread(s)) =="]
    lines.append(f"start: {load()}")
    t0 = time.perf_counter()
    out = run_experiment(exp, settings, work / "run", progress=True, say=print)
    lines.append(f"experiment: {time.perf_counter() - t0:.0f} s; {load()}")
    summ = out.summary
    emb = out.state.embedder
    if emb is not None:
        lines.append(f"embedder: {emb.name} {emb.version}; validation {emb.val_recall}")
    for name, v in summ["variants"].items():
        if "f1" in v:
            f = v["f1"]
            lines.append(f"{name}: F1 {f['mean']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}] n={v['n']}")
    for r, block in (summ.get("retrievers") or {}).items():
        cells = {k: v["mean"] for k, v in block.items() if isinstance(v, dict) and "mean" in v}
        lines.append(f"retrieval {r}: " + json.dumps({k: round(x, 3) for k, x in cells.items()}))
    for p in summ["pairs"]:  # each variant with the tuned retriever vs its base twin
        if p["a"] + "@tuned" == p["b"] or p["b"] + "@tuned" == p["a"]:
            f = p["f1"]
            lines.append(
                f"{p['b']} - {p['a']}: F1 {f['diff']:+.3f} (95% CI {f['lo']:+.3f} to "
                f"{f['hi']:+.3f}, p={f['p_value']:.3g}, n={p['n']})"
            )
    for row in summ.get("loss_split") or []:
        lines.append(
            f"loss split {row['variant']}: retrieval {row['retrieval_loss']['mean']:+.3f}, "
            f"reading {row['reading_loss']['mean']:.3f} -> {row['bigger']}"
        )
    lines.append("verdict: " + summ["verdict"]["text"].replace("\n", " | "))
    lines.append(f"end: {load()}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["recall", "sweep", "e2e"])
    p.add_argument("--squad", default=str(DEFAULT_SQUAD))
    p.add_argument("--work", default="/tmp/ragtune-bench-embedder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=2400, help="training pairs (seeded sample)")
    p.add_argument("--val-corpus", type=int, default=1000, help="validation passages")
    p.add_argument("--recipe", default="{}", help="more EmbedTuneArgs as JSON")
    p.add_argument(
        "--sweep",
        default="",
        help='candidate recipes (JSON list of EmbedTuneArgs dicts), e.g. \'[{"lr": 3e-5}, {"lr": 1e-4}]\'',
    )
    p.add_argument("--sweep-pairs", type=int, default=640, help="training pairs per candidate")
    p.add_argument("--limit", type=int, default=40, help="e2e: held-out questions")
    p.add_argument(
        "--embedder-toml",
        default="questions = 500\n[embedder.tune]\nmax_val_corpus = 1000\n",
        help="e2e: the [embedder] section's body",
    )
    p.add_argument("--save", action="store_true", help=f"append to {RESULTS}")
    a = p.parse_args()
    run = {"recall": bench_recall, "sweep": bench_sweep, "e2e": bench_e2e}[a.what]
    lines = run(a)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
