"""Reliability benchmark: the service as a hostile client meets it, `ragtune serve` over real HTTP.

Measures, for this tree and (``--before PATH``) another checkout as the baseline, each served
by `ragtune serve` in a child process that imports that checkout:

1. schema truth (tiny models, the fuzz test's settings): schemathesis with every check
   (``--checks all``), test cases sent and failures by check;
2. slow clients (tiny models): 200 connections that send half a request head; how many the
   server has closed after 5 s and after 20 s;
3. the starvation repro of issue 14 (packaged SmolLM2 + MiniLM, default limits): a
   4,000-emoji question (12,000+ tokens), then 3 s later a short one; the status and time
   of each, and when a third request sent after both finished is answered (how long the
   worker stayed busy). Then a long prompt the budget accepts (~1,900 tokens) and a short
   request 3 s after it.

    python bench/bench_reliability.py [--before /work/wt/hardening-before] [--examples 100]
                                      [--threads 1] [--skip-packaged] [--out FILE]

Figures are printed as ``#``-comment lines (bench/results/service.txt style) with the load
average; on a shared 2-core machine run it under ``flock /tmp/ragtune-heavy.lock``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "413", "429", "5xx"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "409", "413", "415", "422", "5xx"]
[dictionaries.models]
values = ["generator", "alpha"]
[parameters]
"body.model" = { dictionary = "models", probability = 0.7 }
"""
FUZZ_SETTINGS = {  # as tests/service/test_fuzz.py
    "max_new_tokens": "4",
    "max_new_tokens_limit": "8",
    "max_question_chars": "40",
    "max_prompt_tokens": "30000",
    "max_loaded_adapters": "2",
    "batch_window_ms": "0",
}
LINES: list[str] = []


def say(label: str, text: str) -> None:
    line = f"# {label:<10} | {text}"
    LINES.append(line)
    print(line, flush=True)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(code: Path, data: Path, embedder: str, generator: str, **env: str) -> Iterator[str]:
    """`ragtune serve` from checkout ``code`` (settings as RAGTUNE_* variables)."""
    port = free_port()
    cmd = [sys.executable, "-m", "ragtune", "--data-dir", str(data), "--embedder", embedder]
    cmd += ["--generator", generator, "serve", "--port", str(port), "--log-level", "error"]
    environ = os.environ | {f"RAGTUNE_{k.upper()}": v for k, v in env.items()}
    environ["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(cmd, cwd=data.parent, env=environ, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=10).json().get("models_loaded"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ragtune serve from {code} did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- 1 and 2: tiny models --------------------------------------------------------------------
def tiny_world(root: Path) -> tuple[Path, str, str]:
    """Tiny models (the generator with 32k positions, as the fuzz test), an index, an adapter."""
    from ragtune.core.config import resolve_settings
    from ragtune.core.models import load_embedder
    from tests.helpers import make_lora_adapter
    from tests.service.helpers import write_index
    from tests.tiny_models import build_tiny_embedder, build_tiny_generator

    gen = build_tiny_generator(root / "models" / "generator", max_positions=32768)
    emb = build_tiny_embedder(root / "models" / "embedder")
    settings, _ = resolve_settings(
        overrides={
            "data_dir": root / "data",
            "cache_dir": root / "cache",
            "embedder": str(emb),
            "generator": str(gen),
            "chunk_size": 64,
            "chunk_overlap": 8,
        },
        environ={},
    )
    write_index(settings, load_embedder(settings))
    make_lora_adapter(settings, "alpha", seed=1)
    return root / "data", str(emb), str(gen)


def fuzz(label: str, url: str, examples: int, workdir: Path) -> None:
    config = workdir / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    env = os.environ | {"PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": "tests.service.fuzz_hooks"}
    cmd = ["schemathesis", "--config-file", str(config), "run", url + "/schema/openapi.json"]
    cmd += ["--checks", "all", "-n", str(examples)]
    cmd += ["--request-timeout", "60", "--no-color", "--generation-deterministic"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    out = run.stdout + run.stderr
    seconds = time.perf_counter() - t0
    cases = re.search(r"(\d+) generated, (?:(\d+) passed|(\d+) found (\d+) unique failures)", out)
    generated = cases.group(1) if cases else "?"
    failures = re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", out.split("SUMMARY", 1)[-1])
    by_check = ", ".join(f"{name} {n}" for name, n in failures) or "none"
    total = sum(int(n) for _, n in failures)
    say(
        label,
        f"schemathesis, all checks: {generated} test cases in {seconds:.0f} s, "
        f"{total} unique failure(s): {by_check}",
    )


def slow_clients(label: str, url: str, n: int = 200) -> None:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        s.setblocking(False)
        socks.append(s)
    t0 = time.monotonic()
    report = []
    for wait in (5, 20):
        time.sleep(max(0.0, t0 + wait - time.monotonic()))
        closed = 0
        for s in socks:
            try:
                data = s.recv(65536)
                closed += data == b"" or data.startswith(b"HTTP/1.1 408")
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        report.append(f"{closed}/{n} closed after {wait} s")
    for s in socks:
        s.close()
    say(label, f"{n} half-sent request heads: " + ", ".join(report))


# --- 3: the packaged models ------------------------------------------------------------------
def timed_post(url: str, body: dict[str, object], t0: float) -> tuple[int, float, float]:
    """(status, seconds the request took, seconds since t0 when it was answered)"""
    start = time.monotonic()
    try:
        status = httpx.post(url + "/v1/query", json=body, timeout=900).status_code
    except httpx.HTTPError:
        status = 0
    end = time.monotonic()
    return status, end - start, end - t0


def starvation(label: str, url: str) -> None:
    big = {"question": "😀" * 4000, "mode": "base", "max_new_tokens": 1}
    short = {"question": "hi", "mode": "base", "max_new_tokens": 4}
    long = {"question": "a " * 1900, "mode": "base", "max_new_tokens": 1}
    timed_post(url, short, time.monotonic())  # warm up
    for name, first in (("4,000 emoji", big), ("~1,900-token prompt", long)):
        say(label, f"load average {load()} before the {name} repro")
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(2) as pool:
            a = pool.submit(timed_post, url, first, t0)
            time.sleep(3)
            b = pool.submit(timed_post, url, short, t0)
            (sa, da, _), (sb, db, _) = a.result(), b.result()
        sc, dc, ac = timed_post(url, short, t0)
        say(
            label,
            f"{name} then a short query 3 s later: first {sa} in {da:.2f} s, short {sb} in "
            f"{db:.2f} s; a third query sent after both: {sc} in {dc:.2f} s (worker free "
            f"again {ac:.0f} s after the first was sent)",
        )


def run_code(label: str, code: Path, args: argparse.Namespace, tiny: tuple[Path, str, str]) -> None:
    say(label, f"code: {code} ({git_head(code)}), torch threads {args.threads}, load {load()}")
    data, emb, gen = tiny
    with tempfile.TemporaryDirectory() as tmp, serve(code, data, emb, gen, **FUZZ_SETTINGS) as url:
        fuzz(label, url, args.examples, Path(tmp))
        slow_clients(label, url)
    if args.skip_packaged:
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        with serve(
            code,
            data,
            "packaged:all-MiniLM-L6-v2",
            "packaged:SmolLM2-135M-Instruct",
            torch_threads=str(args.threads),
        ) as url:
            starvation(label, url)


def git_head(code: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(code), "status", "--porcelain"], capture_output=True, text=True
    )
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="a checkout to measure as the baseline")
    p.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-packaged", action="store_true", help="tiny models only (fast)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    say(
        "setup",
        f"bench_reliability {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs, load average {load()}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_world(Path(tmp))
        if args.before is not None:
            run_code("before", args.before.resolve(), args, tiny)
        run_code("after", REPO, args, tiny)
    say("done", f"load average {load()}")
    if args.out is not None:
        args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
