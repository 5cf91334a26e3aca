"""The continuous-batching scheduler: requests join the running batch between decode steps.

Generation is CPU-bound, so one worker thread owns the decode loop (a
``core.generation.ContinuousBatch``; with a generation server, ``core.remote.RemoteBatch``,
whose rows are requests in flight to it) while the event loop keeps accepting requests. Before
every step the worker lets waiting requests join the running rows (oldest first, up to
``max_batch_size`` rows and ``max_adapters_per_batch`` distinct adapters: more would evict
adapters that running rows need); each row uses its own adapter (peft ``adapter_names``,
LoRAX-style), and a row leaves as soon as its answer is done. So a request that arrives
while others are generating starts at the next step instead of waiting for the whole batch,
and a short answer frees its slot at once. When nothing runs, the worker waits
``batch_window_ms`` after the first request, so that a burst's short prompts are prefilled
together (``prefill_batch_tokens`` positions a pass); a prompt over half that budget, which
no other prompt could share a pass with, does not wait.

The waiting queue is bounded (``queue_size``): a full queue raises ``Overloaded`` (503 with
Retry-After) instead of piling up. Each request has a deadline (``request_timeout_s``, 504);
a request that times out, or whose client goes away, leaves the batch at the next step (a
long prompt is prefilled in chunks, so that is within one chunk), and its cache is freed.
Streams (SSE) are rows like the others, with a callback that relays each piece of text as
it is decoded.

``drain(grace_s)`` (on SIGTERM) refuses new requests at once and gives those admitted
``grace_s`` to finish; whatever still runs then gets 503 and leaves the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ragtune.core.decode import Row
from ragtune.core.engines import Batch
from ragtune.core.errors import Overloaded, RequestTimeout
from ragtune.core.pipeline import Pipeline, Prepared
from ragtune.core.types import Answer, GenResult

log = logging.getLogger("ragtune.service")


@dataclass(eq=False)
class _Job:
    """One request waiting for, or in, the batch. Callbacks run on the worker thread."""

    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    started: float  # perf_counter when the request came in (for total_ms)
    future: asyncio.Future[Answer] | None = None  # a plain request
    items: asyncio.Queue[tuple[str, Any]] | None = None  # a stream
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def fail(self, err: BaseException) -> None:
        """Give up on this request with ``err`` (its row leaves at the next step)."""
        self.cancelled = True
        self.deliver("error", err)

    @property
    def adapter(self) -> str | None:
        return self.prepared.request.adapter

    def deliver(self, kind: str, item: Any) -> None:
        """Hand an item to the event loop (a no-op once the loop is gone)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._put, kind, item)

    def _put(self, kind: str, item: Any) -> None:
        if self.items is not None:
            self.items.put_nowait((kind, item))
        elif self.future is not None and not self.future.done():
            if kind == "error":
                self.future.set_exception(item)
            else:
                self.future.set_result(item)


class BatchScheduler:
    """Feeds prepared requests into one continuous batch on one worker thread."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        window_ms: float,
        max_batch_size: int,
        queue_size: int,
        timeout_s: float,
        max_adapters_per_batch: int,
        pass_tokens: int = 0,
        on_step: Callable[[int, float], None] | None = None,
        on_join: Callable[[int], None] | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.window_s = window_ms / 1000
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.max_adapters = max_adapters_per_batch
        self.pass_tokens = pass_tokens  # prefill_batch_tokens (0: every request waits)
        self.on_step = on_step
        self.on_join = on_join
        self.on_reject = on_reject
        self._pending: deque[_Job] = deque()  # guarded by _cond
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._preparing = 0  # admitted and still retrieving (event loop only)
        self._answer_s = 2.0  # running average of one answer's generation time
        self._running: set[_Job] = set()  # in the batch (worker thread only)
        self._drain_at: float | None = None  # monotonic time when running work is cut
        # What the batch holds, for /metrics (written by the worker after every step).
        self.rows = 0
        self.prefilling = 0
        self.cache_bytes = 0
        self.prefilled_tokens = 0  # a counter over the server's life, across batches
        self._prefilled_before = 0  # what the batches before the current one prefilled

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="ragtune-generate", daemon=True)
        self._thread.start()

    def drain(self, grace_s: float) -> None:
        """Begin a shutdown: refuse new requests now, and cut the admitted ones that are
        not done within ``grace_s`` (503). Safe to call from a signal handler: it only sets
        two fields, which the worker reads before every step."""
        self._closing = True
        self._drain_at = time.monotonic() + grace_s

    async def stop(self) -> None:
        """Finish every admitted request, then stop the worker (graceful shutdown)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        while self._preparing:  # requests still retrieving will queue in a moment
            await asyncio.sleep(0.01)
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def depth(self) -> int:
        """Requests admitted and not yet generating."""
        with self._cond:
            waiting = sum(1 for j in self._pending if not j.cancelled)
        return waiting + self._preparing

    def _admit(self) -> None:
        if self._closing:
            raise Overloaded("the service is shutting down")
        if self.depth >= self.queue_size:
            err = Overloaded(f"the request queue is full ({self.queue_size} waiting); retry later")
            # Roughly how long until the queue drains one batch's worth.
            waits = self.depth / max(1, self.max_batch_size) * self._answer_s
            err.retry_after = max(1, math.ceil(waits))  # type: ignore[attr-defined]
            if self.on_reject is not None:
                self.on_reject()
            raise err

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Admit a request while it is retrieving (it counts against the queue bound)."""
        self._admit()
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            with self._cond:  # a worker waiting for this request to queue looks again
                self._cond.notify()

    def _enqueue(self, job: _Job) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise Overloaded("the service is not accepting requests (starting or stopping)")
        with self._cond:
            self._pending.append(job)
            self._cond.notify()

    # --- the two ways in ------------------------------------------------------------------
    async def submit(
        self,
        prepared: Prepared,
        deadline: float | None = None,
        *,
        admit: bool = True,
        started: float | None = None,
    ) -> Answer:
        """Queue one prepared request and wait for its answer (or the deadline).

        ``admit=False`` when the request was admitted already (by ``preparing``)."""
        if admit:
            self._admit()
        loop = asyncio.get_running_loop()
        job = _Job(prepared, loop, started or time.perf_counter(), future=loop.create_future())
        self._enqueue(job)
        assert job.future is not None
        remaining = (deadline or time.monotonic() + self.timeout_s) - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(0.0, remaining))
        except TimeoutError:
            job.cancelled = True
            raise self._timeout() from None
        except asyncio.CancelledError:  # the client went away
            job.cancelled = True
            raise

    async def stream(
        self, prepared: Prepared, deadline: float | None = None, *, started: float | None = None
    ) -> AsyncIterator[str | Answer]:
        """Text pieces as they are decoded, then the Answer. The first item is awaited
        before this returns, so errors before the first token surface as statuses."""
        loop = asyncio.get_running_loop()
        job = _Job(prepared, loop, started or time.perf_counter(), items=asyncio.Queue())
        self._enqueue(job)
        deadline = deadline or time.monotonic() + self.timeout_s
        assert job.items is not None
        items = job.items

        async def next_item() -> tuple[str, Any]:
            try:
                return await asyncio.wait_for(items.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                job.cancelled = True
                raise self._timeout() from None

        try:
            kind, item = await next_item()
        except BaseException:
            job.cancelled = True
            raise
        if kind == "error":
            raise item

        async def relay() -> AsyncIterator[str | Answer]:
            nonlocal kind, item
            try:
                while kind != "end":
                    if kind == "error":
                        raise item
                    yield item
                    kind, item = await next_item()
            finally:
                job.cancelled = True  # a client that left mid-stream frees its row

        return relay()

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(f"no answer within the request timeout ({self.timeout_s:g} s)")

    # --- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug: say so, and fail what waits rather than hang it
            log.exception("the generation worker stopped")
            with self._cond:
                jobs, self._pending = list(self._pending), deque()
            for job in jobs:
                job.deliver("error", RuntimeError("the generation worker stopped"))

    def _loop(self) -> None:
        batch: Batch | None = None
        while True:
            with self._cond:
                if not self._wait_for_work(len(batch) if batch else 0):
                    return
                self._cut_if_draining()
                new = self._take(batch)
            if new:
                if not batch:  # none yet, or the last one ran empty: a new one
                    try:
                        fresh = self.pipeline.engine.batch()
                    except Exception as e:  # the models failed to load: fail these requests
                        for job in new:
                            job.deliver("error", e)
                        continue
                    if batch is not None:  # its count stays counted
                        self._prefilled_before += batch.prefilled_tokens
                    batch = fresh
                self._running.update(new)
                batch.add([self._row(job) for job in new])
                if self.on_join is not None:
                    self.on_join(len(new))
            if batch is not None and len(batch):
                rows, t0 = len(batch) - batch.prefilling, time.perf_counter()
                batch.step()
                if self.on_step is not None and rows:
                    self.on_step(rows, time.perf_counter() - t0)
            self._observe(batch)

    def _observe(self, batch: Batch | None) -> None:
        self._running = {j for j in self._running if not j.cancelled}
        self.rows = len(batch) if batch else 0
        self.prefilling = batch.prefilling if batch else 0
        self.cache_bytes = batch.cache_bytes() if batch else 0
        # ``batch is not None``: an empty batch is falsy, and its count must not read as 0
        done = batch.prefilled_tokens if batch is not None else 0
        self.prefilled_tokens = self._prefilled_before + done

    def _cut_if_draining(self) -> None:
        """Under the lock: past the drain deadline, everything admitted gets 503."""
        if self._drain_at is None or time.monotonic() < self._drain_at:
            return
        err = Overloaded("the service is shutting down; retry on another instance")
        err.retry_after = 1  # type: ignore[attr-defined]
        for job in [*self._pending, *self._running]:
            if not job.cancelled:
                job.fail(err)
        self._pending.clear()

    def _wait_for_work(self, running: int) -> bool:
        """Under the lock: wait until there is something to do; False means stop.

        With nothing running, wait up to the batch window for a burst to arrive whole, and
        up to four windows more while admitted requests are still being prepared: short
        prompts prefilled in one pass cost far less than one by one (the batch then splits
        longer ones into passes of their own: ``prefill_batch_tokens``)."""
        while True:
            self._drop_cancelled()
            if running or self._pending:
                break
            if self._closing and not self._preparing:  # retrieving requests will queue soon
                return False
            # While draining, wake up by the deadline to cut what is still retrieving.
            self._cond.wait(None if self._drain_at is None else 0.1)
        if not running and not self._fills_a_pass(self._pending[0]):
            close_at = self._pending[0].enqueued + self.window_s
            hard_stop = close_at + 4 * self.window_s
            while len(self._pending) < self.max_batch_size and not self._closing:
                now = time.monotonic()
                if now >= hard_stop or (now >= close_at and not self._preparing):
                    break
                self._cond.wait((close_at if now < close_at else hard_stop) - now)
            self._drop_cancelled()
        return True

    def _fills_a_pass(self, job: _Job) -> bool:
        """Whether ``job``'s prompt is over half of a prefill pass: no other prompt could
        share its pass, so waiting for a burst would only delay it."""
        tokens = job.prepared.prompt_tokens
        return bool(self.pass_tokens) and tokens is not None and 2 * tokens > self.pass_tokens

    def _drop_cancelled(self) -> None:
        self._pending = deque(j for j in self._pending if not j.cancelled)

    def _take(self, batch: Batch | None) -> list[_Job]:
        """Oldest first: the requests that fit beside the running rows (row and adapter
        limits); the rest keep their place in the queue."""
        room = self.max_batch_size - (len(batch) if batch else 0)
        adapters = set(batch.adapters) if batch else set()
        taken: list[_Job] = []
        keep: deque[_Job] = deque()
        for job in self._pending:
            new_adapter = job.adapter is not None and job.adapter not in adapters
            if len(taken) >= room or (new_adapter and len(adapters) >= self.max_adapters):
                keep.append(job)
                continue
            if job.adapter is not None:
                adapters.add(job.adapter)
            taken.append(job)
        self._pending = keep
        return taken

    def _row(self, job: _Job) -> Row:
        def done(result: GenResult | BaseException) -> None:
            self._running.discard(job)
            if isinstance(result, BaseException):
                job.deliver("error", result)
                return
            self._answer_s = 0.8 * self._answer_s + 0.2 * result.generate_ms / 1000
            job.deliver("item", self.pipeline.finish(job.prepared, result, job.started))
            if job.items is not None:
                job.deliver("end", None)

        def text(piece: str) -> None:
            job.deliver("item", piece)

        return Row(
            self.pipeline.gen_request(job.prepared),
            done,
            on_text=text if job.items is not None else None,
            is_cancelled=lambda: job.cancelled,
        )
