"""Tuner benchmarks on the default model (SmolLM2-135M-Instruct), baselines measured in the same run.

    python bench/bench_tuner.py throughput [--steps 4 --batch-size 4 --repeats 2]
    python bench/bench_tuner.py memory     [--steps 2]
    python bench/bench_tuner.py raft       [--questions 500]   # fewer -> extrapolated to 500
    python bench/bench_tuner.py all        [--questions 40]

1. throughput: tokens/s of the ragtune training loop (``tuner.train.train_loop``) vs a bare
   peft loop (right padding, ``model(..., labels=...)``, AdamW) on the same examples in the
   same batches, alternating A/B/A/B so machine load hits both alike. Target ratio >= 0.9.
2. memory: peak RSS of ``train_adapter`` with ``--method lora`` vs ``--method full``, each in
   its own subprocess (ru_maxrss of that process). Target LoRA <= 0.5 x full.
3. raft: wall time of ``train_adapter(--raft)`` with default hyperparameters on N SQuAD
   questions (split by article; index = those articles' paragraphs plus distractor
   articles, doc ids ``{title}#p{i}``). With N < 500 the 500-question time is extrapolated
   (fixed costs + per-question cost x 500) and labelled so.

Data: /work/shared/data/squad/squaddev_v1.1.json (or --squad). Results are appended to
bench/results/tuner.txt with --save.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SQUAD = REPO.parent / "shared" / "data" / "squad" / "squaddev_v1.1.json"


def settings_for(data_dir: Path, threads: int) -> Any:
    from ragtune.core.config import resolve_settings

    s, _ = resolve_settings(overrides={"data_dir": data_dir, "torch_threads": threads}, environ={})
    return s


def squad_articles(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["data"]


def rag_examples(squad: Path, n: int, tokenizer: Any) -> list[Any]:
    """n gold-passage QA examples rendered with core.prompts (one passage, ~250 tokens)."""
    from ragtune.core.prompts import render_training_example
    from ragtune.tuner.train import encode

    out = []
    for art in squad_articles(squad)[::-1]:  # last articles: not those the RAFT run uses
        for para in art["paragraphs"]:
            qa = para["qas"][0]
            ex = render_training_example(
                tokenizer, qa["question"], qa["answers"][0]["text"], [para["context"]], 1200
            )
            out.append(encode(tokenizer, ex.prompt, ex.completion))
            if len(out) == n:
                return out
    return out


# ---- 1. throughput ------------------------------------------------------------------------


def bare_peft_loop(model: Any, batches: list[list[Any]], pad_id: int, lr: float) -> list[float]:
    """The plain baseline: right padding, labels=..., HF's own loss; returns step end times."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    times = [time.perf_counter()]
    for batch in batches:
        T = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), T), pad_id)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        labels = torch.full((len(batch), T), -100)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            mask[i, :n] = 1
            labels[i, e.n_prompt : n] = ids[i, e.n_prompt : n]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return times


def lora_model(folder: str, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.tuner.args import TuneArgs

    a = TuneArgs()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(seed)
    return get_peft_model(
        model,
        LoraConfig(
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=a.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


def bench_throughput(opts: argparse.Namespace) -> dict[str, Any]:
    from ragtune.core.models import generator_folder, load_tokenizer, set_torch_threads
    from ragtune.tuner.args import TuneArgs
    from ragtune.tuner.train import epoch_order, train_loop

    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), opts.threads)
        set_torch_threads(settings)
        folder = generator_folder(settings)
        tok = load_tokenizer(folder)
        n = opts.steps * opts.batch_size
        data = rag_examples(opts.squad, n, tok)
        args = TuneArgs(
            data=["-"],
            name="bench",
            max_steps=opts.steps,
            batch_size=opts.batch_size,
            save_every=10**6,
            seed=1,
        )
        order = epoch_order([0] * len(data), {}, args.seed, 0)  # the batches train_loop uses
        batches = [
            [data[i] for i in order[s * opts.batch_size : (s + 1) * opts.batch_size]]
            for s in range(opts.steps)
        ]
        tokens = [sum(len(e.input_ids) for e in b) for b in batches]
        results: dict[str, list[float]] = {"ragtune": [], "bare_peft": []}
        for rep in range(opts.repeats):
            for which in ("bare_peft", "ragtune") if rep % 2 == 0 else ("ragtune", "bare_peft"):
                model = lora_model(folder, seed=1)
                if which == "bare_peft":
                    times = bare_peft_loop(model, batches, tok.pad_token_id, args.lr)
                else:
                    times = [time.perf_counter()]
                    train_loop(
                        model,
                        data,
                        [],
                        args,
                        Path(tmp) / f"w{rep}",
                        pad_id=tok.pad_token_id,
                        progress=False,
                        on_step=lambda s, loss, t=times: t.append(time.perf_counter()),
                    )
                # the first step pays one-off costs (allocator, kernels): time steps 2..N
                tps = sum(tokens[1:]) / (times[-1] - times[1])
                results[which].append(tps)
                print(f"  {which:<9} rep {rep}: {tps:7.1f} tokens/s", flush=True)
                del model
        import statistics

        rag = sum(results["ragtune"]) / len(results["ragtune"])
        bare = sum(results["bare_peft"]) / len(results["bare_peft"])
        # back-to-back pairs share the machine's load best: their median ratio is the headline
        pairs = [r / b for r, b in zip(results["ragtune"], results["bare_peft"], strict=True)]
        return {
            "ragtune_tokens_per_s": round(rag, 1),
            "bare_peft_tokens_per_s": round(bare, 1),
            "ratio_of_means": round(rag / bare, 3),
            "pair_ratios": [round(x, 3) for x in pairs],
            "ratio": round(statistics.median(pairs), 3),
            "steps": opts.steps,
            "batch_size": opts.batch_size,
            "tokens_per_step": round(sum(tokens) / len(tokens)),
            "repeats": opts.repeats,
            "threads": opts.threads,
        }


# ---- 2. memory ----------------------------------------------------------------------------


def memory_child(method: str, opts: argparse.Namespace) -> None:
    """Runs in its own process: train_adapter with one method, print peak RSS as JSON."""
    from ragtune.tuner.api import train_adapter
    from ragtune.tuner.args import TuneArgs
    from tests.tuner.helpers import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp) / "data", opts.threads)
        recs = []
        for art in squad_articles(opts.squad)[:2]:
            for para in art["paragraphs"][:8]:
                qa = para["qas"][0]
                recs.append(
                    {
                        "prompt": f"{para['context']}\n\n{qa['question']}",
                        "response": qa["answers"][0]["text"],
                    }
                )
        data = write_jsonl(Path(tmp) / "d.jsonl", recs)
        t0 = time.perf_counter()
        info = train_adapter(
            settings,
            TuneArgs(
                data=[str(data)],
                name=method,
                method=method,
                max_steps=opts.steps,
                batch_size=opts.batch_size,
                val_fraction=0.0,
                gradient_checkpointing=opts.gc,
                forgetting=False,
            ),
            progress=False,
        )
        print(
            json.dumps(
                {
                    "method": method,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "manifest_peak_rss_mb": info.manifest.metrics.peak_rss_mb,
                    "trainable_params": info.manifest.metrics.trainable_params,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        )


def bench_memory(opts: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for method in ("lora", "full"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "_memory_child",
                method,
                "--steps",
                str(opts.steps),
                "--threads",
                str(opts.threads),
                "--squad",
                str(opts.squad),
                "--batch-size",
                str(opts.batch_size),
            ]
            + (["--gradient-checkpointing"] if opts.gc else []),
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            raise SystemExit(f"{method} child failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"  {method:<4}: peak RSS {res['peak_rss_mb']:.0f} MB, "
            f"{res['trainable_params']:,} trainable params, {res['seconds']} s",
            flush=True,
        )
        out[method] = res
    out["gradient_checkpointing"] = opts.gc
    out["batch_size"] = opts.batch_size
    out["ratio_lora_over_full"] = round(out["lora"]["peak_rss_mb"] / out["full"]["peak_rss_mb"], 3)
    return out


# ---- 3. RAFT wall time --------------------------------------------------------------------


def write_index(settings: Any, articles: list[dict[str, Any]], name: str) -> str:
    """Index every SQuAD paragraph with the real indexer (doc id "{title}#p{i}")."""
    from tests.helpers import index_docs

    docs = [
        (f"{a['title']}#p{i}", p["context"])
        for a in articles
        for i, p in enumerate(a["paragraphs"])
    ]
    return index_docs(settings, name, docs)


def squad_subset(articles: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """n questions drawn round-robin over the articles' paragraphs (first question each)."""
    picked: list[dict[str, Any]] = [{"title": a["title"], "paragraphs": []} for a in articles]
    count, round_ = 0, 0
    while count < n:
        progressed = False
        for src, dst in zip(articles, picked, strict=True):
            paras = src["paragraphs"]
            if round_ < len(paras) and count < n:
                p = dict(paras[round_])
                p["qas"] = p["qas"][:1]
                dst["paragraphs"].append(p)
                count += 1
                progressed = True
        if not progressed:
            break
        round_ += 1
    # keep paragraph indexes equal to the full article's (doc ids must match the index)
    for src, dst in zip(articles, picked, strict=True):
        dst["paragraphs"] += [
            {"context": p["context"], "qas": []}
            for p in src["paragraphs"][len(dst["paragraphs"]) :]
        ]
    return {"version": "1.1", "data": picked}


def bench_raft(opts: argparse.Namespace) -> dict[str, Any]:
    from ragtune.tuner.api import train_adapter
    from ragtune.tuner.args import TuneArgs

    articles = squad_articles(opts.squad)
    train_articles, distractors = articles[:12], articles[12:16]
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp) / "data", opts.threads)
        t0 = time.perf_counter()
        version = write_index(settings, train_articles + distractors, "squad")
        index_s = time.perf_counter() - t0
        data = Path(tmp) / "squad-train.json"
        data.write_text(json.dumps(squad_subset(train_articles, opts.questions)))
        t0 = time.perf_counter()
        info = train_adapter(
            settings,
            TuneArgs(data=[str(data)], name="raft", raft=True, index="squad", epochs=1),
            progress=not opts.quiet,
        )
        wall = time.perf_counter() - t0
    m, data, raft = info.manifest.metrics, info.manifest.data, info.manifest.raft
    assert m is not None and data is not None and raft is not None  # the tuner writes them
    counts = data.counts
    fixed = wall - m.train_seconds  # model load, retrieval, forgetting check, saving
    per_q = m.train_seconds / max(counts.train, 1)
    train_500 = round(500 * (1 - 0.1) if counts.val else 500)
    est = fixed + per_q * train_500
    out = {
        "questions": opts.questions,
        "train": counts.train,
        "val": counts.val,
        "wall_s": round(wall, 1),
        "train_s": m.train_seconds,
        "fixed_s": round(fixed, 1),
        "tokens": m.tokens,
        "tokens_per_s": m.tokens_per_s,
        "tokens_per_example": round(m.tokens / max(m.steps, 1) / 4),
        "index_build_s": round(index_s, 1),
        "index_version": version,
        "val_loss": m.val_loss,
        "perplexity": m.perplexity.model_dump() if m.perplexity else None,
        "oracle_rate": raft.stats["train"].oracle_rate,
        "retrieval_recall": raft.stats["train"].retrieval_recall,
        "threads": opts.threads,
    }
    if opts.questions < 500:
        out["extrapolated_500_wall_s"] = round(est, 0)
        out["extrapolated_500_min"] = round(est / 60, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["throughput", "memory", "raft", "all", "_memory_child"])
    ap.add_argument("method", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--gradient-checkpointing",
        dest="gc",
        action="store_true",
        help="memory: train both methods with gradient checkpointing",
    )
    ap.add_argument("--save", action="store_true", help="append to bench/results/tuner.txt")
    opts = ap.parse_args()
    if opts.what == "_memory_child":
        opts.steps = opts.steps or 2
        memory_child(opts.method, opts)
        return
    results: dict[str, Any] = {}
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f} on {os.cpu_count()} cores; threads {opts.threads}")
    if opts.what in ("throughput", "all"):
        opts.steps = opts.steps or 4
        print("throughput (ragtune train_loop vs bare peft loop, same batches):")
        results["throughput"] = bench_throughput(opts)
        print("  ->", json.dumps(results["throughput"]))
    if opts.what in ("memory", "all"):
        opts.steps = 2
        gc = " with gradient checkpointing" if opts.gc else ""
        print(f"peak RSS, LoRA vs full fine-tuning{gc} (separate processes):")
        results["memory"] = bench_memory(opts)
        print(
            "  ->", json.dumps({"ratio_lora_over_full": results["memory"]["ratio_lora_over_full"]})
        )
    if opts.what in ("raft", "all"):
        print(f"RAFT adapter wall time on {opts.questions} SQuAD questions:")
        results["raft"] = bench_raft(opts)
        print("  ->", json.dumps(results["raft"]))
    if opts.save:
        out = REPO / "bench" / "results" / "tuner.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M")
        with out.open("a") as f:
            f.write(f"## {stamp} {' '.join(sys.argv[1:])} (load {load:.1f})\n")
            f.write(json.dumps(results, indent=2) + "\n\n")


if __name__ == "__main__":
    main()
