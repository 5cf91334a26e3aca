"""Decode throughput of the generation engine on the configured device, at 1 and at N rows.

    python bench/bench_device.py                       # device=auto: the GPU where present
    python bench/bench_device.py --rows 1,32 --new-tokens 64 --device cuda
    python bench/bench_device.py --device cpu --rows 1,8 --new-tokens 16   # a CPU smoke run

For each row count: a batch of that many different questions (answer = "full", so rows do
not stop at the first line) goes through ``GenerationEngine.generate_batch`` (continuous
batching, the service's decode path); the figure is generated tokens / wall seconds, after
one warm-up batch. The 1-row figure is the baseline the N-row one is read against (how
much batching buys on this device). Prints the device, dtype and torch version with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "Explain how a river forms, step by step.",
    "Describe the city of Paris to a visitor.",
    "What should a beginner know about the Python language?",
    "Tell the story of the first Olympic Games.",
    "Why is the sky blue? Explain it simply.",
    "Describe the water cycle in a few sentences.",
    "What makes a good cup of tea?",
    "How do plants turn light into sugar?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--generator", default=None, help="generator spec (default: packaged)")
    ap.add_argument("--rows", default="1,32", help="comma list of batch sizes")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one JSON line per row count")
    args = ap.parse_args()

    from ragtune.core.config import resolve_settings
    from ragtune.core.generation import GenerationEngine
    from ragtune.core.models import load_generator
    from ragtune.core.prompts import render_prompt
    from ragtune.core.types import GenRequest

    rows_list = [int(r) for r in args.rows.split(",")]
    overrides = {
        "device": args.device,
        "max_batch_size": max(rows_list),
        "generator": args.generator,
    }
    settings, _ = resolve_settings(overrides=overrides)
    settings = settings.model_copy(update={"max_new_tokens_limit": args.new_tokens})
    gen = load_generator(settings)
    engine = GenerationEngine(gen, settings)
    param = next(gen.model.parameters())
    import torch

    head = {
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "model": gen.model_id,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(head) if args.json else "  ".join(f"{k}={v}" for k, v in head.items()))

    def batch(rows: int) -> list[GenRequest]:
        prompts = [
            render_prompt(gen.tokenizer, QUESTIONS[i % len(QUESTIONS)] + f" ({i})")
            for i in range(rows)
        ]
        return [GenRequest(p, None, args.new_tokens, 0.0, stop_at_newline=False) for p in prompts]

    def sync() -> None:
        if torch.cuda.is_available() and param.device.type == "cuda":
            torch.cuda.synchronize()

    engine.generate_batch(batch(2))  # warm-up: kernels, caches
    for rows in rows_list:
        best = None
        for _ in range(args.repeats):
            reqs = batch(rows)
            sync()
            t0 = time.perf_counter()
            out = engine.generate_batch(reqs)
            sync()
            dt = time.perf_counter() - t0
            tokens = sum(r.completion_tokens for r in out)
            rate = tokens / dt
            if best is None or rate > best["tokens_per_s"]:
                best = {
                    "rows": rows,
                    "tokens": tokens,
                    "seconds": round(dt, 3),
                    "tokens_per_s": round(rate, 1),
                }
        assert best is not None
        best["load"] = os.getloadavg()[0]
        if args.json:
            print(json.dumps(best))
        else:
            print(
                f"rows {rows:>3}: {best['tokens']} tokens in {best['seconds']} s = "
                f"{best['tokens_per_s']} tokens/s (best of {args.repeats}; load {best['load']:.2f})"
            )


if __name__ == "__main__":
    main()
