"""Batched generation with many LoRA adapters on one base model (LoRAX-style).

One ``PeftModel`` holds every loaded adapter; each row of a batch names its own adapter
(``adapter_names=[...]``, "__base__" for none), so requests for different adapters are
generated together. ``set_adapter`` is never called: it mutates shared state. All model
access goes through one lock, taken per decode step, so callers on several threads are safe
and an adapter can be loaded between two steps of a running batch.

Batches are continuous (``core.decode``): rows join and leave between steps. An adapter
that a running row uses is never evicted or unloaded under it. A prompt longer than
``prefill_chunk_tokens`` is prefilled one chunk at a time between decode steps, so a short
request that arrives meanwhile waits for one chunk at most, and a cancelled one stops
within a chunk. Shorter prompts that join together are prefilled in passes of at most
``prefill_batch_tokens`` positions, so each row's first token comes at the end of its pass.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragtune.core.config import Settings
from ragtune.core.decode import (
    KV,
    DecodeState,
    Prefill,
    Row,
    cache_bytes,
    prefix_states,
    row_states,
)
from ragtune.core.errors import AdapterBusy, InvalidInput
from ragtune.core.models import Generator
from ragtune.core.multi_lora import GatheredLora
from ragtune.core.prefix_cache import PrefixCache
from ragtune.core.registry import AdapterInfo, check_base, get_adapter
from ragtune.core.types import GenRequest, GenResult

__all__ = [
    "BASE",
    "ContinuousBatch",
    "GenRequest",
    "GenResult",
    "GenerationEngine",
    "Row",
    "prefill_passes",
]

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
MIN_PREFIX = 4  # a shorter shared preamble is not worth a cache


@dataclass
class AdapterStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads_ms: list[float] = field(default_factory=list)


class GenerationEngine:
    """Owns the generator and the in-memory adapter cache (LRU, ``max_loaded_adapters``)."""

    def __init__(
        self,
        generator: Generator,
        settings: Settings,
        resolve_adapter: Callable[[str], AdapterInfo] | None = None,
    ) -> None:
        self.gen = generator
        self.settings = settings
        self.max_loaded = settings.max_loaded_adapters
        self._resolve = resolve_adapter or (lambda name: get_adapter(settings, name))
        self._base = generator.model
        self._peft: Any = None
        self._lora: GatheredLora | None = None  # stacked LoRA weights (settings.lora_kernel)
        self._loaded: OrderedDict[str, AdapterInfo] = OrderedDict()
        self._in_use: Counter[str] = Counter()  # running rows per adapter
        # The prompt preamble every ragtune prompt shares, and its key/value states per
        # adapter (None = base), so joining rows prefill only the rest of their prompts.
        self._prefix: tuple[int, ...] | None = None
        self._prefix_kv: dict[str | None, list[KV]] = {}
        # Longer prefixes that earlier prompts shared (passages), when prefix_cache_mb > 0.
        self.prefixes = PrefixCache(int(settings.prefix_cache_mb * 2**20))
        self._lock = threading.RLock()
        self.stats = AdapterStats()
        self._stops = _stop_ids(generator.tokenizer)

    # --- adapters -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.gen.tokenizer

    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    def load_adapter(self, name: str, *, pinned: Sequence[str] = ()) -> AdapterInfo:
        """Make ``name`` resident (a cache hit just refreshes its LRU position)."""
        with self._lock:
            if name in self._loaded:
                self.stats.hits += 1
                self._loaded.move_to_end(name)
                return self._loaded[name]
            info = self._resolve(name)
            check_base(info, self.gen.model_id, self.gen.fingerprint)
            if info.method != "lora":
                raise InvalidInput(
                    f"adapter {name!r} is a full fine-tuned model, not a LoRA adapter; "
                    "serve it by setting it as the generator",
                    field="adapter",
                )
            self.stats.misses += 1
            while len(self._loaded) >= self.max_loaded:
                busy = set(pinned) | set(self._in_use)
                victim = next((n for n in self._loaded if n not in busy), None)
                if victim is None:
                    break
                self._unload_locked(victim)
                self.stats.evictions += 1
            t0 = time.perf_counter()
            from peft import PeftModel

            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._base, str(info.path), adapter_name=name, is_trainable=False
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(info.path), adapter_name=name, is_trainable=False)
            self._restack()
            self.stats.loads_ms.append((time.perf_counter() - t0) * 1000)
            self._loaded[name] = info
            return info

    def unload_adapter(self, name: str) -> bool:
        """Drop an adapter from memory; returns False if it was not loaded."""
        with self._lock:
            if name not in self._loaded:
                return False
            if self._in_use[name]:
                raise AdapterBusy(
                    f"adapter {name!r} is generating for {self._in_use[name]} running "
                    "request(s); unload it when they are done"
                )
            self._unload_locked(name)
            return True

    def _unload_locked(self, name: str) -> None:
        del self._loaded[name]
        self._prefix_kv.pop(name, None)
        self.prefixes.drop(name)
        if not self._loaded:
            # Last one: take the LoRA layers out so the base model runs at full speed again.
            self._base = self._peft.unload()
            self._peft = self._lora = None
        else:
            self._peft.delete_adapter(name)
            self._restack()

    def _restack(self) -> None:
        """Stack the loaded adapters' LoRA weights for the gathered kernel (under the lock)."""
        if self.settings.lora_kernel != "gathered":
            return
        if self._lora is None:
            self._lora = GatheredLora(self._peft)
        else:
            self._lora.rebuild()

    # --- generation -----------------------------------------------------------------------
    def _model_and_names(self, adapters: Sequence[str | None]) -> tuple[Any, dict[str, Any]]:
        if self._peft is None:
            return self._base, {}
        if self._lora is not None and self._lora.supported:
            return self._lora.model(adapters), {}  # one gathered LoRA matmul pair per layer
        return self._peft, {"adapter_names": [a or BASE for a in adapters]}

    def prefix_for(self, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` have cached states (0: none)."""
        if self._prefix is None:
            from ragtune.core.prompts import shared_prefix_ids

            found = tuple(shared_prefix_ids(self.tokenizer))
            self._prefix = found if len(found) >= MIN_PREFIX else ()
        n = len(self._prefix)
        return n if n and len(ids) > n and tuple(ids[:n]) == self._prefix else 0

    def cached_prefix(self, adapter: str | None, ids: Sequence[int]) -> list[KV]:
        """Under the lock: the states of the longest cached prefix of ``ids`` for
        ``adapter`` (a prompt seen before, or the preamble), or [] for none."""
        preamble = self.prefix_for(ids)
        if self.prefixes.enabled:
            _, states = self.prefixes.match(adapter, ids, beyond=preamble)
            if states is not None:
                return states
        return self._prefix_states(adapter) if preamble else []

    def _prefix_states(self, adapter: str | None) -> list[KV]:
        """Under the lock: the preamble's key/value states for one adapter (computed once)."""
        if adapter not in self._prefix_kv:
            assert self._prefix
            model, extra = self._model_and_names([adapter])
            self._prefix_kv[adapter] = prefix_states(model, extra, self._prefix)
        return self._prefix_kv[adapter]

    def _use(self, adapters: Sequence[str | None], delta: int) -> None:
        """Count the running rows per adapter (under the lock): those are never evicted."""
        for name in adapters:
            if name:
                self._in_use[name] += delta
                if self._in_use[name] <= 0:
                    del self._in_use[name]

    def batch(self) -> ContinuousBatch:
        """A new, empty continuous batch on this engine's model."""
        return ContinuousBatch(self)

    def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate every request together; each row leaves the batch when it is done.

        Raises the first row's error if any row failed (an unknown adapter, say)."""
        results: list[GenResult | BaseException | None] = [None] * len(requests)

        def keep(i: int) -> Callable[[GenResult | BaseException], None]:
            return lambda res: results.__setitem__(i, res)

        batch = self.batch()
        batch.add([Row(r, keep(i)) for i, r in enumerate(requests)])
        while len(batch):
            batch.step()
        out: list[GenResult] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            assert res is not None, "every row ends with a result"
            out.append(res)
        return out

    def stream(self, request: GenRequest) -> Iterator[str | GenResult]:
        """Yield text pieces as they are decoded, then the GenResult."""
        yield from stream_alone(self.batch(), request)


def stream_alone(batch: Any, request: GenRequest) -> Iterator[str | GenResult]:
    """Run ``request`` as the one row of ``batch`` (a local ContinuousBatch or a server's):
    its text pieces as they come, then its GenResult."""
    pieces: list[str] = []
    result: list[GenResult | BaseException] = []
    batch.add([Row(request, result.append, on_text=pieces.append)])
    while True:
        ready, pieces[:] = pieces[:], []
        yield from ready
        if not len(batch):
            break
        batch.step()
    if isinstance(result[0], BaseException):
        raise result[0]
    yield result[0]


class ContinuousBatch:
    """Rows generated together that join (``add``) and leave (when done) between steps.

    The engine lock is held for one prefill or one step at a time, never across steps.
    Prompts up to ``prefill_chunk_tokens`` (after the cached preamble) are prefilled in
    ``add``, oldest first, several to a pass while the pass stays within
    ``prefill_batch_tokens`` positions (``prefill_passes``); each longer one is prefilled
    one chunk at a time, oldest first, between the decode steps of the running rows (see
    ``step``)."""

    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine
        self._state = DecodeState(engine.tokenizer, engine._stops, engine.settings.prefill_dtype)
        if engine.prefixes.enabled:
            self._state.on_prefilled = self._remember
        self._chunk = engine.settings.prefill_chunk_tokens
        self._pass_tokens = engine.settings.prefill_batch_tokens
        self._prefills: list[Prefill] = []  # long prompts being prefilled, oldest first
        self._chunk_s = 0.0  # how long the last prefill chunk took
        self._decode_s = 0.0  # time spent in decode steps since then

    def __len__(self) -> int:
        return len(self._state) + sum(len(p.rows) for p in self._prefills)

    @property
    def adapters(self) -> set[str]:
        """The distinct adapters the running rows use (those still prefilling included)."""
        names = self._state.adapters() + [r.adapter for p in self._prefills for r in p.rows]
        return {a for a in names if a}

    @property
    def prefilling(self) -> int:
        """Rows whose long prompts are still being prefilled."""
        return sum(len(p.rows) for p in self._prefills)

    @property
    def prefilled_tokens(self) -> int:
        """Prompt positions prefilled since the batch was made (padding included)."""
        return self._state.prefilled_tokens

    def cache_bytes(self) -> int:
        """Memory held by the key/value caches of the running and prefilling rows."""
        return self._state.cache_bytes() + sum(cache_bytes(p.cache) for p in self._prefills)

    def add(self, rows: Sequence[Row]) -> None:
        """Load each row's adapter, prefill the short prompts together and queue the long
        ones for chunked prefill. A row whose adapter fails to load finishes with that
        error alone; the others join."""
        eng = self._engine
        with eng._lock:
            ready: list[Row] = []
            pinned = self.adapters
            for row in rows:
                if row.adapter:
                    try:
                        eng.load_adapter(row.adapter, pinned=[*pinned, row.adapter])
                    except Exception as e:
                        row.finish(e)
                        continue
                    pinned.add(row.adapter)
                ready.append(row)
            if not ready:
                return
            ids = [
                list(r.request.prompt_ids)
                if r.request.prompt_ids is not None
                else eng.tokenizer(r.request.prompt, add_special_tokens=False)["input_ids"]
                for r in ready
            ]
            prefixes = [eng.cached_prefix(r.adapter, i) for r, i in zip(ready, ids, strict=True)]
            cached = [p[0][0].shape[-2] if p else 0 for p in prefixes]
            for use_prefix in (True, False):  # rows with and without a prefix never share a pass
                group = [j for j, c in enumerate(cached) if (c > 0) == use_prefix]
                short = [j for j in group if len(ids[j]) - cached[j] <= self._chunk]
                lengths = [len(ids[j]) - cached[j] for j in short]
                for part in prefill_passes(lengths, self._pass_tokens):
                    picked = [short[k] for k in part]
                    self._join(
                        [ready[j] for j in picked],
                        [ids[j] for j in picked],
                        [prefixes[j] for j in picked] if use_prefix else None,
                    )
                for j in group:
                    if j not in short:
                        self._start(ready[j], ids[j], prefixes[j] if use_prefix else None)

    def _join(self, rows: list[Row], ids: list[list[int]], prefix: list[list[KV]] | None) -> None:
        eng = self._engine
        eng._use([r.adapter for r in rows], +1)
        try:
            model, extra = eng._model_and_names([r.adapter for r in rows])
            done = self._state.join(model, extra, rows, ids, prefix)
        except Exception as e:
            eng._use([r.adapter for r in rows], -1)
            for row in rows:
                row.finish(e)
            return
        eng._use([r.adapter for r in done], -1)

    def _start(self, row: Row, ids: list[int], prefix: list[KV] | None) -> None:
        """Queue a long prompt for chunked prefill (its adapter now counts as in use)."""
        eng = self._engine
        eng._use([row.adapter], +1)
        try:
            self._prefills.append(self._state.start([row], [ids], [prefix] if prefix else None))
        except Exception as e:
            eng._use([row.adapter], -1)
            row.finish(e)

    def _remember(self, p: Prefill, cache: Any) -> None:
        """Keep each prefilled prompt's prefix states for later prompts that share it."""
        for j, (row, ids) in enumerate(zip(p.rows, p.ids, strict=True)):
            if not row.is_cancelled():
                states = functools.partial(row_states, cache, p.mask, j)
                self._engine.prefixes.store(row.adapter, ids, states)

    def step(self) -> None:
        """One token for every running row, and (when it is its turn) one chunk of the
        oldest long prompt being prefilled; finished rows get their results.

        A chunk's turn comes when no row is decoding, or when the decode steps since the
        last chunk took as long as that chunk did: running rows and long prompts share the
        time equally, so a short request that arrives during a long prefill waits for the
        chunk in progress, then decodes at full speed (its steps are far shorter than a
        chunk), and a long prompt still advances under a steady stream of short ones."""
        eng = self._engine
        with eng._lock:
            left = self._state.drop_cancelled()
            left += self._drop_cancelled_prefills()
            if self._prefills and (not len(self._state) or self._decode_s >= self._chunk_s):
                t0 = time.perf_counter()
                left += self._prefill_chunk(self._prefills[0])
                self._chunk_s, self._decode_s = time.perf_counter() - t0, 0.0
            if len(self._state):
                t0 = time.perf_counter()
                model, extra = eng._model_and_names(self._state.adapters())
                try:
                    left += self._state.step(model, extra)
                except Exception as e:
                    failed = self._state.abort()
                    for row in failed:
                        row.finish(e)
                    left += failed
                self._decode_s += time.perf_counter() - t0
            eng._use([r.adapter for r in left], -1)

    def _drop_cancelled_prefills(self) -> list[Row]:
        """Prefills whose every row was cancelled stop here (their caches are freed)."""
        gone = [p for p in self._prefills if all(r.is_cancelled() for r in p.rows)]
        self._prefills = [p for p in self._prefills if p not in gone]
        return [r for p in gone for r in p.rows]

    def _prefill_chunk(self, p: Prefill) -> list[Row]:
        """Run one chunk of ``p``; returns the rows that left (finished or failed)."""
        model, extra = self._engine._model_and_names([r.adapter for r in p.rows])
        try:
            done = self._state.prefill(model, extra, p, self._chunk)
        except Exception as e:
            self._prefills.remove(p)
            for row in p.rows:
                row.finish(e)
            return list(p.rows)
        if done is None:
            return []
        self._prefills.remove(p)  # its rows are running now
        return done


def prefill_passes(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """The prompts (their indices, in order) grouped into prefill passes of at most
    ``budget`` positions, padding included (rows x the longest), like vLLM's
    ``max_num_batched_tokens``; a prompt longer than the budget has a pass of its own.

    A row's first token comes at the end of its pass, and on a CPU a pass over prompts a few
    hundred tokens long costs as much as its rows one by one, or more, so a long prompt gains
    nothing by waiting for the others' prefill; short prompts still share a pass."""
    passes: list[list[int]] = []
    longest = 0
    for j, n in enumerate(lengths):
        if passes and max(longest, n) * (len(passes[-1]) + 1) <= budget:
            passes[-1].append(j)
            longest = max(longest, n)
        else:
            passes.append([j])
            longest = n
    return passes


def _stop_ids(tok: Any) -> list[int]:
    """EOS plus the chat template's end-of-turn token, when the tokenizer has one."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and tid not in ids:
            ids.append(tid)
    return ids
