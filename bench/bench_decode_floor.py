"""A decode step against its floor: this machine's memory bandwidth, the bytes one step of
SmolLM2-135M must read, and the step time at 1 and 8 rows in fp32, bf16 weights and int8
(dynamic, per channel) weights, in one run.

Run: ``flock /tmp/ragtune-heavy.lock python bench/bench_decode_floor.py`` (~5 minutes).

- Bandwidth: the best of 5 copies of a 512 MB numpy array (read + write) and of 5 sums of a
  256 MB torch tensor (read only), on one thread.
- Bytes per step: every weight is read once per step (the tied embedding as the LM head:
  49,152 x 576), plus the key/value cache of the rows at ``--context`` positions.
- Step time: the median of ``--steps`` decode steps of the generation engine the service
  uses (``ContinuousBatch.step``), rows prefilled with real prompts first.
- Quality of each precision: next-token argmax agreement with fp32, teacher-forced on the
  demo's passages (300 tokens each); 1.0 = the same greedy choices.
Results: bench/results/decode_floor.txt (appended).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ragtune.core.config import resolve_settings  # noqa: E402
from ragtune.core.decode import Row  # noqa: E402
from ragtune.core.generation import GenerationEngine  # noqa: E402
from ragtune.core.models import Generator, load_generator  # noqa: E402
from ragtune.core.prompts import render_prompt  # noqa: E402
from ragtune.core.types import GenRequest  # noqa: E402

RESULTS = REPO / "bench" / "results" / "decode_floor.txt"
DEMO = REPO / "examples" / "squad-mini" / "demo.json"


def bandwidth() -> tuple[float, float]:
    a = np.ones(64 * 2**20)  # 512 MB of float64
    b = np.empty_like(a)
    copy_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        copy_s.append(time.perf_counter() - t0)
    return 2 * a.nbytes / min(copy_s) / 1e9, read_bandwidth(1)


def read_bandwidth(threads: int) -> float:
    """GB/s of a large read (a sum over a 256 MB float32 tensor) on ``threads``; best of 5."""
    import torch

    torch.set_num_threads(threads)  # per calling thread under libgomp: set it here too
    t = torch.ones(64 * 2**20)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - t0)
    return t.numel() * 4 / best / 1e9


def weight_bytes(model: Any) -> int:
    """Bytes of every distinct weight (a tied embedding counts once, as the LM head)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    for m in model.modules():  # int8 dynamic layers keep packed weights outside parameters
        if isinstance(m, DynamicQuantLinear):
            w = m.weight()
            total += w.numel() * w.element_size()
    return total


def kv_bytes(model: Any, rows: int, context: int) -> int:
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * rows * 4


def step_ms(engine: GenerationEngine, prompts: list[str], rows: int, steps: int) -> float:
    batch = engine.batch()
    batch.add([Row(GenRequest(p, None, 10_000), lambda r: None) for p in prompts[:rows]])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch.step()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def agreement(ref: Any, other: Any, tok: Any, passages: list[str]) -> float:
    import torch

    hits = []
    with torch.inference_mode():
        for text in passages:
            ids = tok(text, return_tensors="pt").input_ids[:, :300]
            a = ref(input_ids=ids).logits[0].argmax(-1)
            b = other(input_ids=ids).logits[0].float().argmax(-1)
            hits.append(float((a == b).float().mean()))
    return statistics.mean(hits)


def main() -> None:
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--save", action="store_true", help=f"append to {RESULTS.name}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings, _ = resolve_settings(overrides={"torch_threads": 1}, environ={})
    gen = load_generator(settings)
    variants = {"fp32": gen.model}
    variants["bf16"] = copy.deepcopy(gen.model).to(torch.bfloat16)
    q8 = copy.deepcopy(gen.model)
    q8.model = quantize_dynamic(q8.model, {torch.nn.Linear: per_channel_dynamic_qconfig})
    variants["int8 dynamic"] = q8
    engines = {
        k: GenerationEngine(
            Generator(m, gen.tokenizer, gen.model_id, gen.folder, gen.fingerprint), settings
        )
        for k, m in variants.items()
    }
    raw = json.loads(DEMO.read_text())
    passages = [p["context"] for a in raw["data"] for p in a["paragraphs"]][:8]
    questions = [q["question"] for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]]
    prompts = [
        render_prompt(gen.tokenizer, q, passages[i % 8 : i % 8 + 1])
        for i, q in enumerate(questions[:8])
    ]
    context = int(statistics.median(len(gen.tokenizer(p)["input_ids"]) for p in prompts))

    load0 = os.getloadavg()
    copy_gbs, read_gbs = bandwidth()
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for k, eng in engines.items():
            for rows in (1, 8):
                times.setdefault((k, rows), []).append(step_ms(eng, prompts, rows, args.steps))
    agree = {k: agreement(gen.model, m, gen.tokenizer, passages) for k, m in variants.items()}
    load1 = os.getloadavg()

    lines = [
        f"# bench_decode_floor {time.strftime('%Y-%m-%d %H:%M')}: SmolLM2-135M, 1 thread, "
        f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} before, {load1[0]:.2f} after",
        f"memory bandwidth (1 thread): numpy copy {copy_gbs:.1f} GB/s (read + write), "
        f"torch sum {read_gbs:.1f} GB/s (read)",
    ]
    fp32 = {rows: statistics.median(times[("fp32", rows)]) for rows in (1, 8)}
    for k, m in variants.items():
        wb = weight_bytes(m)
        for rows in (1, 8):
            need = wb + kv_bytes(m, rows, context)
            floor = need / (read_gbs * 1e9) * 1000
            t = statistics.median(times[(k, rows)])
            lines.append(
                f"{k:13s} {rows} row(s): step {t:6.1f} ms (rounds "
                f"{', '.join(f'{x:.0f}' for x in times[(k, rows)])}); reads {need / 1e6:.0f} MB "
                f"(weights {wb / 1e6:.0f} MB + cache at {context} positions) -> floor "
                f"{floor:.1f} ms = {t / floor:.1f}x the floor; {fp32[rows] / t:.2f}x fp32's speed"
            )
        lines.append(f"{k:13s} next-token agreement with fp32: {agree[k]:.3f}")
    print("\n".join(lines))
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
