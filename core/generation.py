"""Batched generation with many LoRA adapters on one base model (LoRAX-style).

One ``PeftModel`` holds every loaded adapter; each row of a batch names its own adapter
(``adapter_names=[...]``, "__base__" for none), so requests for different adapters are
generated together. ``set_adapter`` is never called: it mutates shared state. All model
access goes through one lock, so callers on several threads are safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config import Settings
from core.errors import InvalidInput
from core.models import Generator
from core.registry import AdapterInfo, check_base, get_adapter

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


@dataclass(frozen=True)
class GenRequest:
    prompt: str
    adapter: str | None = None
    max_new_tokens: int = 32
    temperature: float = 0.0


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    generate_ms: float


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
        self._loaded: OrderedDict[str, AdapterInfo] = OrderedDict()
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
                victim = next((n for n in self._loaded if n not in pinned), None)
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
            self.stats.loads_ms.append((time.perf_counter() - t0) * 1000)
            self._loaded[name] = info
            return info

    def unload_adapter(self, name: str) -> bool:
        """Drop an adapter from memory; returns False if it was not loaded."""
        with self._lock:
            if name not in self._loaded:
                return False
            self._unload_locked(name)
            return True

    def _unload_locked(self, name: str) -> None:
        del self._loaded[name]
        if not self._loaded:
            # Last one: take the LoRA layers out so the base model runs at full speed again.
            self._base = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)

    # --- generation -----------------------------------------------------------------------
    def _model_and_names(self, adapters: Sequence[str | None]) -> tuple[Any, dict[str, Any]]:
        if self._peft is None:
            return self._base, {}
        return self._peft, {"adapter_names": [a or BASE for a in adapters]}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate every request in as few forward passes as possible.

        Rows with sampling and greedy rows run as separate sub-batches; within one, the batch
        runs to the longest ``max_new_tokens`` and each row is cut to its own.
        """
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[float, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(round(r.temperature, 4), []).append(i)
        for temp, idx in groups.items():
            for i, res in zip(
                idx, self._generate_group([requests[i] for i in idx], temp), strict=True
            ):
                results[i] = res
        return [r for r in results if r is not None]

    def _generate_group(self, reqs: list[GenRequest], temperature: float) -> list[GenResult]:
        import torch

        tok = self.tokenizer
        with self._lock:
            wanted = [r.adapter for r in reqs if r.adapter]
            for name in dict.fromkeys(wanted):
                self.load_adapter(name, pinned=wanted)
            model, extra = self._model_and_names([r.adapter for r in reqs])
            tok.padding_side = "left"
            enc = tok(
                [r.prompt for r in reqs],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            max_new = max(r.max_new_tokens for r in reqs)
            sample = temperature > 0
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=self._stops,
                    **extra,
                )
            ms = (time.perf_counter() - t0) * 1000
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        width = enc["input_ids"].shape[1]
        stops = set(self._stops)
        results = []
        for row, r, plen in zip(out, reqs, prompt_lens, strict=True):
            new = row[width:].tolist()[: r.max_new_tokens]
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            text = tok.decode(new[:cut], skip_special_tokens=True)
            results.append(GenResult(text, int(plen), cut + (1 if cut < len(new) else 0), ms))
        return results

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Yield text pieces as they are generated (one request; holds the model meanwhile)."""
        from transformers import TextIteratorStreamer

        tok = self.tokenizer
        with self._lock:
            if request.adapter:
                self.load_adapter(request.adapter)
            model, extra = self._model_and_names([request.adapter])
            enc = tok([request.prompt], return_tensors="pt", add_special_tokens=False).to(
                model.device
            )
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            sample = request.temperature > 0
            errors: list[BaseException] = []

            def run() -> None:
                import torch

                try:
                    with torch.inference_mode():
                        model.generate(
                            **enc,
                            max_new_tokens=request.max_new_tokens,
                            do_sample=sample,
                            temperature=request.temperature if sample else None,
                            top_p=None,
                            top_k=None,
                            pad_token_id=tok.pad_token_id,
                            eos_token_id=self._stops,
                            streamer=streamer,
                            **extra,
                        )
                except BaseException as e:  # surfaced to the consumer below
                    errors.append(e)
                    streamer.end()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            yield from (piece for piece in streamer if piece)
            worker.join()
            if errors:
                raise errors[0]


def _stop_ids(tok: Any) -> list[int]:
    """EOS plus the chat template's end-of-turn token, when the tokenizer has one."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and tid not in ids:
            ids.append(tid)
    return ids
