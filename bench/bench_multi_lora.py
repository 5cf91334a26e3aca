"""Batched multi-LoRA on SmolLM2-135M: 8 rows on the base model, on one adapter, and each on
its own adapter, with the gathered kernel and with peft's mixed-batch path, in one run.

Run: ``flock /tmp/ragtune-heavy.lock python bench/bench_multi_lora.py`` (~10 minutes on a
shared 2-core machine; ``--rounds 1 --tokens 8`` for a smoke run).

Each configuration generates 8 rows together through the generation engine the service
uses (``GenerationEngine.generate_batch``: prefill with the cached preamble, then continuous
decode steps), ``--tokens`` new tokens per row; throughput = generated tokens / seconds.
Rounds run every configuration back to back in a rotating order, ratios are taken within
each round (the same load on both sides) and the median over rounds is reported. The
adapters are random LoRAs shaped like the demo's (r 16, alpha 32, all seven linear
projections), so every row's LoRA really runs. A decode-only figure (one step of 8 running
rows) is measured the same way. Results: bench/results/multi_lora.txt (appended).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ragtune.core.config import resolve_settings  # noqa: E402
from ragtune.core.decode import Row  # noqa: E402
from ragtune.core.generation import GenerationEngine  # noqa: E402
from ragtune.core.models import load_generator  # noqa: E402
from ragtune.core.prompts import render_prompt  # noqa: E402
from ragtune.core.types import GenRequest  # noqa: E402
from tests.helpers import make_lora_adapter  # noqa: E402

RESULTS = REPO / "bench" / "results" / "multi_lora.txt"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUESTIONS = [
    "Explain in detail how a bicycle works.",
    "Describe the water cycle step by step.",
    "Write a long story about a dragon.",
    "List everything you know about the Moon.",
    "Explain how computers store numbers.",
    "Describe the history of Paris at length.",
    "Tell me about the oceans of the world.",
    "Explain photosynthesis to a child.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per row")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="decode-only: steps per sample")
    ap.add_argument("--save", action="store_true", help=f"append to {RESULTS.name}")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-lora-"))
    settings, _ = resolve_settings(
        overrides={
            "data_dir": tmp / "data",
            "torch_threads": args.threads,
            "max_loaded_adapters": 8,
        },
        environ={},
    )
    names = [f"ad{i}" for i in range(8)]
    for i, n in enumerate(names):
        make_lora_adapter(settings, n, seed=i, r=16, target_modules=ALL_LINEAR, alpha=32)
    gen = load_generator(settings)
    prompts = [render_prompt(gen.tokenizer, q) for q in QUESTIONS]
    base = GenerationEngine(gen, settings)
    gathered = GenerationEngine(load_generator(settings), settings)
    peft_settings = settings.model_copy(update={"lora_kernel": "peft"})
    peft = GenerationEngine(load_generator(settings), peft_settings)
    for eng in (gathered, peft):
        for n in names:
            eng.load_adapter(n)

    configs = {
        "base": (base, [None] * 8),
        "one/gathered": (gathered, ["ad0"] * 8),
        "mixed/gathered": (gathered, names),
        "one/peft": (peft, ["ad0"] * 8),
        "mixed/peft": (peft, names),
    }

    def run(eng: GenerationEngine, adapters: list[str | None]) -> float:
        reqs = [GenRequest(p, a, args.tokens) for p, a in zip(prompts, adapters, strict=True)]
        t0 = time.perf_counter()
        out = eng.generate_batch(reqs)
        return sum(r.completion_tokens for r in out) / (time.perf_counter() - t0)

    def step_ms(eng: GenerationEngine, adapters: list[str | None]) -> float:
        """Median time of one decode step with 8 running rows (prefill excluded)."""
        batch = eng.batch()
        reqs = [GenRequest(p, a, 10_000) for p, a in zip(prompts, adapters, strict=True)]
        batch.add([Row(r, lambda res: None) for r in reqs])
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            batch.step()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    for eng, adapters in configs.values():  # warm up (and the preamble caches)
        run(eng, adapters)
    load0 = os.getloadavg()
    rates: dict[str, list[float]] = {k: [] for k in configs}
    steps: dict[str, list[float]] = {k: [] for k in configs}
    keys = list(configs)
    for r in range(args.rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            rates[k].append(run(*configs[k]))
            steps[k].append(step_ms(*configs[k]))
    load1 = os.getloadavg()

    lines = [
        f"# bench_multi_lora {time.strftime('%Y-%m-%d %H:%M')}: SmolLM2-135M fp32, 8 rows, "
        f"{args.tokens} new tokens, 8 random LoRAs r16 on 7 projections, {args.threads} "
        f"thread(s), {args.rounds} rounds, {os.cpu_count()} CPUs, load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after"
    ]
    for k in keys:
        lines.append(
            f"{k:15s} {statistics.median(rates[k]):6.1f} tokens/s "
            f"(rounds {', '.join(f'{x:.1f}' for x in rates[k])}); decode step "
            f"{statistics.median(steps[k]):.0f} ms"
        )

    def ratio(a: str, b: str, what: dict[str, list[float]], inverse: bool = False) -> str:
        rs = [(y / x if inverse else x / y) for x, y in zip(what[a], what[b], strict=True)]
        return f"{statistics.median(rs):.3f} (rounds {', '.join(f'{x:.3f}' for x in rs)})"

    for kernel in ("gathered", "peft"):
        lines.append(
            f"  {kernel:8s} mixed/one: {ratio(f'mixed/{kernel}', f'one/{kernel}', rates)}; "
            f"one/base: {ratio(f'one/{kernel}', 'base', rates)}   [tokens/s]"
        )
        lines.append(
            f"  {kernel:8s} mixed/one: "
            f"{ratio(f'mixed/{kernel}', f'one/{kernel}', steps, inverse=True)}; one/base: "
            f"{ratio(f'one/{kernel}', 'base', steps, inverse=True)}   [decode step speed]"
        )
    lines.append("  targets: mixed/one >= 0.95, one/base >= 0.9 (8 rows)")
    print("\n".join(lines))
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
