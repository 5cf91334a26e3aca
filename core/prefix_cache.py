"""Prompt prefixes shared across requests: their key/value states, kept for reuse.

A RAG prompt is [system turn][passages][question], so two questions whose top passages agree
start with the same tokens, often hundreds of them. After a prompt is prefilled, the states
of its first tokens (a multiple of ``BLOCK``, at least one short of the whole prompt, which
must still produce the first token's logits) are kept per adapter; a later prompt for the
same adapter takes the longest kept match and prefills only the rest. vLLM calls this
automatic prefix caching.

A position's states depend only on the tokens up to it (causal attention), so the reused
states are the ones a full prefill would compute, up to float rounding: a matmul may block
its sums differently for another prompt length. Entries are evicted least recently used
first once they hold more than the budget (``prefix_cache_mb``); an entry that a longer one
starts with is dropped as redundant. Used under the generation engine's lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

KV = tuple[Any, Any]  # one layer's (keys, values): [1, kv heads, tokens, head dim]
BLOCK = 16  # prefixes are kept and matched in whole blocks of tokens
MAX_ENTRIES = 1024  # a bound on the work of a lookup, whatever the budget


@dataclass
class _Entry:
    kv: list[KV]
    nbytes: int


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to a hit
    evictions: int = 0


class PrefixCache:
    """Key/value states of prompt prefixes by (adapter, token ids), LRU within a budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.nbytes = 0
        self.stats = PrefixStats()
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    def match(
        self, adapter: str | None, ids: Sequence[int], beyond: int = 0
    ) -> tuple[int, list[KV] | None]:
        """The longest kept prefix of ``ids`` for ``adapter``, in whole blocks, shorter than
        ``ids`` and longer than ``beyond`` (what the caller has cached otherwise): (its
        length, its states), or (0, None)."""
        best, found, want = beyond, None, tuple(ids)
        for key in self._entries:
            if key[0] == adapter:
                n = min(_common(key[1], want), len(want) - 1) // BLOCK * BLOCK
                if n > best:
                    best, found = n, key
        if found is None:
            self.stats.misses += 1
            return 0, None
        self._entries.move_to_end(found)
        self.stats.hits += 1
        self.stats.reused_tokens += best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[found].kv]

    def store(
        self, adapter: str | None, ids: Sequence[int], states: Callable[[], list[KV]]
    ) -> None:
        """Keep the states of ``ids``'s longest whole-block prefix (``states()``: the whole
        prompt's, per layer), unless a kept entry already starts with it."""
        n = (len(ids) - 1) // BLOCK * BLOCK
        if not self.enabled or n < BLOCK:
            return
        new = tuple(ids[:n])
        for key in self._entries:
            if key[0] == adapter and len(key[1]) >= n and key[1][:n] == new:
                self._entries.move_to_end(key)
                return
        kv = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in states()]
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        if size > self.budget:
            return
        for key in [k for k in self._entries if k[0] == adapter and new[: len(k[1])] == k[1]]:
            self._remove(key)  # the new entry starts with it
        self._entries[(adapter, new)] = _Entry(kv, size)
        self.nbytes += size
        while self.nbytes > self.budget or len(self._entries) > MAX_ENTRIES:
            self._remove(next(iter(self._entries)))
            self.stats.evictions += 1

    def drop(self, adapter: str | None) -> None:
        """Forget every prefix computed with ``adapter`` (it was unloaded or replaced)."""
        for key in [k for k in self._entries if k[0] == adapter]:
            self._remove(key)

    def _remove(self, key: tuple[str | None, tuple[int, ...]]) -> None:
        self.nbytes -= self._entries.pop(key).nbytes


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens ``a`` and ``b`` share (a binary search of slice compares,
    which run in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
