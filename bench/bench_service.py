"""Service benchmark: real packaged SmolLM2 + MiniLM, `ragtune serve` over real HTTP.

Measures, in one run (baselines included):
1. throughput (completed queries/s, fixed max_new_tokens) at 1, 4 and 8 concurrent clients,
   as a ratio to 1 client (target: 8 clients >= 3x, thanks to batching);
2. mixed adapters: 8 clients each on its own adapter vs 8 clients on one adapter
   (target >= 0.8);
3. HTTP + pipeline overhead: /v1/query latency minus bare ``model.generate`` on the same
   prompt, at p50 (target <= 5%);
4. time from publishing a new adapter to its first answered request.

    python bench/bench_service.py [--threads 1] [--tokens 16] [--seconds 20] [--rounds 3]
                                  [--pairs 15] [--out FILE]

The server runs as a subprocess (its own GIL), on 127.0.0.1. On a shared 2-core machine
the numbers are noisy, so each comparison is measured in several rounds whose phases run
back to back (1, 4, 8 clients; one adapter, mixed adapters), the ratio is taken within each
round (both sides saw the same load), and the median over rounds is reported with the
spread. The run prints the load average before and after.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ragtune.core.config import Settings, resolve_settings  # noqa: E402

QUESTIONS = [
    "Where is the Eiffel Tower?",
    "When did Paris host the Olympic Games?",
    "What is the highest mountain on Earth?",
    "Which river is one of the longest in the world?",
    "Who created the Python programming language?",
    "What does photosynthesis produce?",
    "How long did it take to build the Great Wall?",
    "Which prizes did Marie Curie win?",
]
# Questions whose answers tend to run to max_new_tokens, so that every query does about
# the same work (static batches run to their longest row; short answers would measure
# answer lengths rather than batching).
LONG_QUESTIONS = [
    f"List twenty {what}, separated by commas."
    for what in (
        "European capital cities",
        "animals that live in Africa",
        "programming languages",
        "fruits",
        "rivers of the world",
        "famous scientists",
        "mountains",
        "musical instruments",
    )
]
DOCS = {
    "eiffel.txt": "The Eiffel Tower is a wrought-iron tower on the Champ de Mars in Paris, France.",
    "olympics.txt": "Paris hosted the Summer Olympic Games in 1900, 1924 and 2024.",
    "everest.txt": "Mount Everest, in the Himalayas, is the highest mountain above sea level.",
    "nile.txt": "The Nile is a major river in Africa and one of the longest rivers in the world.",
    "python.txt": "Python is a programming language created by Guido van Rossum in 1991.",
    "photo.txt": "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "wall.txt": "The Great Wall of China was built over many centuries, from the 7th century BC.",
    "curie.txt": "Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_adapters(settings: Settings, names: list[str]) -> None:
    """Publish random LoRA adapters (r=8 on q/v) for the packaged generator."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.core.manifests import MANIFEST, AdapterManifest
    from ragtune.core.models import folder_fingerprint, generator_folder
    from ragtune.core.registry import publish

    folder = generator_folder(settings)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(base, cfg)
        staged = settings.adapters_dir / f".tmp-bench-{name}"
        model.save_pretrained(staged)
        AdapterManifest(
            name=name,
            method="lora",
            base_model="SmolLM2-135M-Instruct",
            base_fingerprint=folder_fingerprint(folder),
            created_at="bench",
        ).write(staged / MANIFEST)
        publish(settings, staged, name)
        base = model.unload()


class Server:
    def __init__(
        self,
        data_dir: Path,
        threads: int,
        tokens: int,
        port: int,
        window_ms: float,
        launcher: tuple[str, ...] = ("-m", "ragtune"),
    ) -> None:
        """``launcher``: what follows the interpreter on the command line (a bench script
        that runs the CLI with a baseline's behaviour, say)."""
        env = os.environ | {
            "RAGTUNE_BATCH_WINDOW_MS": str(window_ms),
            "RAGTUNE_MAX_NEW_TOKENS": str(tokens),
            "RAGTUNE_MAX_LOADED_ADAPTERS": "10",
            "PYTHONPATH": str(REPO),
        }
        cmd = [sys.executable, *launcher, "--data-dir", str(data_dir)]
        cmd += ["--threads", str(threads), "serve", "--port", str(port), "--log-level", "warning"]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, cwd=data_dir.parent, env=env)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("server exited")
            time.sleep(0.5)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def batch_counts(url: str) -> dict[str, float]:
    """Rows decoded / decode steps / rows prefilled / prefill passes so far (Prometheus)."""
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("ragtune_batch_size_", "ragtune_prefill_rows_")) and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def closed_loop(
    url: str, bodies: list[dict], seconds: float
) -> tuple[float, int, list[float], float, float, float]:
    """Each body is one client sending requests back to back for ``seconds``.

    Returns (queries/s, done, latencies, rows per decode step, tokens per answer,
    requests per prefill pass)."""
    done = 0
    lat: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(body: dict) -> None:
        nonlocal done
        with httpx.Client(base_url=url, timeout=600) as c:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = c.post("/v1/query", json=body)
                r.raise_for_status()
                with lock:
                    done += 1
                    tokens.append(r.json()["usage"]["completion_tokens"])
                    lat.append(time.perf_counter() - t0)

    before = batch_counts(url)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(client, bodies))
    rate = done / (time.perf_counter() - t0)
    after = batch_counts(url)

    def per(kind: str) -> float:  # 0 when the server has no such metric
        total = after.get(f"{kind}_sum", 0.0) - before.get(f"{kind}_sum", 0.0)
        steps = after.get(f"{kind}_count", 0.0) - before.get(f"{kind}_count", 0.0)
        return total / max(1.0, steps)

    mean, joined = per("ragtune_batch_size"), per("ragtune_prefill_rows")
    log(
        f"  {len(bodies)} clients: {rate:.2f} q/s, {mean:.1f} rows per decode step, {joined:.1f} per prefill"
    )
    return rate, done, lat, mean, statistics.mean(tokens), joined


class BareGenerator:
    """Bare ``model.generate`` on the exact prompt the service renders (base mode)."""

    def __init__(self, settings: Settings, question: str, tokens: int) -> None:
        from ragtune.core.generation import _stop_ids
        from ragtune.core.models import load_generator
        from ragtune.core.prompts import render_prompt

        self.gen = load_generator(settings)
        tok = self.gen.tokenizer
        self.enc = tok(
            [render_prompt(tok, question)], return_tensors="pt", add_special_tokens=False
        )
        self.kwargs = {
            "max_new_tokens": tokens,
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": _stop_ids(tok),
        }

    def time_one(self) -> float:
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            self.gen.model.generate(**self.enc, **self.kwargs)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (server and bare)")
    ap.add_argument("--tokens", type=int, default=16, help="max_new_tokens for every request")
    ap.add_argument("--seconds", type=float, default=20.0, help="per throughput phase")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each comparison")
    ap.add_argument("--pairs", type=int, default=15, help="overhead: request/generate pairs")
    ap.add_argument(
        "--window-ms",
        type=float,
        default=20.0,
        help="the server's batch_window_ms (setting default 20)",
    )
    ap.add_argument(
        "--mode",
        default="base",
        choices=["base", "rag"],
        help="base: long-answer questions, no retrieval; rag: short questions, top_k 1",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service.txt")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-"))
    data = tmp / "data"
    settings, _ = resolve_settings(
        overrides={"data_dir": data, "torch_threads": args.threads}, environ={}
    )
    from ragtune.core.models import load_embedder
    from tests.service.helpers import write_index

    log("building the index and 9 adapters ...")
    write_index(settings, load_embedder(settings), docs=DOCS)
    names = [f"ad{i}" for i in range(8)]
    make_adapters(settings, names)

    load0 = os.getloadavg()
    port = 18000 + os.getpid() % 1000
    server = Server(data, args.threads, args.tokens, port, args.window_ms)
    lines: list[str] = []
    try:
        t0 = time.perf_counter()
        server.wait_ready()
        lines.append(f"server ready in {time.perf_counter() - t0:.1f} s")

        def body(i: int, adapter: str | None = None) -> dict:
            qs = LONG_QUESTIONS if args.mode == "base" else QUESTIONS
            b = {"question": qs[i % len(qs)], "top_k": 1}
            b |= {"max_new_tokens": args.tokens, "mode": args.mode}
            if adapter:
                b["mode"] = "hybrid" if args.mode == "rag" else "finetune"
                b["adapter"] = adapter
            return b

        # 1. throughput at 1, 4, 8 clients, in rounds; ratios within each round
        closed_loop(server.url, [body(0)], 3)  # warm up
        runs: dict[int, list[tuple[float, int, list[float], float, float, float]]] = {
            1: [],
            4: [],
            8: [],
        }
        for _ in range(args.rounds):
            for clients in runs:
                runs[clients].append(
                    closed_loop(server.url, [body(i) for i in range(clients)], args.seconds)
                )
        for clients, phases in runs.items():
            rates = [p[0] for p in phases]
            lat = [x for p in phases for x in p[2]]
            lines.append(
                f"throughput {clients} client(s): {statistics.median(rates):.2f} queries/s median "
                f"of {len(rates)} rounds ({', '.join(f'{r:.2f}' for r in rates)}; "
                f"{sum(p[1] for p in phases)} done, p50 latency {statistics.median(lat):.2f} s, "
                f"{statistics.mean(p[3] for p in phases):.1f} rows per decode step, "
                f"{statistics.mean(p[5] for p in phases):.1f} requests per prefill, "
                f"{statistics.mean(p[4] for p in phases):.1f} tokens/answer)"
            )
        for clients in (4, 8):
            ratios = [m[0] / o[0] for m, o in zip(runs[clients], runs[1], strict=True)]
            lines.append(
                f"  ratio {clients}/1 clients: {statistics.median(ratios):.2f}x median "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target 8: >= 3x)"
            )

        # 3. overhead: /v1/query (base mode, one client) vs bare model.generate on the same
        # prompt in this process, interleaved pair by pair so that both see the same load
        q = LONG_QUESTIONS[0]
        bare = BareGenerator(settings, q, args.tokens)
        http_lat, bare_lat = [], []
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for i in range(args.pairs + 1):
                t1 = time.perf_counter()
                r = c.post(
                    "/v1/query",
                    json={"question": q, "mode": "base", "max_new_tokens": args.tokens},
                )
                r.raise_for_status()
                if i:  # the first pair warms up
                    http_lat.append(time.perf_counter() - t1)
                    bare_lat.append(bare.time_one())
                else:
                    bare.time_one()
        http_p50, bare_p50 = statistics.median(http_lat), statistics.median(bare_lat)
        over = (http_p50 - bare_p50) / bare_p50 * 100
        paired = statistics.median(
            [(h - b) / b * 100 for h, b in zip(http_lat, bare_lat, strict=True)]
        )
        lines.append(
            f"overhead: /v1/query p50 {http_p50 * 1000:.0f} ms vs bare model.generate p50 "
            f"{bare_p50 * 1000:.0f} ms -> {over:+.1f}% (median of {len(http_lat)} paired "
            f"differences: {paired:+.1f}%; target <= 5%; "
            f"{r.json()['usage']['completion_tokens']} tokens)"
        )

        # 2. mixed adapters (all eight loaded first: this measures generation, not loading)
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for n in names:
                c.post(f"/v1/adapters/{n}/load").raise_for_status()
        ones, mixeds = [], []
        for _ in range(args.rounds):
            ones.append(
                closed_loop(server.url, [body(i, "ad0") for i in range(8)], args.seconds)[0]
            )
            mixeds.append(
                closed_loop(server.url, [body(i, names[i]) for i in range(8)], args.seconds)[0]
            )
        ratios = [m / o for m, o in zip(mixeds, ones, strict=True)]
        lines.append(
            f"8 clients, one adapter: {statistics.median(ones):.2f} q/s; each its own adapter: "
            f"{statistics.median(mixeds):.2f} q/s (medians of {args.rounds} rounds)"
        )
        lines.append(
            f"  mixed/one ratio: {statistics.median(ratios):.2f} median "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8)"
        )

        # 4. a newly published adapter's first request
        with httpx.Client(base_url=server.url, timeout=600) as c:
            warm = body(0, "ad0")
            c.post("/v1/query", json=warm).raise_for_status()
            t1 = time.perf_counter()
            c.post("/v1/query", json=warm).raise_for_status()
            loaded_s = time.perf_counter() - t1
            make_adapters(settings, ["fresh"])
            t1 = time.perf_counter()
            c.post("/v1/query", json=body(0, "fresh")).raise_for_status()
            first_s = time.perf_counter() - t1
            make_adapters(settings, ["fresh2"])
            t1 = time.perf_counter()
            c.post("/v1/adapters/fresh2/load").raise_for_status()
            load_only_s = time.perf_counter() - t1
        lines.append(f"new adapter: POST /v1/adapters/<new>/load takes {load_only_s * 1000:.0f} ms")
        lines.append(
            f"new adapter: first request {first_s * 1000:.0f} ms after publishing "
            f"(same request on a loaded adapter: {loaded_s * 1000:.0f} ms; "
            f"load cost ~{(first_s - loaded_s) * 1000:.0f} ms)"
        )
    finally:
        server.stop()
    load1 = os.getloadavg()
    header = [
        f"bench_service: SmolLM2-135M-Instruct + all-MiniLM-L6-v2, mode {args.mode}, "
        f"max_new_tokens {args.tokens}, torch threads {args.threads}, "
        f"batch window {args.window_ms:g} ms, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}",
        f"load average before {load0[0]:.2f}, after {load1[0]:.2f} "
        "(a shared machine: other work competes for the same cores)",
    ]
    report = "\n".join(header + lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
