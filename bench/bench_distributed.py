"""Data-parallel training on this machine: tokens/s of `ragtune tune --nproc 2` (DDP, and
FSDP2 with `--strategy fsdp`) against one process, same data, same global batch, same cores.

    python bench/bench_distributed.py                  # ~15 min on a shared 2-core machine
    python bench/bench_distributed.py --steps 4 --repeats 1 --save
    python bench/bench_distributed.py --configs 2x1:ddp,2x1:fsdp,1x1 --steps 4 --repeats 1

The packaged SmolLM2-135M-Instruct with a LoRA (r 16 on q,k,v,o) on closed-book questions
of examples/squad-mini/demo.json; every step is 8 examples (batch 4 x 2 micro-batches). The
one-process run gets 2 torch threads, each of the two processes 1, so both use the same two
cores; a third run is one process on one thread; runs alternate so the machine's load hits
them alike. The figure is
the training loop's tokens/s from each adapter's manifest (every rank's tokens, over rank 0's
loop time) and the command's wall time (model loading and process start included). The load
average is printed with every run: on a shared machine it moves the absolute figures a lot.
``--save`` appends the report to bench/results/distributed.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "squad-mini" / "demo.json"
RESULTS = REPO / "bench" / "results" / "distributed.txt"
# (processes, torch threads each): the same two cores two ways, and one process on one thread,
# which shows what an oversubscribed machine does to a 2-thread process (its threads wait
# for each other at every parallel op while other jobs hold the cores). Two processes run
# under each strategy: DDP (whole model each) and FSDP2 (the model sharded over them).
CONFIGS = ((1, 2, "-"), (2, 1, "ddp"), (2, 1, "fsdp"), (1, 1, "-"))
Config = tuple[int, int, str]


def parse_configs(text: str) -> tuple[Config, ...]:
    """``2x1:fsdp,1x1`` -> ((2, 1, "fsdp"), (1, 1, "-")): processes x threads[:strategy]."""
    out = []
    for item in text.split(","):
        shape, _, strategy = item.strip().partition(":")
        n, t = (int(x) for x in shape.split("x"))
        out.append((n, t, strategy or ("ddp" if n > 1 else "-")))
    return tuple(out)


def run(
    data_dir: Path, name: str, nproc: int, threads: int, strategy: str, steps: int
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(data_dir), "--threads", str(threads)]
    cmd += ["tune", "--data", str(DATA), "--name", name, "--max-steps", str(steps)]
    cmd += ["--batch-size", "4", "--grad-accum", "2", "--val-fraction", "0", "--no-forgetting"]
    cmd += ["--dropout", "0", "--quiet", "--nproc", str(nproc)]
    if nproc > 1:
        cmd += ["--strategy", strategy]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    manifest = json.loads((data_dir / "adapters" / name / "manifest.json").read_text())
    m = manifest["metrics"]
    return {
        "nproc": nproc,
        "threads_each": threads,
        "strategy": strategy,
        "tokens_per_s": m["tokens_per_s"],
        "train_s": m["train_seconds"],
        "tokens": m["tokens"],
        "wall_s": round(wall, 1),
        "train_loss": m["train_loss"],
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--save", action="store_true")
    ap.add_argument(
        "--configs",
        type=parse_configs,
        default=CONFIGS,
        help="processes x threads[:strategy], comma-separated (default: "
        + ",".join(f"{n}x{t}" + (f":{s}" if n > 1 else "") for n, t, s in CONFIGS)
        + ")",
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for nproc, threads, strategy in args.configs:
                key = f"{rep}-{nproc}x{threads}{strategy}"
                r = run(Path(tmp) / f"d{key}", f"b{key}", nproc, threads, strategy, args.steps)
                rows.append(r)
                print(json.dumps(r), flush=True)
    lines = [
        f"# bench_distributed.py, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.cpu_count()} CPUs, {args.steps} steps x 8 examples, SmolLM2-135M LoRA r16",
        "nproc  threads/proc  strategy  tokens/s (loop)  loop s  wall s  train loss"
        "  load before/after",
    ]
    for r in rows:
        lines.append(
            f"{r['nproc']:>5}  {r['threads_each']:>12}  {r['strategy']:>8}"
            f"  {r['tokens_per_s']:>15}  {r['train_s']:>6}  {r['wall_s']:>6}"
            f"  {r['train_loss']:>10}  {r['load_before']}/{r['load_after']}"
        )
    best = {
        c: max(
            r["tokens_per_s"] for r in rows if (r["nproc"], r["threads_each"], r["strategy"]) == c
        )
        for c in args.configs
    }
    for (n, t, s), b in best.items():
        how = f" ({s})" if n > 1 else ""
        lines.append(f"best tokens/s with {n} process(es){how} x {t} thread(s): {b}")
    for (n, t, s), b in best.items():
        for (n1, t1, _), b1 in best.items():
            if n > 1 and n1 == 1:
                lines.append(f"{n} x {t} thread ({s}) / 1 x {t1} thread(s): {b / b1:.2f}x")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
