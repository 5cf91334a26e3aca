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

The run also prints the ceiling that memory bandwidth puts on mixed/one: a mixed step must
read every row's adapter (8 x its LoRA bytes) where one adapter reads its own once, so even
a kernel that does nothing but read those bytes takes ``extra bytes / read bandwidth``
longer per step (bandwidth measured in the same run, at the same thread count). And it
measures what no gathering at all would give: ``mixed/sliced`` is the gathered engine with its
per-row gather of the stacked weights replaced by slices (valid only here, where row i uses
slot i + 1, so the rows' weights are one contiguous run of the stack): the ceiling of any
torch-op kernel that avoids copying weights, not a path the service runs.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_decode_floor import read_bandwidth  # noqa: E402

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


def sliced(lora: Any) -> Callable[[bool], None]:
    """A switch that makes ``lora`` (a ``GatheredLora``) take each mixed batch's weights as a
    slice of its stacks instead of gathering them: rows must be in slot order, one per slot.
    Bench-only: it reads the kernel's private plan and stacks."""
    import torch

    gathered = lora.add_lora

    def add_lora(layer: Any, x: Any, result: Any) -> Any:
        plan, stack = lora._plan, lora._stacks.get(id(layer))
        if plan.single is not None or stack is None:
            return gathered(layer, x, result)
        rows, lo = x.shape[0], int(plan.index[0])
        assert plan.index.tolist() == list(range(lo, lo + rows)), "rows not in slot order"
        xa = torch.bmm(x.reshape(rows, -1, x.shape[-1]), stack.A[lo : lo + rows])
        out = torch.baddbmm(result.reshape(rows, -1, result.shape[-1]), xa, stack.B[lo : lo + rows])
        return out.reshape(result.shape)

    def switch(on: bool) -> None:
        lora.add_lora = add_lora if on else gathered

    return switch


def adapter_bytes(folder: Path) -> int:
    """Bytes of an adapter's LoRA weights (what a decode step reads for it)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            t = f.get_slice(key)
            total += math.prod(t.get_shape()) * 4  # fp32 in the stacks
    return total


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
    lora_bytes = [
        adapter_bytes(
            make_lora_adapter(settings, n, seed=i, r=16, target_modules=ALL_LINEAR, alpha=32).path
        )
        for i, n in enumerate(names)
    ]
    gen = load_generator(settings)
    prompts = [render_prompt(gen.tokenizer, q) for q in QUESTIONS]
    base = GenerationEngine(gen, settings)
    gathered = GenerationEngine(load_generator(settings), settings)
    peft_settings = settings.model_copy(update={"lora_kernel": "peft"})
    peft = GenerationEngine(load_generator(settings), peft_settings)
    for eng in (gathered, peft):
        for n in names:
            eng.load_adapter(n)

    slicing = sliced(gathered._lora)
    configs = {
        "base": (base, [None] * 8),
        "one/gathered": (gathered, ["ad0"] * 8),
        "mixed/gathered": (gathered, names),
        "mixed/sliced": (gathered, names),
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

    for k, (eng, adapters) in configs.items():  # warm up (and the preamble caches)
        slicing(k == "mixed/sliced")
        run(eng, adapters)
    load0 = os.getloadavg()
    rates: dict[str, list[float]] = {k: [] for k in configs}
    steps: dict[str, list[float]] = {k: [] for k in configs}
    keys = list(configs)
    for r in range(args.rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            slicing(k == "mixed/sliced")
            rates[k].append(run(*configs[k]))
            steps[k].append(step_ms(*configs[k]))
    load1 = os.getloadavg()
    read_gbs = read_bandwidth(args.threads)

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
    lines.append(
        f"  sliced   mixed/one: {ratio('mixed/sliced', 'one/gathered', rates)}   [tokens/s]; "
        f"{ratio('mixed/sliced', 'one/gathered', steps, inverse=True)}   [decode step speed]"
        "   (no weight gathering: the ceiling of torch ops)"
    )
    one_ms = statistics.median(steps["one/gathered"])
    extra = sum(lora_bytes) - lora_bytes[0]  # the mix reads all 8 adapters, not one
    floor_ms = extra / (read_gbs * 1e9) * 1000
    lines.append(
        f"  bandwidth ceiling: read {read_gbs:.1f} GB/s ({args.threads} thread(s)); LoRA "
        f"{lora_bytes[0] / 1e6:.1f} MB per adapter, a mixed step reads {extra / 1e6:.0f} MB "
        f"more = {floor_ms:.1f} ms at the floor; mixed/one <= {one_ms / (one_ms + floor_ms):.3f} "
        f"[decode step speed, one adapter's step {one_ms:.0f} ms]"
    )
    lines.append("  targets: mixed/one >= 0.95, one/base >= 0.9 (8 rows)")
    print("\n".join(lines))
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
