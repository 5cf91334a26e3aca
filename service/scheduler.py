"""The batching scheduler: requests that arrive close together are generated together.

Generation is CPU-bound and the model takes one batch at a time, so one worker thread runs
``pipeline.generate`` while the event loop keeps accepting requests. The loop collects the
requests that arrive within ``batch_window_ms`` of the oldest waiting one (at most
``max_batch_size``), each row with its own adapter (peft ``adapter_names``, LoRAX-style), and
hands the batch to the worker. Requests that arrive while a batch runs wait for the next
one, so under load batches fill up by themselves.

The waiting queue is bounded (``queue_size``): a full queue raises ``Overloaded`` (503 with
Retry-After) instead of piling up. Each request has a deadline (``request_timeout_s``,
504); a request that times out before its batch starts is dropped from the batch.

Streams (SSE) bypass batching: ``pipeline.stream`` runs one request and holds the model
meanwhile, on its own thread; they count against the same queue bound until they start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.errors import Overloaded, RequestTimeout
from core.pipeline import Pipeline, Prepared, QueryRequest
from core.types import Answer

log = logging.getLogger("ragtune.service")


@dataclass
class _Job:
    prepared: Prepared
    future: asyncio.Future[Answer]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def adapter(self) -> str | None:
        return self.prepared.request.adapter


class BatchScheduler:
    """Collects prepared requests into batches and generates them on one worker thread."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        window_ms: float,
        max_batch_size: int,
        queue_size: int,
        timeout_s: float,
        max_adapters_per_batch: int,
        on_batch: Callable[[int, float], None] | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.window_s = window_ms / 1000
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.max_adapters = max_adapters_per_batch
        self.on_batch = on_batch
        self.on_reject = on_reject
        self._waiting: deque[_Job] = deque()
        self._streams_waiting = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-generate")
        self._batch_s = 0.5  # running average of one batch's duration, for Retry-After
        self._free_since = 0.0  # when the worker finished its last batch
        self._preparing = 0  # requests admitted and still retrieving (not yet queued)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="ragtune-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker (graceful shutdown)."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Requests admitted and not yet handed to the model."""
        waiting = sum(1 for j in self._waiting if not j.cancelled)
        return waiting + self._preparing + self._streams_waiting

    def _admit(self) -> None:
        if self._closing:
            raise Overloaded("the service is shutting down")
        if self.depth >= self.queue_size:
            err = Overloaded(f"the request queue is full ({self.queue_size} waiting); retry later")
            # Roughly how long until the queue drains one batch's worth.
            waits = self.depth / max(1, self.max_batch_size) * self._batch_s
            err.retry_after = max(1, math.ceil(waits))  # type: ignore[attr-defined]
            if self.on_reject is not None:
                self.on_reject()
            raise err

    # --- batched answers ------------------------------------------------------------------
    async def submit(
        self, prepared: Prepared, deadline: float | None = None, *, admit: bool = True
    ) -> Answer:
        """Queue one prepared request and wait for its answer (or the deadline).

        ``admit=False`` when the request was admitted already (by ``preparing``)."""
        if admit:
            self._admit()
        if self._wakeup is None or self._task is None or self._task.done():
            raise Overloaded("the service is not accepting requests (starting or stopping)")
        job = _Job(prepared, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._wakeup.set()
        remaining = (deadline or time.monotonic() + self.timeout_s) - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(0.0, remaining))
        except TimeoutError:
            job.cancelled = True
            raise RequestTimeout(
                f"no answer within the request timeout ({self.timeout_s:g} s)"
            ) from None
        except asyncio.CancelledError:  # the client went away
            job.cancelled = True
            raise

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._waiting:
                if self._closing and self._preparing == 0:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill_window()
            batch = self._take()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._generate, [j.prepared for j in batch]
                )
            except BaseException as e:  # executor shut down, loop closing, ...
                results = [e] * len(batch)
            elapsed = time.perf_counter() - t0
            self._free_since = time.monotonic()
            self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
            if self.on_batch is not None:
                self.on_batch(len(batch), elapsed)
            for job, res in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    async def _fill_window(self) -> None:
        """Wait for the batch to fill: up to ``window`` after the oldest waiting request, or
        after the worker came free when requests queued up meanwhile. The second rule lets
        clients whose answers just went out rejoin the next batch instead of leaving it
        half full (closed-loop clients would otherwise settle into alternating part-batches).
        While requests are still retrieving, wait up to 4 windows more for them."""
        assert self._wakeup is not None
        close_at = max(self._waiting[0].enqueued, self._free_since) + self.window_s
        hard_stop = close_at + 4 * self.window_s
        while len(self._waiting) < self.max_batch_size and not self._closing:
            now = time.monotonic()
            if now >= hard_stop or (now >= close_at and self._preparing == 0):
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wakeup.wait(), (close_at if now < close_at else hard_stop) - now
                )

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Mark a request as admitted and retrieving; the batch window waits for it."""
        self._admit()
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    def _drop_cancelled(self) -> None:
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft()

    def _take(self) -> list[_Job]:
        """Oldest first, up to max_batch_size rows and at most max_adapters distinct adapters
        (more would evict adapters that the same batch needs); the rest wait their turn."""
        batch: list[_Job] = []
        adapters: set[str] = set()
        keep: deque[_Job] = deque()
        while self._waiting:
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            full = len(batch) >= self.max_batch_size
            new_adapter = job.adapter is not None and job.adapter not in adapters
            if full or (new_adapter and len(adapters) >= self.max_adapters):
                keep.append(job)
                continue
            if job.adapter is not None:
                adapters.add(job.adapter)
            batch.append(job)
        self._waiting = keep
        return batch

    def _generate(self, prepared: Sequence[Prepared]) -> list[Answer | BaseException]:
        """Runs on the worker thread. A failing batch is retried row by row, so one bad
        request (an adapter deleted meanwhile, say) fails alone."""
        try:
            return list(self.pipeline.generate(prepared))
        except Exception as e:
            if len(prepared) == 1:
                return [e]
            log.warning("batch of %d failed (%s); retrying row by row", len(prepared), e)
        out: list[Answer | BaseException] = []
        for p in prepared:
            try:
                out.append(self.pipeline.generate([p])[0])
            except Exception as e:
                out.append(e)
        return out

    # --- streams --------------------------------------------------------------------------
    async def stream(
        self, request: QueryRequest, deadline: float | None = None
    ) -> AsyncIterator[str | Answer]:
        """Run ``pipeline.stream`` on its own thread and relay its items.

        The first item is awaited before this returns, so errors (unknown index, timeout
        before the first token) surface as statuses rather than inside a started stream.
        The thread always runs the generator to its end, even if the client leaves: closing
        it early would release the model lock while generation still runs.
        """
        self._admit()
        deadline = deadline or time.monotonic() + self.timeout_s
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._streams_waiting += 1

        def put(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def work() -> None:
            try:
                for item in self.pipeline.stream(request):
                    put("item", item)
            except BaseException as e:
                put("error", e)
            finally:
                put("end", None)

        threading.Thread(target=work, name="ragtune-stream", daemon=True).start()

        async def next_item() -> tuple[str, Any]:
            left = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(queue.get(), max(0.0, left))
            except TimeoutError:
                raise RequestTimeout(
                    f"no answer within the request timeout ({self.timeout_s:g} s)"
                ) from None

        try:
            kind, item = await next_item()
        finally:
            self._streams_waiting -= 1
        if kind == "error":
            raise item

        async def relay() -> AsyncIterator[str | Answer]:
            nonlocal kind, item
            while kind != "end":
                if kind == "error":
                    raise item
                yield item
                kind, item = await next_item()

        return relay()
