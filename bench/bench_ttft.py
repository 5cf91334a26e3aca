"""Time to first token of a top-3 RAG answer on the demo index: where it goes, and
``ragtune serve`` with fp32 prefill vs bf16 (autocast) prefill, in one run.

Run: ``flock /tmp/ragtune-heavy.lock python bench/bench_ttft.py`` (~15 minutes on a shared
2-core machine; it builds the demo index first unless ``--data`` names a data dir that has
it). ``--questions 6 --seconds 10`` for a smoke run.

1. Profile, in process (the pipeline the service runs), per question: validation and token
   budget, retrieval (hybrid, top 3), prompt rendering and passage fitting, tokenization,
   and prefill (1 new token), split into attention, MLP and LM head by forward hooks.
2. ``ragtune serve`` (a child process, real HTTP), once per prefill precision: TTFT =
   the client's wall time of ``/v1/query`` with ``max_new_tokens`` 1, mode rag, top_k 3,
   one question at a time (p50, quiet), and with 8 closed-loop clients (p50 under load).
3. Same answers: every question answered with 24 new tokens, both precisions, in process:
   how many answers are identical, and the token F1 of each against the gold answers.
4. The prefix cache (``prefix_cache_mb``, core/prefix_cache.py): ``ragtune serve`` with bf16
   prefill, without and with the cache, asked question pairs in turn (a question, then
   another on the same SQuAD paragraph, which mostly retrieves the same passages): TTFT p50
   of the firsts and of the seconds, the server's hit counters; then the same sequence
   answered with 24 new tokens in process, with and without the cache: identical answers.
   ``--only-prefix-cache`` runs this phase alone.
5. Prefill passes (``prefill_batch_tokens``): ``ragtune serve`` with bf16 prefill, every
   short prompt of a burst in one pass (4096, what the batch did before) vs passes of at most
   512 positions (the default), quiet and under 8 clients as in 2; then the same questions
   answered with 24 new tokens in process, 8 at a time, both ways: identical answers.
   ``--only-prefill-passes`` runs this phase alone.
6. The allocator: ``ragtune serve`` (bf16 prefill) with glibc's own mmap threshold, as it
   runs now, vs the fixed 1 MB threshold every model load used to set (reproduced with
   ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576``): TTFT quiet and under 8 clients,
   and the server's peak RSS. ``--only-allocator`` runs this phase alone.
7. Request threads: ``ragtune serve`` (bf16 prefill) with retrieval's torch work on anyio's
   reused worker threads, each keeping an OpenMP pool (what the service did before
   ``service/own_thread.py``; ``bench/serve_inline_torch.py`` reproduces it) vs on threads
   that end with the call, as now: TTFT and the server's own ``generate_ms``, quiet, and TTFT
   under 8 clients. ``--only-own-threads`` runs this phase alone (``--only-precisions``:
   phases 1-3 alone).
Results: bench/results/ttft.txt (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_service import Server  # noqa: E402

from ragtune.core.config import Settings, resolve_settings  # noqa: E402
from ragtune.core.pipeline import Pipeline, QueryRequest  # noqa: E402
from ragtune.core.qa import read_squad  # noqa: E402
from ragtune.eval.metrics import answer_scores  # noqa: E402

DEMO = REPO / "examples" / "squad-mini" / "demo.json"
INDEX = "demo-squad"
RESULTS = REPO / "bench" / "results" / "ttft.txt"
_lines: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    _lines.append(line)


def load_avg() -> str:
    a = os.getloadavg()
    return f"{a[0]:.2f}/{a[1]:.2f}/{a[2]:.2f}"


def settings_for(data: Path, threads: int, prefill: str = "float32") -> Settings:
    s, _ = resolve_settings(
        overrides={
            "data_dir": data,
            "torch_threads": threads,
            "default_index": INDEX,
            "chunk_size": 256,  # the demo's index settings (examples/experiment-demo.toml)
            "prefill_dtype": prefill,
        },
        environ={},
    )
    return s


def profile(p: Pipeline, questions: list[str]) -> dict[str, float]:
    """Median milliseconds of each part of a 1-token RAG answer."""
    model = p.engine.gen.model
    spans: dict[str, float] = {}

    def timer(name: str) -> tuple[Any, Any]:
        def pre(*_: Any) -> None:
            spans[name] = spans.get(name, 0.0) - time.perf_counter()

        def post(*_: Any) -> None:
            spans[name] += time.perf_counter()

        return pre, post

    hooks = []
    for name, mods in (
        ("prefill: attention", [la.self_attn for la in model.model.layers]),
        ("prefill: MLP", [la.mlp for la in model.model.layers]),
        ("prefill: LM head", [model.lm_head]),
    ):
        pre, post = timer(name)
        for m in mods:
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    rows: dict[str, list[float]] = {}
    tokens = []
    for i, q in enumerate(questions):
        spans.clear()
        t0 = time.perf_counter()
        r = p.validate(QueryRequest(q, mode="rag", top_k=3, max_new_tokens=1))
        p.check_budget(r)
        t1 = time.perf_counter()
        index = p.index(r.index)
        hits = index.search_batch([r.question], 3, r.retrieval or "hybrid")[0]
        t2 = time.perf_counter()
        prep = p._prepared(r, hits, index.name, index.version, 0.0)
        t3 = time.perf_counter()
        ids = p.engine.tokenizer(prep.prompt, add_special_tokens=False)["input_ids"]
        t4 = time.perf_counter()
        p.engine.generate_batch([p.gen_request(prep)])
        t5 = time.perf_counter()
        if i == 0:
            continue  # warm-up: the preamble's cache, first-call allocations
        tokens.append(len(ids))
        parts = {
            "validation + token budget": t1 - t0,
            "retrieval (hybrid, top 3)": t2 - t1,
            "prompt rendering + fitting": t3 - t2,
            "tokenization": t4 - t3,
            "prefill + first token": t5 - t4,
            **spans,
            "total": t5 - t0,
        }
        for k, v in parts.items():
            rows.setdefault(k, []).append(v * 1000)
    for h in hooks:
        h.remove()
    out = {k: statistics.median(v) for k, v in rows.items()}
    out["prompt tokens"] = statistics.median(tokens)
    return out


def start_server(
    data: Path,
    threads: int,
    port: int,
    raw_env: dict[str, str] | None = None,
    launcher: tuple[str, ...] = ("-m", "ragtune"),
    **settings: str,
) -> Server:
    """``ragtune serve`` on the demo index with these settings (``RAGTUNE_<NAME>``) and any
    other environment ``raw_env``, 1 new token by default and a 20 ms batch window."""
    env = {f"RAGTUNE_{k}": v for k, v in {"DEFAULT_INDEX": INDEX, **settings}.items()}
    env |= raw_env or {}
    os.environ.update(env)
    try:
        return Server(data, threads, 1, port, 20.0, launcher)
    finally:
        for k in env:
            del os.environ[k]


def body(question: str) -> dict[str, Any]:
    """A 1-token top-3 RAG query: its wall time is the time to first token."""
    return {"question": question, "mode": "rag", "top_k": 3, "max_new_tokens": 1}


class Served(NamedTuple):
    quiet: float  # TTFT p50 one at a time (s)
    loaded: float  # TTFT p50 under 8 closed-loop clients (s)
    requests: int  # answered under 8 clients
    peak_mb: float  # the server's peak RSS
    generate: float  # the server's own generate_ms p50 one at a time (s): prefill + 1 token


def ask(c: httpx.Client, question: str) -> tuple[float, float]:
    """One 1-token query: (the client's wall time, the server's generate_ms), in seconds."""
    t0 = time.perf_counter()
    r = c.post("/v1/query", json=body(question)).raise_for_status()
    return time.perf_counter() - t0, r.json()["timings"]["generate_ms"] / 1000


def under_load(url: str, questions: list[str], seconds: float) -> list[float]:
    """TTFTs of 8 closed-loop clients for ``seconds``."""
    lat: list[float] = []
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            i = k
            while time.monotonic() < stop_at:
                lat.append(ask(c, questions[i % len(questions)])[0])
                i += 8

    threads_ = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    return lat


def served_ttft(
    data: Path,
    threads: int,
    prefill: str,
    questions: list[str],
    seconds: float,
    raw_env: dict[str, str] | None = None,
    launcher: tuple[str, ...] = ("-m", "ragtune"),
    **settings: str,
) -> Served:
    """TTFT through ``ragtune serve``, quiet and under 8 clients."""
    port = 18500 + os.getpid() % 400
    server = start_server(data, threads, port, raw_env, launcher, PREFILL_DTYPE=prefill, **settings)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as c:
            ask(c, questions[0])  # warm up
            quiet, generate = zip(*(ask(c, q) for q in questions), strict=True)
        lat = under_load(server.url, questions, seconds)
        peak_mb = peak_rss_mb(server.proc.pid)
    finally:
        server.stop()
    return Served(
        statistics.median(quiet),
        statistics.median(lat),
        len(lat),
        peak_mb,
        statistics.median(generate),
    )


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kib) / 1024


def siblings(items: list[Any], picked: list[Any], n: int) -> list[tuple[Any, Any]]:
    """Up to ``n`` (question, another question on the same paragraph) pairs: the second
    usually retrieves the same passages, so its prompt starts like the first's."""
    pairs = []
    for it in picked:
        other = next((o for o in items if o.context == it.context and o is not it), None)
        if other is not None:
            pairs.append((it, other))
        if len(pairs) == n:
            break
    return pairs


def prefix_ttft(
    data: Path, threads: int, pairs: list[tuple[Any, Any]], mb: float
) -> tuple[float, float, dict[str, float]]:
    """Served TTFT p50 (s) of the first questions and of their siblings, asked in turn, with
    bf16 prefill and ``prefix_cache_mb = mb``; and the server's prefix cache counters."""
    port = 18900 + os.getpid() % 90
    server = start_server(data, threads, port, PREFILL_DTYPE="bfloat16", PREFIX_CACHE_MB=str(mb))
    firsts, seconds = [], []
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as c:
            c.post("/v1/query", json=body("warm up: who?")).raise_for_status()
            for first, second in pairs:
                for it, out in ((first, firsts), (second, seconds)):
                    t0 = time.perf_counter()
                    c.post("/v1/query", json=body(it.question)).raise_for_status()
                    out.append(time.perf_counter() - t0)
            metrics = c.get("/metrics").text
    finally:
        server.stop()
    counters = {
        line.split()[0].removeprefix("ragtune_prefix_cache_"): float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("ragtune_prefix_cache")
    }
    return statistics.median(firsts), statistics.median(seconds), counters


def answers(p: Pipeline, items: list[Any]) -> list[str]:
    reqs = [QueryRequest(it.question, mode="rag", top_k=3, max_new_tokens=24) for it in items]
    out: list[str] = []
    for i in range(0, len(reqs), 8):
        out += [a.answer for a in p.answer_batch(reqs[i : i + 8])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="a data dir with the demo index (else built)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--questions", type=int, default=20, help="profile and TTFT questions")
    ap.add_argument("--answers", type=int, default=60, help="questions for the same-answer check")
    ap.add_argument("--seconds", type=float, default=30.0, help="the 8-client phase")
    ap.add_argument("--save", action="store_true", help=f"append to {RESULTS.name}")
    ap.add_argument(
        "--only-prefix-cache", action="store_true", help="run only the prefix cache phase"
    )
    ap.add_argument("--prefix-mb", type=float, default=256.0, help="its prefix_cache_mb")
    ap.add_argument(
        "--only-prefill-passes", action="store_true", help="run only the prefill passes phase"
    )
    ap.add_argument("--only-allocator", action="store_true", help="run only the allocator phase")
    ap.add_argument(
        "--only-own-threads", action="store_true", help="run only the request threads phase"
    )
    ap.add_argument(
        "--only-precisions", action="store_true", help="run only phases 1-3 (fp32 vs bf16)"
    )
    args = ap.parse_args()

    data = args.data or Path(tempfile.mkdtemp(prefix="ragtune-bench-ttft-")) / "data"
    if not (data / "indexes" / INDEX).is_dir():
        from ragtune.indexer.api import build_index

        build_index(settings_for(data, args.threads), [DEMO], INDEX, progress=False)
    items = list(read_squad(DEMO).records)
    step = max(1, len(items) // max(args.answers, args.questions))
    picked = items[::step]
    questions = [it.question for it in picked[: args.questions]]
    say(
        f"# bench_ttft {time.strftime('%Y-%m-%d %H:%M')}: SmolLM2-135M + MiniLM, demo index "
        f"({DEMO.name}), mode rag, top_k 3, {args.threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, load average {load_avg()}"
    )
    # --only-<phase> runs the phases named so; none named: every phase
    phases = ("precisions", "prefix_cache", "prefill_passes", "allocator", "own_threads")
    named = {k for k in phases if getattr(args, f"only_{k}")}

    def runs(phase: str) -> bool:
        return not named or phase in named

    if runs("precisions"):
        compare_precisions(args, data, picked, questions)
    if runs("prefix_cache"):
        compare_prefix_cache(args, data, items, picked)
    if runs("prefill_passes"):
        compare_prefill_passes(args, data, picked, questions)
    if runs("allocator"):
        compare_allocator(args, data, questions)
    if runs("own_threads"):
        compare_own_threads(args, data, questions)
    if args.save:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n".join(_lines) + "\n\n")
    print(json.dumps({"data": str(data)}))


def compare_prefix_cache(args: Any, data: Path, items: list[Any], picked: list[Any]) -> None:
    """Served TTFT with and without the prefix cache, on question pairs that share a
    paragraph; and the 24-token answers of the same sequence in process, with and without."""
    pairs = siblings(items, picked, args.questions)
    rows = {mb: prefix_ttft(data, args.threads, pairs, mb) for mb in (0.0, args.prefix_mb)}
    for mb, (first, second, counters) in rows.items():
        say(
            f"ragtune serve, bf16 prefill, prefix_cache_mb {mb:g}: TTFT p50 first questions "
            f"{first * 1000:.0f} ms, questions on the same paragraph next {second * 1000:.0f} ms "
            f"({len(pairs)} pairs, one at a time); prefix cache hits {counters['hits_total']:.0f}"
            f", misses {counters['misses_total']:.0f}, reused tokens "
            f"{counters['reused_tokens_total']:.0f}; load {load_avg()}"
        )
    order = [it for pair in pairs for it in pair]
    got = {}
    for mb in (0.0, args.prefix_mb):
        s = settings_for(data, args.threads, "bfloat16").model_copy(update={"prefix_cache_mb": mb})
        p = Pipeline(s)
        # one at a time, as served above (a batch would prefill the pair together)
        got[mb] = [a for it in order for a in answers(p, [it])]
    same = sum(a == b for a, b in zip(got[0.0], got[args.prefix_mb], strict=True))
    say(
        f"same answers with the prefix cache (24 new tokens, {len(order)} questions): {same}/"
        f"{len(order)} identical"
    )


def compare_prefill_passes(args: Any, data: Path, picked: list[Any], questions: list[str]) -> None:
    """Served TTFT with a burst's prompts in one prefill pass vs passes of at most 512
    positions, and the 24-token answers of both ways, in process."""
    budgets = (4096, 512)
    for budget in budgets:
        quiet, loaded, n, *_ = served_ttft(
            data,
            args.threads,
            "bfloat16",
            questions,
            args.seconds,
            PREFILL_BATCH_TOKENS=str(budget),
        )
        say(
            f"ragtune serve, bf16 prefill, prefill_batch_tokens {budget}: TTFT p50 "
            f"{quiet * 1000:.0f} ms one at a time; {loaded * 1000:.0f} ms with 8 clients "
            f"({n} requests in {args.seconds:.0f} s); load {load_avg()}"
        )
    chosen = picked[: args.answers]
    got = {}
    for budget in budgets:
        s = settings_for(data, args.threads, "bfloat16")
        got[budget] = answers(
            Pipeline(s.model_copy(update={"prefill_batch_tokens": budget})), chosen
        )
    same = sum(a == b for a, b in zip(*got.values(), strict=True))
    say(
        f"same answers, one pass vs passes of 512 (24 new tokens, {len(chosen)} questions, 8 "
        f"at a time): {same}/{len(chosen)} identical"
    )


def compare_allocator(args: Any, data: Path, questions: list[str]) -> None:
    """Served TTFT and peak RSS with glibc's own mmap threshold vs a fixed 1 MB one."""
    fixed = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}
    for name, env in (("fixed 1 MB mmap threshold (before)", fixed), ("glibc's own (now)", {})):
        quiet, loaded, n, peak, _ = served_ttft(
            data, args.threads, "bfloat16", questions, args.seconds, raw_env=env
        )
        say(
            f"ragtune serve, bf16 prefill, {name}: TTFT p50 {quiet * 1000:.0f} ms one at a time; "
            f"{loaded * 1000:.0f} ms with 8 clients ({n} requests in {args.seconds:.0f} s); "
            f"peak RSS {peak:.0f} MB; load {load_avg()}"
        )


def compare_own_threads(args: Any, data: Path, questions: list[str]) -> None:
    """Served TTFT with request threads running torch themselves (each keeps an OpenMP pool:
    what the service did before service/own_thread.py) vs on threads that end with the call.
    Both servers run at once, idle but for the request at hand: quiet requests alternate
    between them (so this VM's drift hits both alike), then 8 clients on each in turn."""
    ways = {
        "request threads run torch (before)": (str(REPO / "bench" / "serve_inline_torch.py"),),
        "torch on threads that end (now)": ("-m", "ragtune"),
    }
    base = 18100 + os.getpid() % 300
    servers = {
        name: start_server(data, args.threads, base + i, None, launcher, PREFILL_DTYPE="bfloat16")
        for i, (name, launcher) in enumerate(ways.items())
    }
    quiet: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        for server in servers.values():
            server.wait_ready()
        clients = {n: httpx.Client(base_url=sv.url, timeout=600) for n, sv in servers.items()}
        for c in clients.values():
            ask(c, questions[0])  # warm up
        for q in questions * 2:
            for name, c in clients.items():
                quiet[name].append(ask(c, q))
        for c in clients.values():
            c.close()
        loaded = {name: under_load(sv.url, questions, args.seconds) for name, sv in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    for name in ways:
        ttft, generate = zip(*quiet[name], strict=True)
        say(
            f"ragtune serve, bf16 prefill, {name}: TTFT p50 "
            f"{statistics.median(ttft) * 1000:.0f} ms one at a time (the server's generate_ms "
            f"{statistics.median(generate) * 1000:.0f}; {len(ttft)} requests, alternating); "
            f"{statistics.median(loaded[name]) * 1000:.0f} ms with 8 clients "
            f"({len(loaded[name])} requests in {args.seconds:.0f} s); load {load_avg()}"
        )


def compare_precisions(args: Any, data: Path, picked: list[Any], questions: list[str]) -> None:
    """The profile, the served TTFT and the answers of fp32 vs bf16 prefill."""
    pipes = {
        prec: Pipeline(settings_for(data, args.threads, prec)) for prec in ("float32", "bfloat16")
    }
    profiles = {}
    for prec, p in pipes.items():
        profiles[prec] = profile(p, questions)
    say(f"where the time of a 1-token RAG answer goes (in process, p50 ms; load {load_avg()}):")
    say(f"  {'part':28s} {'fp32':>9s} {'bf16 prefill':>13s}")
    for k in profiles["float32"]:
        a, b = profiles["float32"][k], profiles["bfloat16"].get(k, float("nan"))
        say(f"  {k:28s} {a:9.1f} {b:13.1f}")

    for prec in ("float32", "bfloat16"):
        quiet, loaded, n, *_ = served_ttft(data, args.threads, prec, questions, args.seconds)
        say(
            f"ragtune serve, prefill {prec}: TTFT p50 {quiet * 1000:.0f} ms one at a time; "
            f"{loaded * 1000:.0f} ms with 8 clients ({n} requests); load {load_avg()}"
        )

    chosen = picked[: args.answers]
    got = {prec: answers(p, chosen) for prec, p in pipes.items()}
    same = sum(a == b for a, b in zip(got["float32"], got["bfloat16"], strict=True))
    f1 = {
        prec: statistics.mean(
            answer_scores(a, it.answers)["f1"] for a, it in zip(ans, chosen, strict=True)
        )
        for prec, ans in got.items()
    }
    say(
        f"same answers (24 new tokens, {len(chosen)} questions): {same}/{len(chosen)} identical; "
        f"token F1 fp32 {f1['float32']:.3f}, bf16 prefill {f1['bfloat16']:.3f}"
    )


if __name__ == "__main__":
    main()
