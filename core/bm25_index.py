"""BM25: tokenization (the same at index and query time) and the persisted model's read side.

A version folder holds ``bm25/``, written by the indexer at index time and never rebuilt at
load:

- bm25s's own files (``data/indices/indptr.csc.index.npy``, ``vocab.index.json``,
  ``params.index.json``): the precomputed score matrix, one column per token, rows in the
  version's position order (``ids.npy``). ``bm25s.BM25.load(mmap=True)`` maps them, so
  loading is milliseconds plus the vocabulary, at any size, and processes share the pages.
- the postings the matrix was computed from (``postings.*.npy``: per chunk its token ids,
  their counts and its length), so that an incremental reindex tokenizes only new chunks and
  recomputes the matrix with exact corpus statistics (``indexer.bm25_build``).

Searching scores only the chunks that contain a query token (their postings), so a query
costs its postings' length, not the corpus size; a filter is a row mask applied before the
top-k is taken.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

BM25_DIR = "bm25"
BM25_K1, BM25_B, BM25_METHOD = 1.2, 0.75, "lucene"
POSTINGS = ("tokens", "tf", "ptr", "length")  # postings.<name>.npy


def postings_file(name: str) -> str:
    return f"postings.{name}.npy"


_TOKEN_RE = re.compile(r"[a-z0-9]+")
# A short English stopword list: BM25 gains little from scoring "the" and "of".
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "how",
        "did",
        "do",
        "does",
        "you",
        "your",
        "we",
        "our",
    ]
)


_stemmers = threading.local()  # a Snowball stemmer is not thread-safe: one per thread


def _stem_words(words: list[str]) -> list[str]:
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        try:
            import Stemmer  # PyStemmer: the C Snowball stemmer, ~1 µs a word
        except ImportError:  # still works, just a little less recall (see bench/README.md)
            _stemmers.english = False
            return words
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    return stemmer.stemWords(words) if stemmer else words


def bm25_tokenize(text: str) -> list[str]:
    """Lowercase, stopword-free, Snowball-stemmed word tokens; the same at build and query time.

    Stemming matches "founded" to "founding" and "countries" to "country"; on SQuAD dev it
    lifts BM25 recall@5 by about two points (bench/README.md).
    """
    return _stem_words([t for t in _TOKEN_RE.findall(text.lower()) if t not in STOPWORDS])


def bm25_text(chunk: dict[str, Any]) -> str:
    """What BM25 indexes for a chunk: its document's title (when it has one) and its text.

    Passages often never name their subject ("It was built in 1889"); the title does.
    """
    title = (chunk.get("metadata") or {}).get("title")
    return f"{title}\n{chunk['text']}" if isinstance(title, str) and title else chunk["text"]


class Bm25Model:
    """A persisted BM25 model, memory-mapped (bm25s's format), searched by postings."""

    def __init__(self, folder: Path, mmap: bool = True) -> None:
        import logging

        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        model = bm25s.BM25.load(str(folder), mmap=mmap, load_corpus=False)
        self.vocab: dict[str, int] = model.vocab_dict
        self.data = model.scores["data"]
        self.indices = model.scores["indices"]
        self.indptr = model.scores["indptr"]
        self.rows = int(model.scores["num_docs"])

    def top(
        self, tokens: list[str], k: int, mask: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` best (row, score) for a tokenized query, best first; rows failing
        ``mask`` are left out before the top-k is taken; only positive scores count."""
        ids = [self.vocab[t] for t in tokens if t in self.vocab]
        if not ids or k < 1:
            return []
        parts = [(int(self.indptr[i]), int(self.indptr[i + 1])) for i in ids]
        parts = [(a, b) for a, b in parts if b > a]
        if not parts:
            return []
        rows = np.concatenate([self.indices[a:b] for a, b in parts])
        vals = np.concatenate([self.data[a:b] for a, b in parts])
        if mask is not None:
            keep = mask[rows]
            rows, vals = rows[keep], vals[keep]
            if not len(rows):
                return []
        # A row's score is the sum over the query tokens it contains: accumulate into a dense
        # array, then take the best entries (a row appears once per token it has, so the best
        # k x tokens entries hold the best k rows) and only those are sorted.
        acc = np.zeros(self.rows, dtype=np.float32)
        np.add.at(acc, rows, vals)
        m = min(len(rows), k * len(parts))
        best = rows if len(rows) == m else rows[np.argpartition(-acc[rows], m - 1)[:m]]
        cand = np.unique(best)
        scores = acc[cand]
        positive = scores > 0
        cand, scores = cand[positive], scores[positive]
        if len(cand) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            cand, scores = cand[part], scores[part]
        order = np.lexsort((cand, -scores))  # best first; ties by row, so results are stable
        return [(int(cand[i]), float(scores[i])) for i in order]


def model_files(folder: Path) -> list[Path]:
    """Every file of a saved model (for fsync and sizes)."""
    return sorted(p for p in folder.iterdir() if p.is_file())


def load_postings(folder: Path) -> dict[str, Any]:
    """The postings arrays of a saved model (memory-mapped: the writer reads slices)."""
    return {n: np.load(folder / postings_file(n), mmap_mode="r") for n in POSTINGS}
