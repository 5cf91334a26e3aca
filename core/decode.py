"""Continuous batching: the rows being decoded together, one token per step.

Rows join between steps (their prompts are prefilled together, and their key/value cache is
merged into the running one) and leave as soon as they finish (stop token, token limit) or
are cancelled, so a late request never waits for a whole batch to end, and a short answer
never holds a slot while the longest one runs (static batching does both).

Every row is left-padded: a row's cache holds [padding..., real tokens...], its attention
mask says which is which, and its position ids count real tokens only. Joining pads the
shorter side on the left; leaving drops the row and any padding columns no row needs.

A prompt is prefilled in one forward pass, or chunk by chunk (``start`` + ``prefill`` with a
chunk size): between two chunks the caller can run decode steps for other rows, prefill a
short prompt that came in meanwhile, or drop the row because its request was cancelled. A
prompt no longer than the chunk runs in one pass, exactly as before.

This module is tensor bookkeeping only: callers hold the model lock and pick the model
(base or peft, with per-row adapter names).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragtune.core.prefill_weights import bf16_linears
from ragtune.core.types import FinishReason, GenRequest, GenResult

if TYPE_CHECKING:
    from transformers.cache_utils import DynamicLayer

Finish = Callable[["GenResult | BaseException"], None]
KV = tuple[Any, Any]  # one layer's key and value states
MIN_TEMPERATURE = 1e-4  # lower temperatures decode greedily


@dataclass(eq=False)
class Row:
    """One request in a batch, with callbacks for its text and its end."""

    request: GenRequest
    on_done: Finish
    on_text: Callable[[str], None] | None = None  # streaming: new text as it is decoded
    is_cancelled: Callable[[], bool] = lambda: False
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    started: float = 0.0
    finish_reason: FinishReason = "length"
    _sent: str = ""  # text already handed to on_text

    @property
    def adapter(self) -> str | None:
        return self.request.adapter

    def finish(self, result: GenResult | BaseException) -> None:
        self.on_done(result)


@dataclass(eq=False)
class Prefill:
    """Rows whose prompts are being prefilled: laid out by ``DecodeState.start``, run by
    ``DecodeState.prefill`` (whole, or one chunk of columns per call)."""

    rows: list[Row]
    input_ids: Any  # [rows, width] the prompts after any cached preamble, left-padded
    mask: Any  # [rows, preamble + width]
    pos: Any  # [rows, width] position ids of input_ids
    cache: Any  # the key/value states so far (the preamble's, then each chunk's)
    done: int = 0  # columns of input_ids already run
    ids: list[Sequence[int]] = field(default_factory=list)  # each row's whole prompt

    @property
    def remaining(self) -> int:
        return int(self.input_ids.shape[1]) - self.done


class DecodeState:
    """Key/value cache, attention mask and next input token for every active row."""

    def __init__(
        self, tokenizer: Any, stop_ids: Sequence[int], prefill_dtype: str = "float32"
    ) -> None:
        self.tok = tokenizer
        self.stops = frozenset(stop_ids)
        self.prefill_dtype = prefill_dtype  # "bfloat16": prompts run under CPU autocast
        self.rows: list[Row] = []
        self._cache: Any = None  # transformers DynamicCache, batch dimension = rows
        self._mask: Any = None  # [rows, columns] 1 = real token, 0 = left padding
        self._next: Any = None  # [rows] the token each row feeds in at the next step
        self._pos: Any = None  # [rows] that token's position (real tokens before it)
        self.prefilled_tokens = 0  # prompt positions run so far (padding included)
        # Called with each finished prefill and its states (in the model's dtype) before
        # its rows join: a prefix cache keeps them (core.prefix_cache).
        self.on_prefilled: Callable[[Prefill, Any], None] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def adapters(self) -> list[str | None]:
        return [r.adapter for r in self.rows]

    # --- joining --------------------------------------------------------------------------
    def join(
        self,
        model: Any,
        extra: dict[str, Any],
        rows: Sequence[Row],
        ids: Sequence[Sequence[int]],
        prefix: Sequence[Sequence[KV]] | None = None,
    ) -> list[Row]:
        """Prefill ``rows`` (token ``ids``, one forward pass) and add them; returns the rows
        already finished (a stop token or a one-token limit), which are not kept."""
        done = self.prefill(model, extra, self.start(rows, ids, prefix))
        assert done is not None  # a whole prefill always ends
        return done

    def start(
        self,
        rows: Sequence[Row],
        ids: Sequence[Sequence[int]],
        prefix: Sequence[Sequence[KV]] | None = None,
    ) -> Prefill:
        """Lay out ``rows`` for prefilling (no forward pass yet).

        ``prefix``: per row, the cached key/value states of a prefix of its ``ids`` (empty:
        none); only the rest of each prompt is prefilled. The rows are then laid out
        [padding, prefix, padding, rest], prefixes right-aligned: the mask and the position
        ids (which count real tokens) make both paddings invisible."""
        import torch
        import torch.nn.functional as F

        if any(not i for i in ids):
            raise ValueError("an empty prompt cannot be generated from")
        given = prefix or [[] for _ in rows]
        lens = [p[0][0].shape[-2] if p else 0 for p in given]
        plen = max(lens)
        rest = [seq[n:] for seq, n in zip(ids, lens, strict=True)]
        width = max(map(len, rest))
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), plen + width), dtype=torch.long)
        for j, seq in enumerate(rest):
            mask[j, plen - lens[j] : plen] = 1
            input_ids[j, width - len(seq) :] = torch.tensor(seq)
            mask[j, plen + width - len(seq) :] = 1
        now = time.perf_counter()
        for r, seq in zip(rows, ids, strict=True):
            r.prompt_tokens, r.started, r.tokens = len(seq), now, []
        layers: list[KV] = []
        if plen:
            like = next(p for p in given if p)

            def padded(j: int, i: int, kv: int) -> Any:
                if not given[j]:
                    k = like[i][kv]
                    return k.new_zeros((1, k.shape[1], plen, k.shape[3]))
                states = given[j][i][kv]
                return states if lens[j] == plen else F.pad(states, (0, 0, plen - lens[j], 0))

            for i in range(len(like)):
                layers.append(
                    (
                        torch.cat([padded(j, i, 0) for j in range(len(rows))]),
                        torch.cat([padded(j, i, 1) for j in range(len(rows))]),
                    )
                )
        pos = (mask.cumsum(-1) - 1)[:, plen:]
        return Prefill(list(rows), input_ids, mask, pos, _new_cache(layers), ids=list(ids))

    def prefill(
        self, model: Any, extra: dict[str, Any], p: Prefill, chunk: int = 0
    ) -> list[Row] | None:
        """Run the next ``chunk`` columns of ``p`` (0: all that remain). When its prompts
        are complete, its rows join the batch and the rows already finished are returned;
        until then, None."""
        start, width = p.done, int(p.input_ids.shape[1])
        end = width if chunk <= 0 else min(width, start + chunk)
        plen = int(p.mask.shape[1]) - width
        with _prefill_precision(model, self.prefill_dtype):
            out = _forward(
                model,
                extra,
                p.input_ids[:, start:end],
                p.mask[:, : plen + end],
                p.pos[:, start:end],
                p.cache,
            )
        p.done = end
        self.prefilled_tokens += (end - start) * len(p.rows)
        if end < width:
            return None
        first = _pick(out.logits[:, -1].float(), [r.request.temperature for r in p.rows])
        cache = _cache_as(p.cache, model)
        if self.on_prefilled is not None:
            self.on_prefilled(p, cache)
        self._merge(cache, p.mask, first, p.mask.sum(dim=1))
        self.rows.extend(p.rows)
        return self._advance(first.tolist(), offset=len(self.rows) - len(p.rows))

    def _merge(self, cache: Any, mask: Any, first: Any, pos: Any) -> None:
        import torch
        import torch.nn.functional as F

        if self._cache is None:
            self._cache, self._mask, self._next, self._pos = cache, mask, first, pos
            return
        old_w, new_w = self._mask.shape[1], mask.shape[1]
        width = max(old_w, new_w)

        def join(x: Any, y: Any) -> Any:
            return torch.cat(
                [F.pad(x, (0, 0, width - old_w, 0)), F.pad(y, (0, 0, width - new_w, 0))]
            )

        self._cache = _new_cache(
            [
                (join(a.keys, b.keys), join(a.values, b.values))
                for a, b in zip(self._cache.layers, cache.layers, strict=True)
            ]
        )
        self._mask = torch.cat(
            [F.pad(self._mask, (width - old_w, 0)), F.pad(mask, (width - new_w, 0))]
        )
        self._next = torch.cat([self._next, first])
        self._pos = torch.cat([self._pos, pos])

    # --- decoding -------------------------------------------------------------------------
    def step(self, model: Any, extra: dict[str, Any]) -> list[Row]:
        """Feed every row its next token; returns the rows that finished (now removed).
        Call ``drop_cancelled`` first: ``extra`` names an adapter per row."""
        import torch

        if not self.rows:
            return []
        ones = torch.ones((len(self.rows), 1), dtype=self._mask.dtype)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = _forward(
            model, extra, self._next[:, None], self._mask, self._pos[:, None], self._cache
        )
        self._pos = self._pos + 1
        self._next = _pick(out.logits[:, -1].float(), [r.request.temperature for r in self.rows])
        return self._advance(self._next.tolist(), offset=0)

    def drop_cancelled(self) -> list[Row]:
        """Remove the rows whose callers gave up (they get no result)."""
        return self._drop([i for i, r in enumerate(self.rows) if r.is_cancelled()])

    def cache_bytes(self) -> int:
        """Memory held by the rows' key/value cache (spare room included)."""
        return cache_bytes(self._cache)

    def abort(self) -> list[Row]:
        """Empty the batch (after a failed step) and return the rows it held."""
        rows, self.rows = self.rows, []
        self._cache = self._mask = self._next = self._pos = None
        return rows

    def _advance(self, picked: list[int], offset: int) -> list[Row]:
        """Record each row's new token, stream its text, and remove the rows that are done."""
        done = []
        for i, token in enumerate(picked, start=offset):
            row = self.rows[i]
            row.tokens.append(token)
            stopped = token in self.stops
            if row.on_text is not None and not stopped:
                self._stream(row)
            if stopped or (row.request.stop_at_newline and self._line_ended(row, token)):
                row.finish_reason = "stop"
                done.append(i)
            elif len(row.tokens) >= row.request.max_new_tokens:
                row.finish_reason = "length"
                done.append(i)
        finished = self._drop(done)
        for row in finished:
            row.finish(self._result(row))
        return finished

    def _line_ended(self, row: Row, token: int) -> bool:
        """Whether ``token`` ended the first line of the row's answer (leading blank lines
        do not count): the pipeline keeps that line only (``clean_answer``)."""
        if "\n" not in self.tok.decode([token]):  # cheap: most tokens hold no newline
            return False
        return "\n" in self.tok.decode(row.tokens, skip_special_tokens=True).lstrip()

    def _stream(self, row: Row) -> None:
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        # A multi-byte character split over tokens decodes as U+FFFD until it is complete.
        if text.endswith("\ufffd") or not text.startswith(row._sent):
            return
        piece, row._sent = text[len(row._sent) :], text
        if piece and row.on_text is not None:
            row.on_text(piece)

    def _result(self, row: Row) -> GenResult:
        toks = row.tokens
        cut = len(toks) - 1 if toks and toks[-1] in self.stops else len(toks)
        return GenResult(
            text=self.tok.decode(toks[:cut], skip_special_tokens=True),
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(toks),
            generate_ms=(time.perf_counter() - row.started) * 1000,
            finish_reason=row.finish_reason,
        )

    def _drop(self, indices: list[int]) -> list[Row]:
        """Remove rows by index, and the padding columns that only they needed."""
        if not indices:
            return []
        import torch

        gone = [self.rows[i] for i in indices]
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._next = self._pos = None
            return gone
        idx = torch.tensor(keep)
        mask = self._mask[idx]
        skip = int((mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())  # all-padding columns
        self._cache = _new_cache(
            [
                (layer.keys[idx, :, skip:], layer.values[idx, :, skip:])
                for layer in self._cache.layers
            ]
        )
        self._mask, self._next, self._pos = mask[:, skip:], self._next[idx], self._pos[idx]
        return gone


def cache_bytes(cache: Any) -> int:
    """Bytes of a cache built by ``_new_cache``: each layer's buffer, spare room included."""
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        buf = getattr(layer, "_buf", None)
        held = buf if buf is not None else (layer.keys, layer.values)
        total += sum(int(t.numel()) * t.element_size() for t in held if t is not None)
    return total


def _new_cache(layers: Sequence[KV]) -> Any:
    """A transformers DynamicCache whose layers append in place (``_growing_layer``),
    holding ``layers`` (per layer key and value states) to start with."""
    from transformers import DynamicCache

    cache = DynamicCache()
    layer_class = _growing_layer()
    cache.layer_class_to_replicate = layer_class
    for keys, values in layers:
        layer = layer_class()
        layer.update(keys, values)
        cache.layers.append(layer)
    return cache


@functools.cache
def _growing_layer() -> type[DynamicLayer]:
    """A DynamicLayer that keeps spare room after its states, so that a decode step writes
    one position in place instead of copying the whole cache (``torch.cat``) per layer:
    15% off an 8-row step of SmolLM2-135M on a CPU core (bench/results/service.txt)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        _buf: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            old_k, old_v = self.keys, self.values
            assert old_k is not None and old_v is not None  # lazy_initialization sets both
            n = old_k.shape[-2] if old_k.numel() else 0
            m = n + key_states.shape[-2]
            buf = self._buf
            # Another method (batch_select_indices, crop) may have replaced the states.
            if (
                buf is None
                or n == 0
                or old_k.data_ptr() != buf[0].data_ptr()
                or m > buf[0].shape[-2]
                or buf[0].shape[0] != key_states.shape[0]
            ):
                b, h, _, d = key_states.shape
                cap = max(m + 64, 2 * n)
                # new_empty: same dtype and device as the states
                buf = (key_states.new_empty((b, h, cap, d)), key_states.new_empty((b, h, cap, d)))
                if n:
                    buf[0][:, :, :n] = old_k
                    buf[1][:, :, :n] = old_v
                self._buf = buf
            buf[0][:, :, n:m] = key_states
            buf[1][:, :, n:m] = value_states
            self.keys, self.values = buf[0][:, :, :m], buf[1][:, :, :m]
            return self.keys, self.values

    return GrowingLayer


def _forward(model: Any, extra: dict[str, Any], ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
    """One forward pass that extends ``cache``; logits for the last position only."""
    import torch

    dev = model.device
    with torch.inference_mode():
        return model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos.clamp(min=0).to(dev),
            **{_cache_kwarg(model): cache},
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )


def _prefill_precision(model: Any, dtype: str) -> Any:
    """The context a prompt runs in: bfloat16 when asked on the CPU (autocast, with the
    linear weights' bf16 copies made once: core.prefill_weights; matmuls ~4x faster than
    fp32 on a CPU with AVX512-BF16), else nothing. Decode steps always run in the model's
    own precision."""
    import contextlib

    import torch

    if dtype != "bfloat16" or model.device.type != "cpu":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    stack.enter_context(bf16_linears(model))
    return stack


def _cache_as(cache: Any, model: Any) -> Any:
    """The cache in the model's dtype (an autocast prefill may leave bf16 states)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype, layers = base.dtype, cache.layers
    if not layers or all(layer.keys.dtype == dtype for layer in layers):
        return cache
    return _new_cache([(layer.keys.to(dtype), layer.values.to(dtype)) for layer in layers])


def row_states(cache: Any, mask: Any, j: int) -> list[KV]:
    """Row ``j``'s key/value states, per layer, at its real tokens only (in order)."""
    at = mask[j].nonzero().squeeze(-1).to(cache.layers[0].keys.device)
    return [
        (layer.keys[j : j + 1].index_select(-2, at), layer.values[j : j + 1].index_select(-2, at))
        for layer in cache.layers
    ]


def prefix_states(model: Any, extra: dict[str, Any], ids: Sequence[int]) -> list[KV]:
    """Key/value states (per layer, batch of one) of a prompt preamble."""
    import torch

    cache = _new_cache([])
    row = torch.tensor([list(ids)])
    _forward(model, extra, row, torch.ones_like(row), torch.arange(len(ids))[None], cache)
    return [(layer.keys, layer.values) for layer in cache.layers]


@functools.cache
def _cache_kwarg_of(cls: type[Any]) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept both."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(base.__class__)


def _pick(logits: Any, temperatures: Sequence[float]) -> Any:
    """Greedy for temperature ~0, else a sample from softmax(logits / t), row by row."""
    import torch

    picked = logits.argmax(dim=-1)
    for i, t in enumerate(temperatures):
        # Below MIN_TEMPERATURE (in float32 1e-300 is 0) sampling is greedy in all but name.
        if t >= MIN_TEMPERATURE:
            # Shift so the largest logit is 0: a small t gives -inf and 0, never inf - inf.
            row = logits[i] - logits[i].max()
            probs = torch.softmax(row / t, dim=-1)
            picked[i] = torch.multinomial(probs, 1)[0]
    return picked
