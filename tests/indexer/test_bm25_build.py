"""The persisted BM25 model: the same scores as bm25s's own index, loadable by bm25s, searched
by postings (with a mask applied before the top-k), and updated incrementally to exactly what a
full rebuild gives."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ragtune.core.bm25_index import Bm25Model, bm25_tokenize
from ragtune.indexer.bm25_build import Postings, save_model, score_matrix, tokenize

WORDS = [
    "paris",
    "river",
    "mountain",
    "tower",
    "nile",
    "everest",
    "curie",
    "python",
    "france",
    "earth",
    "africa",
]


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(0, 12))) for _ in range(n)]
    texts[3] = "the of and"  # stopwords only: a row without tokens
    return texts


def bm25s_scores(texts: list[str], queries: list[str]) -> np.ndarray:
    import bm25s

    model = bm25s.BM25(k1=1.2, b=0.75)
    model.index([bm25_tokenize(t) for t in texts], show_progress=False)
    return np.stack([model.get_scores(bm25_tokenize(q)) for q in queries])


def our_scores(folder: Path, n: int, queries: list[str]) -> np.ndarray:
    model = Bm25Model(folder)
    out = np.zeros((len(queries), n), dtype=np.float32)
    for i, q in enumerate(queries):
        for row, s in model.top(bm25_tokenize(q), n):
            out[i, row] = s
    return out


QUERIES = ["paris tower", "nile river africa", "everest", "curie curie python", "unknownword"]


def test_scores_equal_bm25s_and_bm25s_loads_the_files(tmp_path: Path) -> None:
    import bm25s

    texts = corpus(200, 0)
    vocab: dict[str, int] = {}
    info = save_model(tmp_path, tokenize(texts, vocab), vocab)
    assert info.vocabulary == len(vocab) and info.method == "lucene"
    expected = bm25s_scores(texts, QUERIES)
    np.testing.assert_allclose(our_scores(tmp_path, len(texts), QUERIES), expected, rtol=1e-5)
    loaded = bm25s.BM25.load(str(tmp_path), mmap=True)  # bm25s's own loader, memory-mapped
    assert isinstance(loaded.scores["data"], np.memmap)
    for i, q in enumerate(QUERIES[:4]):
        np.testing.assert_allclose(loaded.get_scores(bm25_tokenize(q)), expected[i], rtol=1e-5)


def test_top_k_and_mask_before_the_top_k(tmp_path: Path) -> None:
    texts = corpus(300, 1)
    vocab: dict[str, int] = {}
    save_model(tmp_path, tokenize(texts, vocab), vocab)
    model = Bm25Model(tmp_path)
    full = bm25s_scores(texts, ["paris tower river"])[0]
    mask = np.zeros(len(texts), dtype=bool)
    mask[::7] = True
    for m in (None, mask):
        s = full if m is None else np.where(m, full, 0)
        got = model.top(bm25_tokenize("paris tower river"), 10, m)
        want = sorted((r for r in range(len(texts)) if s[r] > 0), key=lambda r: (-s[r], r))[:10]
        assert [r for r, _ in got] == want
        np.testing.assert_allclose([x for _, x in got], s[want], rtol=1e-5)
    assert model.top([], 5) == [] and model.top(["zzz"], 5) == []


def test_an_incremental_update_equals_a_full_rebuild(tmp_path: Path) -> None:
    old = corpus(150, 2)
    vocab: dict[str, int] = {}
    first = tokenize(old, vocab)
    keep = np.ones(len(old), dtype=bool)
    keep[[0, 5, 77, 149]] = False  # removed or updated rows
    new = [*corpus(20, 3), "zanzibar tower"]  # a token the vocabulary never saw
    updated = first.keep(keep).append(tokenize(new, vocab))
    save_model(tmp_path / "inc", updated, vocab)
    final = [t for t, k in zip(old, keep, strict=True) if k] + new
    queries = [*QUERIES, "zanzibar"]
    np.testing.assert_allclose(
        our_scores(tmp_path / "inc", len(final), queries),
        bm25s_scores(final, queries),
        rtol=1e-5,
    )
    # Saved postings read back (memory-mapped) give the same update.
    updated.save(tmp_path)
    again = Postings.load(tmp_path)
    for name in ("tokens", "tf", "ptr", "length"):
        np.testing.assert_array_equal(getattr(again, name), getattr(updated, name))


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_corpora(tmp_path: Path, n: int) -> None:
    vocab: dict[str, int] = {}
    p = tokenize(["Paris tower"] * n, vocab)
    save_model(tmp_path, p, vocab)
    data, indices, indptr = score_matrix(p, len(vocab))
    assert len(data) == len(indices) == 2 * n and indptr[-1] == 2 * n
    assert len(Bm25Model(tmp_path).top(["pari"], 3)) == n
