"""Prompt prefixes shared across requests: their key/value states, kept for reuse.

A RAG prompt is [system turn][passages][question], so two questions whose top passages agree
start with the same tokens, often hundreds of them. After a prompt is prefilled, the states
of its first tokens are kept in blocks of ``BLOCK`` tokens (whole blocks, at least one token
short of the prompt, which must still produce the first token's logits), per adapter; a later
prompt for the same adapter reuses the longest chain of kept blocks it starts with and
prefills only the rest. A block is keyed by every token up to its end, so prompts that share
passages share those blocks and store only what differs. vLLM calls this automatic prefix
caching.

A position's states depend only on the tokens up to it (causal attention), so the reused
states are the ones a full prefill would compute, up to float rounding: a matmul may block
its sums differently for another prompt length. Blocks are evicted least recently used first
beyond the budget (``prefix_cache_mb``); a use refreshes a chain from its last block to its
first, so a block is always fresher than the blocks after it and eviction takes chains from
their ends. Used under the generation engine's lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

KV = tuple[Any, Any]  # one layer's (keys, values): [1, kv heads, tokens, head dim]
BLOCK = 16  # prefixes are kept and matched in whole blocks of tokens
_Key = tuple[str | None, tuple[int, ...]]  # (adapter, every token up to the block's end)


@dataclass
class _Block:
    kv: list[KV]  # this block's BLOCK positions, per layer
    nbytes: int


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to a hit
    evictions: int = 0  # blocks


class PrefixCache:
    """Key/value states of prompt prefixes in blocks, by adapter and tokens, LRU within a
    budget of bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.nbytes = 0
        self.stats = PrefixStats()
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        """Blocks kept."""
        return len(self._blocks)

    def match(
        self, adapter: str | None, ids: Sequence[int], beyond: int = 0
    ) -> tuple[int, list[KV] | None]:
        """The longest kept prefix of ``ids`` for ``adapter``, in whole blocks, shorter than
        ``ids`` and longer than ``beyond`` (what the caller has cached otherwise): (its
        length, its states), or (0, None)."""
        import torch

        chain = self._chain(adapter, tuple(ids))
        n = len(chain) * BLOCK
        if n <= beyond:
            self.stats.misses += 1
            return 0, None
        self._refresh(chain)
        self.stats.hits += 1
        self.stats.reused_tokens += n
        blocks = [self._blocks[key] for key in chain]
        return n, [
            (
                torch.cat([b.kv[i][0] for b in blocks], dim=-2),
                torch.cat([b.kv[i][1] for b in blocks], dim=-2),
            )
            for i in range(len(blocks[0].kv))
        ]

    def store(
        self, adapter: str | None, ids: Sequence[int], states: Callable[[], list[KV]]
    ) -> None:
        """Keep the blocks of ``ids``'s prefix not kept yet (``states()``: the whole
        prompt's states, per layer; called only if a block is missing)."""
        chain = _keys(adapter, tuple(ids))
        if not self.enabled or not chain:
            return
        missing = [b for b, key in enumerate(chain) if key not in self._blocks]
        if missing:
            whole = states()
            for b in missing:
                lo, hi = b * BLOCK, (b + 1) * BLOCK
                kv = [(k[:, :, lo:hi].clone(), v[:, :, lo:hi].clone()) for k, v in whole]
                block = _Block(kv, sum(k.nbytes + v.nbytes for k, v in kv))
                self._blocks[chain[b]] = block
                self.nbytes += block.nbytes
        self._refresh(chain)
        while self.nbytes > self.budget and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.nbytes -= block.nbytes
            self.stats.evictions += 1

    def drop(self, adapter: str | None) -> None:
        """Forget every prefix computed with ``adapter`` (it was unloaded or replaced)."""
        for key in [k for k in self._blocks if k[0] == adapter]:
            self.nbytes -= self._blocks.pop(key).nbytes

    def _chain(self, adapter: str | None, want: tuple[int, ...]) -> list[_Key]:
        """The keys of the kept blocks ``want`` starts with, first to last (at least one
        token of ``want`` left after them)."""
        chain: list[_Key] = []
        for key in _keys(adapter, want):
            if key not in self._blocks:
                break
            chain.append(key)
        return chain

    def _refresh(self, chain: list[_Key]) -> None:
        """Mark a chain used, last block first: its first block ends up the freshest."""
        for key in reversed(chain):
            self._blocks.move_to_end(key)


def _keys(adapter: str | None, want: tuple[int, ...]) -> list[_Key]:
    """The keys of ``want``'s whole blocks, first to last, leaving at least one token after
    them (the prompt's last token must still be run for its logits)."""
    return [(adapter, want[: b * BLOCK]) for b in range(1, (len(want) - 1) // BLOCK + 1)]
