"""Index at scale: synthetic chunks with vectors given (no embedding), through the real indexer.

Run: ``flock /tmp/ragtune-heavy.lock python bench/bench_scale.py`` (1,000,000 chunks x 384
dims: about half an hour and 6 GB of memory on a shared 2-core machine; results in
bench/results/scale.txt). ``--n 20000`` is a smoke run of a minute.

The corpus: ``--n`` short support tickets ("ticket 123: ..." plus ten words drawn from its
topic's words and common ones) in JSONL files of ``--per-file`` records, with a title, a
tenant, a year, a priority and a date. Vectors come from a seeded three-level topic model
(100 topics x 20 subtopics, noise on top; neighbours share a subtopic at cosine ~0.8, as
sentence embeddings of related passages do), stored in a .npy; the indexer's "embedder" looks
a ticket's vector up by its number, so no model runs and embedding costs nothing measurable.

Measured, each in its own process so that memory is the process's own:
- build: the real ``build_index`` over the JSONL files (load, chunk, store, FAISS training on
  a sample, BM25, metadata columns), time and disk size;
- serve: a fresh process at 1 FAISS/BLAS thread opens the index (cold load: open + first
  query of each method; again in 3 fresh processes, wall and CPU time) and runs 1,000
  queries per method, with and without a filter;
  recall@10 of the compressed index vs exact search (numpy over all vectors) at several
  nprobe; peak RSS; baselines measured in the same run: brute-force exact search, and
  bm25s's own ``retrieve`` on the same saved model;
- share: two serving processes at once: RSS vs unique memory (mmap'd files are shared);
- update: 1% of the documents (half edited, half deleted) in 1% of the files, vs the full
  build (embedding excluded from both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "scale.txt"
INDEX = "scale"
TOPICS, SUBTOPICS = 100, 20
TENANTS = 50
SYLLABLES = [
    "ka",
    "ri",
    "to",
    "mo",
    "na",
    "le",
    "su",
    "vi",
    "pa",
    "do",
    "ne",
    "ru",
    "shi",
    "ta",
    "ko",
    "me",
    "lu",
    "zi",
    "ba",
    "fe",
    "go",
    "hi",
    "ja",
    "ke",
    "lo",
    "mi",
    "nu",
    "po",
    "qui",
    "ra",
    "se",
    "ti",
    "vo",
    "wa",
    "xe",
    "yo",
    "zu",
    "bra",
    "cle",
    "dri",
    "fla",
    "gre",
    "pro",
    "sta",
    "tri",
]
# About 7% and 0.25% of the chunks pass (the report prints the measured share).
FILTER_WIDE = {"tenant": {"in": [f"tenant{i}" for i in (3, 7, 11, 19, 29)]}, "year": {"gte": 2014}}
FILTER_NARROW = {"tenant": "tenant3", "year": 2015}


# --- data ---------------------------------------------------------------------------------


def words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable pseudo-words."""
    out: set[str] = set()
    while len(out) < n:
        k = rng.integers(2, 4)
        out.add("".join(rng.choice(SYLLABLES, size=k)))
    return sorted(out)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(work: Path, n: int, dim: int, per_file: int, n_queries: int) -> dict[str, Any]:
    """Write the corpus (JSONL files), the vectors (.npy) and the queries; return a summary."""
    rng = np.random.default_rng(0)
    vocab = words(30_000, rng)
    common = vocab[:2000]
    topic_words = [vocab[2000 + t * 280 : 2000 + (t + 1) * 280] for t in range(TOPICS)]
    topics = unit(rng.standard_normal((TOPICS, dim)))
    subs = unit(rng.standard_normal((TOPICS, SUBTOPICS, dim)))
    vec_path = work / "vectors.npy"
    vecs = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, dim))
    corpus = work / "corpus"
    corpus.mkdir(parents=True)
    t_of = rng.integers(0, TOPICS, size=n)
    s_of = rng.integers(0, SUBTOPICS, size=n)
    step = 100_000
    for a in range(0, n, step):
        b = min(n, a + step)
        noise = unit(rng.standard_normal((b - a, dim)))
        vecs[a:b] = unit(topics[t_of[a:b]] + 0.8 * subs[t_of[a:b], s_of[a:b]] + 0.6 * noise)
    vecs.flush()
    priorities = ["low", "medium", "high"]
    texts: list[str] = []
    # Word numbers for every ticket at once: 6 of its topic's 280 words, 4 of the common ones.
    topic_pick = rng.integers(0, 280, size=(n, 6)).tolist()
    common_pick = rng.integers(0, len(common), size=(n, 4)).tolist()
    for f in range(0, n, per_file):
        lines = []
        for i in range(f, min(n, f + per_file)):
            t = int(t_of[i])
            tw = topic_words[t]
            body = [tw[j] for j in topic_pick[i]] + [common[j] for j in common_pick[i]]
            text = f"ticket {i}: " + " ".join(body) + "."
            texts.append(text)
            rec = {
                "id": f"t{i}",
                "text": text,
                "title": f"{topic_words[t][0]} {topic_words[t][1]} issue",
                "metadata": {
                    "tenant": f"tenant{i % TENANTS}",
                    "year": 2010 + i % 16,
                    "priority": priorities[i % 3],
                    "created": f"{2010 + i % 16}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                },
            }
            lines.append(json.dumps(rec))
        (corpus / f"part-{f // per_file:05d}.jsonl").write_text("\n".join(lines) + "\n")
    # Queries: close to one ticket each (its vector plus noise), its words as the text.
    qrows = rng.choice(n, size=n_queries, replace=False)
    qvecs = unit(np.asarray(vecs[qrows]) + 0.4 * unit(rng.standard_normal((n_queries, dim))))
    queries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in qrows:  # distinct texts: the lookup "embedder" maps a query's text to its vector
        ws = texts[r].split(": ", 1)[1].rstrip(".").split()
        q = " ".join(rng.choice(ws, size=4, replace=False))
        while q in seen:
            q = " ".join(rng.choice(ws, size=4, replace=False))
        seen.add(q)
        queries.append({"q": q, "row": int(r)})
    np.save(work / "queries.npy", qvecs)
    (work / "queries.json").write_text(json.dumps(queries))
    return {"files": (n + per_file - 1) // per_file}


def exact_top(work: Path, k: int, alive: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k rows for every query, by brute force over all vectors (1 thread is fine)."""
    vecs = np.load(work / "vectors.npy", mmap_mode="r")
    q = np.load(work / "queries.npy")
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for a in range(0, len(vecs), 200_000):
        block = np.asarray(vecs[a : a + 200_000])
        s = q @ block.T
        if alive is not None:
            s[:, ~alive[a : a + len(block)]] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + a], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    return best_i


# --- the indexer's view: a tokenizer and an "embedder" that looks vectors up -----------------


class WordTokenizer:
    """Offsets of word tokens, the interface the chunker uses (a HF fast tokenizer's)."""

    import re as _re

    _TOKEN = _re.compile(r"\w+|[^\w\s]")

    def __call__(self, texts: list[str], **_: Any) -> dict[str, Any]:
        return {"offset_mapping": [[m.span() for m in self._TOKEN.finditer(t)] for t in texts]}


class LookupEmbedder:
    """Vectors by ticket number (documents) or query text (queries): no model runs."""

    model_id = "synthetic-384"
    max_seq_length = 256
    tokenizer = WordTokenizer()

    def __init__(self, work: Path) -> None:
        self.vecs = np.load(work / "vectors.npy", mmap_mode="r")
        self.dim = int(self.vecs.shape[1])
        qpath = work / "queries.json"
        self.qvecs = np.load(work / "queries.npy")
        self.qrow = {q["q"]: j for j, q in enumerate(json.loads(qpath.read_text()))}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for j, t in enumerate(texts):
            if t in self.qrow:
                out[j] = self.qvecs[self.qrow[t]]
            else:
                out[j] = self.vecs[int(t.split(":", 1)[0].split()[1])]
        return out


def settings_for(work: Path, args: argparse.Namespace) -> Any:
    from ragtune.core.config import resolve_settings

    overrides = {
        "data_dir": work / "data",
        "index_type": args.index_type,
        "ivf_nprobe": args.nprobe,
        "embed_batch_size": 4096,
        "chunk_size": 200,
        "torch_threads": 1,
    }
    return resolve_settings(overrides=overrides, environ={})[0]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries the parent's
    high-water mark into a child across fork + exec, and the parent holds the test data."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


# --- stages (each runs in its own process) ---------------------------------------------------


def stage_build(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ragtune.indexer.api import build_index

    settings = settings_for(work, args)
    emb = LookupEmbedder(work)
    s = build_index(settings, [work / "corpus"], INDEX, progress=False, embedder=emb)  # type: ignore[arg-type]
    idir = settings.indexes_dir / INDEX
    vdir = idir / "versions" / s.version
    return {
        "seconds": s.seconds,
        "embed_seconds": s.embed_seconds,
        "chunks": s.total_chunks,
        "index_type": s.index_type,
        "peak_rss_mb": peak_rss_mb(),
        "timings": s.timings,
        "store_mb": tree_mb(idir) - tree_mb(idir / "versions"),
        "version_mb": tree_mb(vdir),
        "parts_mb": {
            p.name: tree_mb(p) if p.is_dir() else p.stat().st_size / 1e6 for p in vdir.iterdir()
        },
    }


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def stage_serve(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from ragtune.core.index_store import open_index

    faiss.omp_set_num_threads(1)
    settings = settings_for(work, args)
    queries = json.loads((work / "queries.json").read_text())
    qs = [q["q"] for q in queries]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    emb = LookupEmbedder(work)
    t_emb = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = open_index(settings, INDEX, emb)  # type: ignore[arg-type]
    out["open_s"] = time.perf_counter() - t0
    firsts = {}
    for method, flt in (("dense", None), ("bm25", None), ("hybrid", FILTER_WIDE)):
        t0 = time.perf_counter()
        idx.search(qs[0], 10, method, flt)  # type: ignore[arg-type]
        firsts[f"{method}{' +filter' if flt else ''}"] = time.perf_counter() - t0
    out["first_query_s"] = firsts
    out["cold_load_s"] = out["open_s"] + sum(firsts.values())
    import psutil

    # Everything since the process started: interpreter, imports, open, first queries.
    out["since_start_s"] = time.time() - psutil.Process().create_time()
    out["lookup_embedder_s"] = t_emb
    shares = {}
    for name, flt in (("wide", FILTER_WIDE), ("narrow", FILTER_NARROW)):
        mask = idx.filter_mask(flt)
        assert mask is not None
        shares[name] = f"{mask.mean():.2%}"
    out["filter_share"] = shares
    lat: dict[str, list[float]] = {}
    variants = [
        ("", None, 16),
        (f" +filter {shares['wide']}", FILTER_WIDE, 16),
        (f" +filter {shares['narrow']}", FILTER_NARROW, 16),
        # The mask of a filter is cached per index version; a filter seen for the first time
        # pays for evaluating it over every chunk:
        (f" +filter {shares['wide']}, uncached", FILTER_WIDE, 0),
    ]
    for method in ("dense", "bm25", "hybrid"):
        for label, flt, cache in variants:
            idx.mask_cache_size = cache
            times = []
            for q in qs:
                t0 = time.perf_counter()
                idx.search(q, 10, method, flt)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            lat[method + label] = list(_percentiles(times))
    idx.mask_cache_size = 16
    out["latency_ms"] = lat
    # Recall of the dense index against exact top-10, at several nprobe.
    exact = np.load(work / "exact.npy")
    recall = {}
    for nprobe in args.nprobes:
        idx.nprobe = nprobe
        hits, times = [], []
        for q in qs:
            t0 = time.perf_counter()
            hits.append(idx.dense_ids([q], 10)[0])
            times.append((time.perf_counter() - t0) * 1000)
        ids = [{int(c) for c, _ in row} for row in hits]
        rows = [{int(idx.chunks[c]["doc_id"][1:]) for c in row} for row in ids]
        r = np.mean([len(a & set(e.tolist())) / 10 for a, e in zip(rows, exact, strict=True)])
        recall[nprobe] = [float(r), *_percentiles(times)]
    out["recall_at_10"] = recall
    idx.nprobe = args.nprobe
    # Filter correctness: every filtered hit passes.
    hits = idx.search(qs[1], 10, "hybrid", FILTER_WIDE)
    out["filter_ok"] = all(
        h.metadata["tenant"] in FILTER_WIDE["tenant"]["in"] and h.metadata["year"] >= 2014  # type: ignore[index]
        for h in hits
    )
    out["peak_rss_mb"] = peak_rss_mb()
    out["mem"] = _memory()
    return out


def stage_cold(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Cold load alone in a fresh process: wall time, and this process's CPU time (on a busy
    machine the wall time is mostly waiting for a core)."""
    import faiss

    from ragtune.core.index_store import open_index

    faiss.omp_set_num_threads(1)
    settings = settings_for(work, args)
    q = json.loads((work / "queries.json").read_text())[0]["q"]
    emb = LookupEmbedder(work)
    t0, c0 = time.perf_counter(), time.process_time()
    idx = open_index(settings, INDEX, emb)  # type: ignore[arg-type]
    for method, flt in (("dense", None), ("bm25", None), ("hybrid", FILTER_WIDE)):
        idx.search(q, 10, method, flt)  # type: ignore[arg-type]
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def stage_baseline(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Baselines, in their own process (they touch every vector): brute-force exact dense
    search with numpy, and bm25s's own ``retrieve`` on the same saved BM25 model."""
    import bm25s

    from ragtune.core.index_store import bm25_tokenize, current_version, version_dir

    settings = settings_for(work, args)
    queries = [q["q"] for q in json.loads((work / "queries.json").read_text())]
    vecs = np.load(work / "vectors.npy", mmap_mode="r")
    qv = np.load(work / "queries.npy")
    times = []
    for j in range(min(30, len(qv))):
        t0 = time.perf_counter()
        s = _blocked_scores(vecs, qv[j])
        np.argpartition(-s, 9)[:10]
        times.append((time.perf_counter() - t0) * 1000)
    out: dict[str, Any] = {"exact_ms": list(_percentiles(times))}
    vdir = version_dir(settings, INDEX, current_version(settings, INDEX) or "")
    model = bm25s.BM25.load(str(vdir / "bm25"), mmap=True)
    times = []
    for q in queries[:200]:
        toks = bm25_tokenize(q) or ["_"]
        t0 = time.perf_counter()
        model.retrieve([toks], k=10, show_progress=False)
        times.append((time.perf_counter() - t0) * 1000)
    out["bm25s_retrieve_ms"] = list(_percentiles(times))
    return out


def _blocked_scores(vecs: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(vecs[a : a + 200_000]) @ q for a in range(0, len(vecs), 200_000)]
    )


def _memory() -> dict[str, float]:
    import psutil

    m = psutil.Process().memory_full_info()
    return {"rss_mb": m.rss / 1e6, "uss_mb": m.uss / 1e6, "pss_mb": m.pss / 1e6}


def stage_share(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One of two serving processes: open, query, report memory once the other has too."""
    import faiss

    from ragtune.core.index_store import open_index

    faiss.omp_set_num_threads(1)
    settings = settings_for(work, args)
    qs = [q["q"] for q in json.loads((work / "queries.json").read_text())][:300]
    idx = open_index(settings, INDEX, LookupEmbedder(work))  # type: ignore[arg-type]
    for q in qs:
        idx.search(q, 10, "hybrid", FILTER_WIDE)
    me = args.peer
    (work / f"share-{me}.ready").touch()
    deadline = time.monotonic() + 600
    while not (work / f"share-{1 - me}.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {**_memory(), "peak_rss_mb": peak_rss_mb()}


def stage_update(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """1% of the documents change: half edited, half deleted. ``--spread 0``: all of them in
    1% of the files (changes come by file: a wiki page, an export); ``--spread 1``: spread
    over every file (every file must be read again: the worst case)."""
    from ragtune.indexer.api import build_index

    settings = settings_for(work, args)
    files = sorted((work / "corpus").glob("*.jsonl"))
    rng = np.random.default_rng(1 + args.spread)
    if args.spread:
        picked = np.arange(len(files))
    else:
        picked = np.sort(
            rng.choice(len(files), size=max(1, round(len(files) / 100)), replace=False)
        )
    edited = deleted = 0
    gone = []
    for f in (files[i] for i in picked):
        lines = f.read_text().splitlines()
        # Clustered: every line of the file; spread: 1% of its lines.
        touched = (
            set(range(len(lines)))
            if not args.spread
            else set(
                rng.choice(len(lines), size=max(1, round(len(lines) / 100)), replace=False).tolist()
            )
        )
        keep = []
        for j, line in enumerate(lines):
            rec = json.loads(line)
            if j in touched and (edited + deleted) % 2:  # touched lines: edit, delete, edit, ...
                deleted += 1
                gone.append(rec["id"])
                continue
            if j in touched:
                rec["text"] += " Edited in the update."
                edited += 1
            keep.append(json.dumps(rec))
        f.write_text("\n".join(keep) + "\n")
    emb = LookupEmbedder(work)
    s = build_index(settings, [work / "corpus"], INDEX, progress=False, embedder=emb)  # type: ignore[arg-type]
    from ragtune.core.index_store import open_index

    idx = open_index(settings, INDEX, None)
    hits = idx.search("edited update", 5, "bm25")
    return {
        "seconds": s.seconds,
        "embed_seconds": s.embed_seconds,
        "edited": edited,
        "deleted": deleted,
        "files_changed": len(picked),
        "files_read": s.files,
        "files_unchanged": s.unchanged_files,
        "chunks_after": s.total_chunks,
        # Edited texts are found; deleted tickets are not (their number is a unique token).
        "check": bool(hits)
        and all(h.text.endswith("Edited in the update.") for h in hits)
        and all(
            [h.doc_id for h in idx.search(f"ticket {g[1:]}", 1, "bm25")] != [g] for g in gone[:50]
        ),
        "peak_rss_mb": peak_rss_mb(),
        "timings": s.timings,
    }


STAGES = {
    "build": stage_build,
    "serve": stage_serve,
    "baseline": stage_baseline,
    "cold": stage_cold,
    "share": stage_share,
    "update": stage_update,
}


def child(stage: str, work: Path, args: argparse.Namespace, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), *_passthrough(args)]
    one = stage in ("serve", "share", "baseline", "cold")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1" if one else "2",
        "OPENBLAS_NUM_THREADS": "1" if one else "2",
    }
    return subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, env=env, text=True)


def _passthrough(args: argparse.Namespace) -> list[str]:
    return [
        "--index-type",
        args.index_type,
        "--nprobe",
        str(args.nprobe),
        "--nprobes",
        ",".join(map(str, args.nprobes)),
    ]


def result(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a bench stage failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------

_lines: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    _lines.append(line)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="chunks (20000: a smoke run)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--per-file", type=int, default=1000, help="documents per JSONL file")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--index-type", default="ivf_sq8", choices=["flat", "ivf", "ivf_sq8", "ivf_pq"])
    ap.add_argument("--nprobe", type=int, default=16, help="the serving setting")
    ap.add_argument("--nprobes", default="4,8,16,32,64", help="recall/latency sweep")
    ap.add_argument("--work", type=Path, default=None, help="keep the data here")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--peer", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--spread", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.nprobes = [int(x) for x in str(args.nprobes).split(",")]
    if args.stage:
        print(json.dumps(STAGES[args.stage](args.work, args), default=str))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="ragtune-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"# ragtune index at scale, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(
        f"{args.n:,} chunks x {args.dim} dims, {args.queries} queries; index_type "
        f"{args.index_type}, nprobe {args.nprobe}; {os.cpu_count()} CPUs shared with other "
        f"jobs; load average at start {load_avg()}"
    )
    t0 = time.perf_counter()
    data = make_data(work, args.n, args.dim, args.per_file, args.queries)
    np.save(work / "exact.npy", exact_top(work, 10))
    say(
        f"data: {data['files']} JSONL files, vectors and exact top-10 in {time.perf_counter() - t0:.0f} s"
    )

    b = result(child("build", work, args))
    build_s = b["seconds"] - b["embed_seconds"]
    say()
    say(f"## full build (load avg {load_avg()})")
    say(
        f"  {b['chunks']:,} chunks in {b['seconds']:.1f} s ({build_s:.1f} s without the "
        f"{b['embed_seconds']:.1f} s of vector lookup); built as {b['index_type']}; "
        f"peak RSS of the build {b['peak_rss_mb']:.0f} MB"
    )
    say(f"  where the time went (s): {b['timings']}")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(b["parts_mb"].items()))
    say(
        f"  disk: chunk store {b['store_mb']:.0f} MB (shared by versions) + version {b['version_mb']:.0f} MB ({parts} MB)"
    )

    s = result(child("serve", work, args))
    say()
    say(f"## serving process, 1 thread (load avg {load_avg()})")
    firsts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in s["first_query_s"].items())
    say(
        f"  cold load {s['cold_load_s']:.2f} s (target <= 2 s): open_index {s['open_s'] * 1000:.0f} ms, "
        f"first query: {firsts}; {s['since_start_s']:.2f} s since the process started "
        "(Python, imports included)"
    )
    say(
        f"  peak RSS {s['peak_rss_mb']:.0f} MB (target <= 1500 MB); at the end rss {s['mem']['rss_mb']:.0f} MB, unique {s['mem']['uss_mb']:.0f} MB"
    )
    say("  recall@10 vs exact, dense latency p50/p95 by nprobe:")
    for nprobe, (r, p50, p95) in s["recall_at_10"].items():
        mark = "  <- setting" if int(nprobe) == args.nprobe else ""
        say(
            f"    nprobe {int(nprobe):<3} recall@10 {r:.3f}   p50 {p50:6.2f} ms  p95 {p95:6.2f} ms{mark}"
        )
    say("  latency p50 / p95 (ms), top 10, hits with text and metadata read from the store:")
    for k, (p50, p95) in s["latency_ms"].items():
        say(f"    {k:<34} {p50:7.2f} {p95:8.2f}")
    say(f"  filtered hits all pass the filter: {s['filter_ok']}")
    base = result(child("baseline", work, args))
    say(
        f"  baselines measured in this run (own process, 1 thread): exact brute force (numpy "
        f"over every vector) p50 {base['exact_ms'][0]:.1f} ms; bm25s's own retrieve on the same "
        f"saved model p50 {base['bm25s_retrieve_ms'][0]:.1f} ms"
    )
    colds = [result(child("cold", work, args)) for _ in range(3)]
    say(
        f"  cold load again, 3 fresh processes one after another (load avg {load_avg()}): wall "
        + ", ".join(f"{c['wall_s']:.2f}" for c in colds)
        + " s; CPU time of the process "
        + ", ".join(f"{c['cpu_s']:.2f}" for c in colds)
        + " s"
    )

    procs = [child("share", work, args, "--peer", str(i)) for i in (0, 1)]
    shared = [result(p) for p in procs]
    say()
    say(f"## two serving processes at once (load avg {load_avg()})")
    for i, m in enumerate(shared):
        say(
            f"  process {i}: rss {m['rss_mb']:.0f} MB, unique {m['uss_mb']:.0f} MB, proportional {m['pss_mb']:.0f} MB"
        )

    for spread in (0, 1):
        u = result(child("update", work, args, "--spread", str(spread)))
        upd_s = u["seconds"] - u["embed_seconds"]
        say()
        where = "spread over every file" if spread else "in 1% of the files"
        say(f"## 1% update, {where} (load avg {load_avg()})")
        say(
            f"  {u['edited']:,} documents edited + {u['deleted']:,} deleted in {u['files_changed']} "
            f"of {data['files']} files ({u['files_read']} files read, {u['files_unchanged']} "
            f"unchanged and not read): {u['seconds']:.2f} s ({upd_s:.2f} s without vector lookup)"
        )
        target = "   (target <= 0.05)" if not spread else ""
        say(
            f"  ratio to the full build, embedding excluded: {upd_s / build_s:.4f}{target}; "
            f"results right after: {u['check']}"
        )
        say(f"  where the time went (s): {u['timings']}")
    say()
    say(f"load average at the end {load_avg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(_lines) + "\n")
    print(f"\nsaved to {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
