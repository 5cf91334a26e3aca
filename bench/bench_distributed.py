"""Data-parallel training on this machine: tokens/s of `ragtune tune --nproc 2` against one
process, same data, same global batch, same cores.

    python bench/bench_distributed.py                  # ~10 min on a shared 2-core machine
    python bench/bench_distributed.py --steps 4 --repeats 1 --save

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

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "squad-mini" / "demo.json"
RESULTS = REPO / "bench" / "results" / "distributed.txt"
# (processes, torch threads each): the same two cores two ways, and one process on one thread,
# which shows what an oversubscribed machine does to a 2-thread process (its threads wait
# for each other at every parallel op while other jobs hold the cores).
CONFIGS = ((1, 2), (2, 1), (1, 1))


def run(data_dir: Path, name: str, nproc: int, threads: int, steps: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(data_dir), "--threads", str(threads)]
    cmd += ["tune", "--data", str(DATA), "--name", name, "--max-steps", str(steps)]
    cmd += ["--batch-size", "4", "--grad-accum", "2", "--val-fraction", "0", "--no-forgetting"]
    cmd += ["--dropout", "0", "--quiet", "--nproc", str(nproc)]
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
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for nproc, threads in CONFIGS:
                key = f"{rep}-{nproc}x{threads}"
                r = run(Path(tmp) / f"d{key}", f"b{key}", nproc, threads, args.steps)
                rows.append(r)
                print(json.dumps(r), flush=True)
    lines = [
        f"# bench_distributed.py, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.cpu_count()} CPUs, {args.steps} steps x 8 examples, SmolLM2-135M LoRA r16",
        "nproc  threads/proc  tokens/s (loop)  loop s  wall s  train loss  load before/after",
    ]
    for r in rows:
        lines.append(
            f"{r['nproc']:>5}  {r['threads_each']:>12}  {r['tokens_per_s']:>15}  {r['train_s']:>6}"
            f"  {r['wall_s']:>6}  {r['train_loss']:>10}  {r['load_before']}/{r['load_after']}"
        )
    best = {
        (n, t): max(r["tokens_per_s"] for r in rows if (r["nproc"], r["threads_each"]) == (n, t))
        for n, t in CONFIGS
    }
    for (n, t), b in best.items():
        lines.append(f"best tokens/s with {n} process(es) x {t} thread(s): {b}")
    for t in (2, 1):
        ratio = best[2, 1] / best[1, t]
        lines.append(f"2 processes x 1 thread / 1 process x {t} thread(s): {ratio:.2f}x")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
