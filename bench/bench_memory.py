"""Peak RSS of a LoRA training step on SmolLM2-135M: glibc's default mmap threshold vs a fixed
one (setting ``malloc_mmap_threshold_kb``), with and without gradient checkpointing.

Run: ``python bench/bench_memory.py`` (memory, not time: no heavy lock needed; ~3 minutes on a
shared 2-core machine). Each configuration runs in its own process (peak RSS is per process):
the packaged model in fp32, a LoRA like the demo's RAFT adapter (r 16, alpha 32, all seven
linear projections), ``--steps`` AdamW steps on a micro-batch of ``--rows`` x ``--tokens``
tokens with the loss on the last 16 tokens of each row (the tuner's ``loss_sum``, LM head
only where the loss needs it). Results: bench/results/memory.txt (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "memory.txt"


def one(threshold_kb: int, checkpointing: bool, rows: int, tokens: int, steps: int) -> dict:
    """Runs in the child process: train ``steps`` steps, return the peak RSS in MB."""
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.core.config import resolve_settings
    from ragtune.core.models import generator_folder, set_torch_threads, set_training_allocator
    from ragtune.tuner.train import Encoded, collate, loss_sum

    settings, _ = resolve_settings(
        overrides={"torch_threads": 1, "malloc_mmap_threshold_kb": threshold_kb}, environ={}
    )
    set_torch_threads(settings)
    set_training_allocator(settings)  # the threshold, as every ragtune training run sets it
    model = AutoModelForCausalLM.from_pretrained(generator_folder(settings), dtype=torch.float32)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = [
            Encoded(torch.randint(100, 40000, (tokens,), generator=g).tolist(), tokens - 16)
            for _ in range(rows)
        ]
        loss = loss_sum(model, collate(batch, 0), "cpu")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "s_per_step": (time.perf_counter() - t0) / steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=460, help="tokens a row (RAFT rows: ~350-460)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--save", action="store_true", help=f"append to {RESULTS.name}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kb, ckpt = json.loads(args.child)
        print(json.dumps(one(kb, ckpt, args.rows, args.tokens, args.steps)))
        return
    load0 = os.getloadavg()[0]
    lines = []
    for kb in (0, 1024):
        for ckpt in (False, True):
            sizes = ["--rows", str(args.rows), "--tokens", str(args.tokens), "--steps"]
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    *sizes,
                    str(args.steps),
                    "--child",
                    json.dumps([kb, ckpt]),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            what = "glibc default" if kb == 0 else f"fixed {kb} KiB"
            lines.append(
                f"  mmap threshold {what:14s} checkpointing {'on ' if ckpt else 'off'}: "
                f"peak RSS {r['peak_mb']:6.0f} MB, {r['s_per_step']:.1f} s a step"
            )
            print(lines[-1], flush=True)
    head = (
        f"# bench_memory {time.strftime('%Y-%m-%d %H:%M')}: LoRA step on SmolLM2-135M fp32, "
        f"{args.rows} x {args.tokens} tokens, {args.steps} steps, 1 thread, load average "
        f"{load0:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(head)
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join([head, *lines]) + "\n\n")


if __name__ == "__main__":
    main()
