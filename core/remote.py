"""Generation on an OpenAI-compatible server (vLLM, another ragtune): ``generator_backend =
"openai"``.

The pipeline renders and counts prompts here, with the generator's own tokenizer and
``core.prompts`` (so training and serving stay identical); this engine sends each prompt's
token ids to ``POST /v1/completions`` with ``model`` = the adapter's name or the base model's
id, one request per row, concurrently (the server batches them: vLLM's continuous batching
mixes adapters in one batch). Sending token ids, not text, means the server sees exactly
the tokens the adapter was trained on (no second tokenization, no extra BOS).

Before an adapter's first request it is registered with vLLM's runtime LoRA API
(``POST /v1/load_lora_adapter``) under its registry name, with the path the server sees
(``generator_adapter_dir`` maps the registry folder to a shared volume). The folder is
checked here first (vLLM answers 200 for a path that does not exist,
vllm-project/vllm#18372). A retrained adapter (a new version in the registry) is loaded
again in place. A server that restarted forgets runtime adapters: a 404 for an adapter's
``model`` registers it again and retries once, and ``check_backend`` (``/readyz``) drops
the names the server no longer lists.

The HTTP calls run on one event loop thread owned by the engine; ``RemoteBatch`` gives the
service's scheduler the same add/step interface as the local continuous batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ragtune.core.adapter_catalog import lora_folder_problem
from ragtune.core.config import Settings
from ragtune.core.decode import MIN_TEMPERATURE, Row
from ragtune.core.errors import BackendError, InvalidInput, RagtuneError
from ragtune.core.generation import AdapterStats, _stop_ids, stream_alone
from ragtune.core.models import GeneratorSpec
from ragtune.core.openai_client import AlreadyLoaded, BackendConfig, OpenAIBackend, UnknownAtBackend
from ragtune.core.registry import AdapterInfo, check_base, get_adapter
from ragtune.core.types import FinishReason, GenRequest, GenResult

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.02  # how long a batch step waits for a row's news before the scheduler looks again
HEALTH_TIMEOUT_S = 5.0


class LoopThread:
    """An asyncio event loop on a daemon thread, for callers on other threads."""

    def __init__(self, name: str = "ragtune-backend") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it (never call this from the loop)."""
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    detail: str | None  # why not, for /readyz
    model: str  # the base model's id on the server


class RemoteEngine:
    """The ``core.engines.Engine`` interface over an OpenAI-compatible server."""

    def __init__(
        self,
        spec: GeneratorSpec,
        settings: Settings,
        resolve_adapter: Callable[[str], AdapterInfo] | None = None,
    ) -> None:
        self._spec = spec
        self._own_context = spec.context_length
        self.settings = settings
        self._resolve = resolve_adapter or (lambda name: get_adapter(settings, name))
        self.model_name = settings.generator_model or spec.model_id
        self.backend = OpenAIBackend(BackendConfig.of(settings))
        self.stats = AdapterStats()  # hits: registered already; misses: registrations
        self.health: BackendHealth | None = None
        self._stops = _stop_ids(spec.tokenizer)
        self._registered: dict[str, str | None] = {}  # name -> version the server holds
        self._locks: dict[str, asyncio.Lock] = {}  # per adapter name (loop thread only)
        self._limit: asyncio.Semaphore | None = None  # requests in flight (loop thread only)
        self._loop = LoopThread()

    # --- the Engine interface ---------------------------------------------------------------
    @property
    def gen(self) -> GeneratorSpec:
        return self._spec

    @property
    def tokenizer(self) -> Any:
        return self._spec.tokenizer

    def loaded_adapters(self) -> list[str]:
        """The adapters registered with the server by this process."""
        return list(self._registered)

    def load_adapter(self, name: str, *, pinned: Sequence[str] = ()) -> AdapterInfo:
        """Register ``name`` with the server (again, if the registry holds a newer version)."""
        return self._loop.run(self._ensure(name))

    def unload_adapter(self, name: str) -> bool:
        """Unregister ``name`` at the server; False if this process had not registered it."""
        return self._loop.run(self._unload(name))

    def batch(self) -> RemoteBatch:
        return RemoteBatch(self)

    def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Every request at once (the server batches them); raises the first row's error."""

        async def every() -> list[GenResult | BaseException]:
            return await asyncio.gather(
                *(self.generate(r) for r in requests), return_exceptions=True
            )

        out: list[GenResult] = []
        for res in self._loop.run(every()):
            if isinstance(res, BaseException):
                raise res
            out.append(res)
        return out

    def stream(self, request: GenRequest) -> Iterator[str | GenResult]:
        """Text pieces as the server streams them, then the GenResult."""
        yield from stream_alone(self.batch(), request)

    def close(self) -> None:
        try:
            self._loop.run(self.backend.aclose(), timeout=5)
        except Exception:  # closing is best effort: the process is going away
            log.debug("closing the backend client failed", exc_info=True)
        self._loop.close()

    # --- health -----------------------------------------------------------------------------
    def check_backend(self) -> BackendHealth:
        """Ask the server for its models (``/readyz``): it must answer and serve the base
        model. Adapters it no longer lists (it restarted) are registered again on next use;
        its ``max_model_len``, when it says, bounds the prompt budget."""
        try:
            cards = self._loop.run(
                self.backend.models(timeout_s=HEALTH_TIMEOUT_S), timeout=4 * HEALTH_TIMEOUT_S
            )
        except RagtuneError as e:
            self.health = BackendHealth(False, e.message, self.model_name)
            return self.health
        except concurrent.futures.TimeoutError:
            self.health = BackendHealth(
                False, "the generation backend did not answer", self.model_name
            )
            return self.health
        ids = [str(c.get("id")) for c in cards]
        base = next((c for c in cards if c.get("id") == self.model_name), None)
        if base is None:
            listed = ", ".join(ids[:10]) or "nothing"
            self.health = BackendHealth(
                False,
                f"the generation backend does not serve model {self.model_name!r} (it lists "
                f"{listed}); set generator_model to its served model name",
                self.model_name,
            )
            return self.health
        limit = base.get("max_model_len")
        if isinstance(limit, int) and limit > 0:
            own = self._own_context
            self._spec.context_length = limit if own is None else min(own, limit)
        for name in [n for n in self._registered if n not in ids]:
            log.info(
                "the generation backend no longer lists adapter %s; it will be registered again",
                name,
            )
            self._registered.pop(name, None)
        self.health = BackendHealth(True, None, self.model_name)
        return self.health

    # --- adapters ---------------------------------------------------------------------------
    def server_path(self, info: AdapterInfo) -> str:
        """The adapter folder's path as the server sees it: ``generator_adapter_dir`` in
        place of the registry folder (an adapter registered here at run time from another
        folder keeps its own path)."""
        root = self.settings.adapters_dir.resolve()
        path = info.path.resolve()
        try:
            rel = path.relative_to(root)
        except ValueError:
            return str(path)
        base = self.settings.generator_adapter_dir or str(root)
        return base.rstrip("/") + "/" + rel.as_posix()

    async def _ensure(self, name: str) -> AdapterInfo:
        """Register ``name`` with the server unless it holds this version already."""
        info = self._resolve(name)
        check_base(info, self._spec.model_id, self._spec.fingerprint)
        if info.method != "lora":
            raise InvalidInput(
                f"adapter {name!r} is a full fine-tuned model, not a LoRA adapter; serve it "
                "as the generation server's model instead",
                field="adapter",
            )
        problem = lora_folder_problem(info.path)
        if problem is not None:
            raise InvalidInput(
                f"adapter {name!r} cannot be sent to the generation backend: its folder has "
                f"{problem}",
                field="adapter",
            )
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._registered and self._registered[name] == info.version:
                self.stats.hits += 1
                return info
            path = self.server_path(info)
            t0 = time.perf_counter()
            try:
                await self.backend.load_lora(name, path, inplace=name in self._registered)
            except AlreadyLoaded:
                # The server holds a registration of this name we did not make (an earlier
                # process of ours, another replica): replace it with this version.
                try:
                    await self.backend.load_lora(name, path, inplace=True)
                except AlreadyLoaded:  # a server without load_inplace
                    await self.backend.unload_lora(name)
                    await self.backend.load_lora(name, path)
            self._registered[name] = info.version
            self.stats.misses += 1
            self.stats.loads_ms.append((time.perf_counter() - t0) * 1000)
            log.info("registered adapter %s with the generation backend (%s)", name, path)
            return info

    async def _unload(self, name: str) -> bool:
        if name not in self._registered:
            return False
        async with self._locks.setdefault(name, asyncio.Lock()):
            await self.backend.unload_lora(name)  # False: the server had forgotten it
            self._registered.pop(name, None)
        return True

    # --- generation -------------------------------------------------------------------------
    async def generate(
        self, request: GenRequest, on_text: Callable[[str], None] | None = None
    ) -> GenResult:
        """One row on the server; ``on_text`` gets the streamed pieces (then it streams)."""
        if self._limit is None:
            self._limit = asyncio.Semaphore(max(1, self.settings.max_batch_size))
        async with self._limit:
            ids = (
                list(request.prompt_ids)
                if request.prompt_ids is not None
                else self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
            )
            t0 = time.perf_counter()
            if request.adapter:
                await self._ensure(request.adapter)
            body = self._body(request, ids, streamed=on_text is not None)
            for attempt in (0, 1):
                try:
                    if on_text is not None:
                        text, finish, usage = await self._streamed(body, on_text)
                    else:
                        text, finish, usage = await self._plain(body)
                    break
                except UnknownAtBackend:
                    if not request.adapter or attempt:
                        raise
                    # The server restarted (runtime adapters are lost): register it again.
                    log.info(
                        "the generation backend forgot adapter %s; registering it again",
                        request.adapter,
                    )
                    self._registered.pop(request.adapter, None)
                    await self._ensure(request.adapter)
            completion = usage.get("completion_tokens")
            if not isinstance(completion, int):  # a server that does not count: estimate
                completion = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            prompt = usage.get("prompt_tokens")
            return GenResult(
                text=text,
                prompt_tokens=prompt if isinstance(prompt, int) else len(ids),
                completion_tokens=completion,
                generate_ms=(time.perf_counter() - t0) * 1000,
                finish_reason=finish,
            )

    def _body(self, request: GenRequest, ids: list[int], *, streamed: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.adapter or self.model_name,
            "prompt": ids,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature if request.temperature >= MIN_TEMPERATURE else 0.0,
            # the end-of-turn tokens the local engine stops at (vLLM adds its own EOS)
            "stop_token_ids": self._stops,
            "stream": streamed,
        }
        if request.stop_at_newline:
            body["stop"] = ["\n"]  # the answer is its first line: stop generating there
        if streamed:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _plain(self, body: dict[str, Any]) -> tuple[str, FinishReason, dict[str, Any]]:
        data = await self.backend.complete(body)
        choice = data["choices"][0]
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise BackendError("the generation backend answered a completion without text")
        usage = data.get("usage")
        return text, _finish(choice.get("finish_reason")), usage if isinstance(usage, dict) else {}

    async def _streamed(
        self, body: dict[str, Any], on_text: Callable[[str], None]
    ) -> tuple[str, FinishReason, dict[str, Any]]:
        parts: list[str] = []
        reason: Any = None
        usage: dict[str, Any] = {}
        async for chunk in self.backend.stream(body):
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                piece = choice.get("text")
                if isinstance(piece, str) and piece:
                    parts.append(piece)
                    on_text(piece)
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
        return "".join(parts), _finish(reason), usage


def _finish(reason: Any) -> FinishReason:
    """The server's finish_reason in ragtune's terms (stop or length)."""
    if reason == "length":
        return "length"
    if reason in ("stop", "eos", None):
        return "stop"
    raise BackendError(f"the generation backend ended the answer with finish_reason {reason!r}")


class RemoteBatch:
    """The rows in flight to the server, behind the local batch's add/step interface.

    ``add`` starts each row's request on the engine's loop; ``step`` waits up to ``POLL_S``
    for news and hands text and results to the rows' callbacks on the caller's thread (the
    scheduler's worker, as with the local batch). A cancelled row's request is cancelled
    (its connection closes, so the server stops generating it) and it gets no result."""

    def __init__(self, engine: RemoteEngine) -> None:
        self._engine = engine
        self._running: dict[Row, concurrent.futures.Future[GenResult]] = {}
        self._news: queue.SimpleQueue[tuple[Row, Any]] = queue.SimpleQueue()
        self._prompt_tokens = 0

    def __len__(self) -> int:
        return len(self._running)

    @property
    def adapters(self) -> set[str]:
        return {r.adapter for r in self._running if r.adapter}

    @property
    def prefilling(self) -> int:
        return 0  # the server's business

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens of the rows answered so far (the server prefilled them)."""
        return self._prompt_tokens

    def cache_bytes(self) -> int:
        return 0  # the key/value cache lives on the server

    def add(self, rows: Sequence[Row]) -> None:
        news = self._news
        for row in rows:
            on_text = None
            if row.on_text is not None:

                def on_text(piece: str, row: Row = row) -> None:
                    news.put((row, piece))

            future = self._engine._loop.submit(self._engine.generate(row.request, on_text))
            self._running[row] = future

            def done(f: concurrent.futures.Future[GenResult], row: Row = row) -> None:
                news.put((row, f))

            future.add_done_callback(done)

    def step(self) -> None:
        for row, future in list(self._running.items()):
            if row.is_cancelled():
                future.cancel()
                del self._running[row]
        if not self._running:
            return
        try:
            item = self._news.get(timeout=POLL_S)
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._news.get_nowait()
            except queue.Empty:
                return

    def _handle(self, row: Row, news: Any) -> None:
        if row not in self._running:
            return  # cancelled: no text, no result
        if isinstance(news, str):
            if row.on_text is not None:
                row.on_text(news)
            return
        del self._running[row]
        try:
            result = news.result()
        except concurrent.futures.CancelledError:
            return
        except Exception as e:
            row.finish(e)
            return
        self._prompt_tokens += result.prompt_tokens
        row.finish(result)


__all__ = ["BackendHealth", "LoopThread", "RemoteBatch", "RemoteEngine"]
