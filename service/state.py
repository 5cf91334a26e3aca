"""What the routes share: the settings, the Pipeline, the scheduler and the metrics.

One ``Services`` object lives on ``app.state.services`` (built by ``create_app``, started and
stopped by its lifespan) and is injected into handlers as ``svc``. The helpers here are the
one path every answering route takes: apply a published decision (a request that names no
mode or adapter) -> validate (fast, on the loop) -> check the adapter and the key's scopes ->
retrieve + render (a worker thread) -> batched generation (the scheduler).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput, RagtuneError
from ragtune.core.index_store import current_version
from ragtune.core.pipeline import RETRIEVAL_MODES, Pipeline, Prepared, QueryRequest
from ragtune.core.types import Answer
from ragtune.service import own_thread
from ragtune.service.decision_cache import DecisionCache, apply_decision
from ragtune.service.errors import ClientGone
from ragtune.service.keys import EVERYTHING, KeyRing, Principal
from ragtune.service.metrics import BatchStats, Metrics
from ragtune.service.scheduler import BatchScheduler
from ragtune.service.schemas import BackendOut

log = logging.getLogger("ragtune.service")
T = TypeVar("T")
Receive = Callable[[], Awaitable[Any]]  # a request's ASGI receive


async def until_disconnected(receive: Receive) -> None:
    """Return when the client has gone. Once the request body is read, ASGI's receive()
    answers only ``http.disconnect``: when the client closes, or the response is done."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(work: Coroutine[Any, Any, T], receive: Receive | None) -> T:
    """Await ``work``; if the client leaves first, cancel it (its rows leave the batch at the
    next step, a long prompt within one prefill chunk) and raise ClientGone."""
    if receive is None:
        return await work
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})  # its cancellation marks its jobs cancelled
        raise ClientGone("the client closed the connection; its request was stopped")
    finally:
        watch.cancel()
        task.cancel()


@dataclass(frozen=True)
class Asked:
    """A request ready to answer: validated, with the decision that chose it (or "")."""

    request: QueryRequest
    decision: str = ""


@dataclass
class Services:
    settings: Settings
    pipeline: Pipeline
    scheduler: BatchScheduler
    metrics: Metrics
    keys: KeyRing
    decisions: DecisionCache
    # Retrieval (embedding a question) runs on threads; two at a time is plenty on a CPU
    # whose cores the generator also wants.
    prepare_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))
    model_error: str | None = None  # why the models failed to load, for /readyz
    index_error: str | None = None  # why the default index failed to load
    _warmup: asyncio.Task[None] | None = None

    @property
    def remote(self) -> bool:
        """Whether generation happens on a server (``generator_backend = "openai"``)."""
        return self.settings.generator_backend == "openai"

    @classmethod
    def build(cls, settings: Settings, pipeline: Pipeline | None = None) -> Services:
        pipeline = pipeline or Pipeline(settings)
        holder: list[BatchScheduler] = []

        def batch() -> BatchStats:
            b = holder[0] if holder else None
            if b is None:
                return BatchStats(0, 0, 0, 0)
            return BatchStats(b.rows, b.prefilling, b.cache_bytes, b.prefilled_tokens)

        metrics = Metrics(pipeline, lambda: float(holder[0].depth) if holder else 0.0, batch)
        scheduler = BatchScheduler(
            pipeline,
            window_ms=settings.batch_window_ms,
            max_batch_size=settings.max_batch_size,
            pass_tokens=settings.prefill_batch_tokens,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            max_adapters_per_batch=cls.adapters_per_batch(settings),
            on_step=lambda rows, _s: metrics.batch_size.observe(rows),
            on_join=metrics.prefill_rows.observe,
            on_reject=metrics.rejected.inc,
        )
        holder.append(scheduler)
        return cls(settings, pipeline, scheduler, metrics, KeyRing(settings), DecisionCache())

    @staticmethod
    def adapters_per_batch(settings: Settings) -> int:
        """Distinct adapters one batch may hold: locally the adapters held in memory; a
        generation server swaps adapters itself (vLLM's max_loras), so any."""
        if settings.generator_backend == "openai":
            return settings.max_batch_size
        return settings.max_loaded_adapters

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.scheduler.start()
        # Load the models in the background: /healthz answers at once, /readyz when loaded.
        self._warmup = asyncio.create_task(self._warm_up(), name="ragtune-warmup")

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new requests, give those admitted ``shutdown_grace_s``."""
        self.scheduler.drain(self.settings.shutdown_grace_s)

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        await anyio.to_thread.run_sync(self.pipeline.close)

    async def _warm_up(self) -> None:
        def load() -> None:
            _ = self.pipeline.engine, self.pipeline.embedder

        try:
            await own_thread.run_sync(load, abandon_on_cancel=True)
        except RagtuneError as e:
            self.model_error = e.message
            log.warning("warm-up: %s", e.message)
            return
        except Exception as e:  # the service stays up; /readyz reports the problem
            self.model_error = f"{type(e).__name__} while loading the models"
            log.exception("warm-up failed")
            return
        if self.remote:
            health = await self.check_backend()
            if health is not None and not health.reachable:
                log.warning("generation backend: %s", health.detail)
        await self.try_load_default_index()

    # --- answering ------------------------------------------------------------------------
    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    def check_chars(self, text: str, field: str) -> None:
        """A question in an HTTP body is at most ``max_question_chars`` long (400)."""
        limit = self.settings.max_question_chars
        if len(text) > limit:
            raise InvalidInput(f"{field} is longer than {limit} characters", field=field)

    def resolve(
        self,
        req: QueryRequest,
        principal: Principal = EVERYTHING,
        *,
        decide: bool = False,
        decision_index: str | None = None,
    ) -> Asked:
        """Apply the index's decision (``decide``: the request named no mode or adapter),
        then validate (400 naming the field), check the adapter exists (404) and that the
        key may use the index and the adapter (403 naming the scope)."""
        decision = ""
        index = decision_index or req.index  # the index the client asked for
        if decide:
            req, decision = apply_decision(self.settings, self.decisions, self.pipeline, req, index)
        req = self.pipeline.validate(req)
        # scopes first: a key learns nothing about indexes and adapters outside them
        if decision:  # the index asked for (the decision may search another one for it)
            principal.require_index(index or self.settings.default_index)
        elif req.mode in RETRIEVAL_MODES and req.contexts is None and req.index:
            principal.require_index(req.index)
        if req.adapter:
            principal.require_adapter(req.adapter)
            self.pipeline.adapters.get(req.adapter)  # name check + runtime/registry lookup
        return Asked(req, decision)

    async def answer_many(self, asked: list[Asked], receive: Receive | None = None) -> list[Answer]:
        """Retrieve and queue each resolved request; each joins the running batch.

        ``receive``: the request's ASGI receive, to stop the work when the client leaves."""
        deadline = self.deadline()
        return await unless_gone(self._answer_all(asked, deadline), receive)

    async def _answer_all(self, checked: list[Asked], deadline: float) -> list[Answer]:

        async def one(a: Asked) -> Answer:
            started = time.perf_counter()
            prepared = await self._prepare(a.request)
            answer = await self.scheduler.submit(prepared, deadline, admit=False, started=started)
            answer.decision = a.decision or None
            self.metrics.tokens.labels(answer.mode).inc(answer.usage.completion_tokens)
            return answer

        if len(checked) == 1:
            return [await one(checked[0])]
        return list(await asyncio.gather(*(one(r) for r in checked)))

    async def answer(self, asked: Asked, receive: Receive | None = None) -> Answer:
        return (await self.answer_many([asked], receive))[0]

    async def stream(
        self, asked: Asked, receive: Receive | None = None
    ) -> AsyncIterator[str | Answer]:
        """Text pieces, then the final Answer; errors before the first piece raise here."""
        deadline, started = self.deadline(), time.perf_counter()

        async def first() -> AsyncIterator[str | Answer]:
            prepared = await self._prepare(asked.request)
            return await self.scheduler.stream(prepared, deadline, started=started)

        # Until the first token the client may leave unnoticed (nothing is sent); once the
        # stream runs, a failed send ends it and frees the row.
        items = await unless_gone(first(), receive)
        return self._count_tokens(items, asked.decision)

    async def _prepare(self, req: QueryRequest) -> Prepared:
        """Retrieve and render on a thread; the request counts against the queue meanwhile."""
        with self.scheduler.preparing():
            prepared = await own_thread.run_sync(
                self.pipeline.prepare, [req], limiter=self.prepare_limiter
            )
        return prepared[0]

    # --- raw completions (token-id prompts) ---------------------------------------------------
    async def answer_raw(
        self, makers: list[Callable[[], Prepared]], receive: Receive | None = None
    ) -> list[Answer]:
        """Raw completions (``Pipeline.prepare_raw`` in each of ``makers``): checked on a
        thread while counted against the queue, then generated in the running batch."""
        deadline = self.deadline()

        async def one(make: Callable[[], Prepared]) -> Answer:
            started = time.perf_counter()
            with self.scheduler.preparing():
                prepared = await anyio.to_thread.run_sync(make, limiter=self.prepare_limiter)
            answer = await self.scheduler.submit(prepared, deadline, admit=False, started=started)
            self.metrics.tokens.labels(answer.mode).inc(answer.usage.completion_tokens)
            return answer

        async def every() -> list[Answer]:
            return list(await asyncio.gather(*(one(m) for m in makers)))

        return await unless_gone(every(), receive)

    async def stream_raw(
        self, make: Callable[[], Prepared], receive: Receive | None = None
    ) -> AsyncIterator[str | Answer]:
        """One raw completion, streamed: text pieces, then the Answer."""
        deadline, started = self.deadline(), time.perf_counter()

        async def first() -> AsyncIterator[str | Answer]:
            with self.scheduler.preparing():
                prepared = await anyio.to_thread.run_sync(make, limiter=self.prepare_limiter)
            return await self.scheduler.stream(prepared, deadline, started=started)

        items = await unless_gone(first(), receive)
        return self._count_tokens(items)

    async def _count_tokens(
        self, items: AsyncIterator[str | Answer], decision: str = ""
    ) -> AsyncIterator[str | Answer]:
        async for item in items:
            if isinstance(item, Answer):
                item.decision = decision or None
                self.metrics.tokens.labels(item.mode).inc(item.usage.completion_tokens)
            yield item

    # --- status ---------------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        name = self.settings.default_index
        indexes = self.pipeline.status()["indexes"]
        version = indexes.get(name)
        models = self.pipeline.models_loaded
        backend = self._backend_out()
        if self.model_error or not models:
            detail = self.model_error or "models are loading"
        elif backend is not None and not backend.reachable:
            detail = backend.detail or "the generation backend is not ready"
        elif version is None:
            detail = self.index_error or f"index {name!r} is not loaded"
        else:
            detail = None
        return {
            "status": "ready" if detail is None else "not ready",
            "models_loaded": models,
            "default_index": name,
            "index_version": version,
            "detail": detail,
            "backend": backend,
            "decisions": self.decision_health(),
        }

    def _backend_out(self) -> BackendOut | None:
        """The generation backend's last health check (None with the local backend)."""
        if not self.remote:
            return None
        engine = self.pipeline.loaded_engine
        health = getattr(engine, "health", None)
        model = getattr(engine, "model_name", None) or self.settings.generator_model or "?"
        if health is None:
            return BackendOut(kind="openai", model=model, reachable=False, detail="not checked yet")
        return BackendOut(
            kind="openai", model=health.model, reachable=health.ok, detail=health.detail
        )

    async def check_backend(self) -> BackendOut | None:
        """Ask the generation backend how it is (a thread: it is an HTTP call); None with
        the local backend or before the models are loaded."""
        engine = self.pipeline.loaded_engine
        check = getattr(engine, "check_backend", None)
        if check is None:
            return None
        await anyio.to_thread.run_sync(check)
        return self._backend_out()

    def decision_health(self) -> dict[str, Any] | None:
        """How many published decisions hold, are stale, or cannot be served (by index).
        A broken decision does not make the service unready: other requests are served."""
        from ragtune.core.decisions import decision_status, list_decisions

        found, unreadable = list_decisions(self.settings)
        if not found and not unreadable:
            return None
        counts = {"ok": 0, "stale": 0, "broken": 0}
        broken = []
        for d in found:
            st = decision_status(self.settings, d, changes=False).status
            counts[st] += 1
            if st == "broken":
                broken.append(d.index)
        for e in unreadable:
            counts["broken"] += 1
            broken.append(Path(e.path).stem if e.path else "?")
        return {**counts, "broken_indexes": sorted(broken)}

    async def try_load_default_index(self) -> None:
        """Load the default index if it exists; an index built after start-up (or rebuilt)
        is picked up here, so readiness follows the disk without a restart."""
        if not self.pipeline.models_loaded:
            return
        name = self.settings.default_index
        if current_version(self.settings, name) is None:
            self.index_error = f"index {name!r} does not exist yet (build it with ragtune index)"
            return
        try:
            await anyio.to_thread.run_sync(self.pipeline.index, name)
            self.index_error = None
        except RagtuneError as e:
            if e.status >= 500:  # e.g. a corrupt manifest: its message names a server file
                log.error("loading index %s: %s", name, e.message)
                self.index_error = f"index {name!r}: {e.title.lower()} (see the server log)"
            else:
                self.index_error = e.message
        except Exception as e:
            self.index_error = f"{type(e).__name__} while loading index {name!r}"
            log.exception("loading index %s failed", name)
