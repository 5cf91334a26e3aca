"""The generation engine interface, and the factory that picks one from the settings.

Two engines answer it: ``core.generation.GenerationEngine`` runs the model in this process
(continuous batching, many LoRA adapters per batch), ``core.remote.RemoteEngine`` sends the
rendered prompts to an OpenAI-compatible server (vLLM, another ragtune). The pipeline, the
service's scheduler and the eval harness only use what is declared here, so they work the
same on either (``generator_backend = "local" | "openai"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ragtune.core.config import Settings
from ragtune.core.types import GenRequest, GenResult

if TYPE_CHECKING:
    from ragtune.core.decode import Row
    from ragtune.core.generation import AdapterStats
    from ragtune.core.models import Generator
    from ragtune.core.registry import AdapterInfo


class GeneratorInfo(Protocol):
    """What callers read of the generator: its tokenizer (prompts are rendered and counted
    with it), name, weights' fingerprint and context length."""

    @property
    def tokenizer(self) -> Any: ...
    @property
    def model_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def context_length(self) -> int | None: ...
    @property
    def vocab_size(self) -> int | None: ...


class Batch(Protocol):
    """Rows generated together; they join with ``add`` and leave when done (``step``)."""

    def __len__(self) -> int: ...
    @property
    def adapters(self) -> set[str]: ...
    @property
    def prefilling(self) -> int: ...
    @property
    def prefilled_tokens(self) -> int: ...
    def cache_bytes(self) -> int: ...
    def add(self, rows: Sequence[Row]) -> None: ...
    def step(self) -> None: ...


class Engine(Protocol):
    """Generation with per-row adapters."""

    @property
    def gen(self) -> GeneratorInfo: ...
    @property
    def stats(self) -> AdapterStats: ...
    @property
    def tokenizer(self) -> Any: ...
    def loaded_adapters(self) -> list[str]: ...
    def load_adapter(self, name: str, *, pinned: Sequence[str] = ()) -> AdapterInfo: ...
    def unload_adapter(self, name: str) -> bool: ...
    def batch(self) -> Batch: ...
    def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]: ...
    def stream(self, request: GenRequest) -> Iterator[str | GenResult]: ...


def build_engine(
    settings: Settings,
    generator: Generator | None = None,
    resolve_adapter: Callable[[str], AdapterInfo] | None = None,
) -> Engine:
    """The engine ``generator_backend`` asks for: ``local`` loads the generator here (or
    uses ``generator``); ``openai`` loads only its tokenizer and config, and generates on
    the server at ``generator_url``."""
    if settings.generator_backend == "openai":
        from ragtune.core.models import load_generator_spec
        from ragtune.core.remote import RemoteEngine

        return RemoteEngine(load_generator_spec(settings), settings, resolve_adapter)
    from ragtune.core.generation import GenerationEngine
    from ragtune.core.models import load_generator

    return GenerationEngine(generator or load_generator(settings), settings, resolve_adapter)


__all__ = ["Batch", "Engine", "GeneratorInfo", "build_engine"]
