"""Blocking work that may run torch kernels, off the event loop, on a thread that ends with it.

libgomp, the OpenMP runtime of torch's CPU kernels, gives every thread that opens a parallel
region a pool of worker threads of its own, kept until that thread exits. Once it manages
more threads than there are CPUs, it cuts every pool's spin-wait to almost nothing, so the
generation thread's workers fall asleep and wake up around each of a forward pass's
hundreds of kernels. An anyio worker thread that once embedded a query (retrieval) or loaded
a model keeps such a pool for as long as anyio keeps the thread, and on 2 cores that made
every prefill 15-30% slower than the same prefill in a process with one torch thread
(`bench/bench_ttft.py --only-own-threads`, bench/results/ttft.txt). So the service runs that
work on a thread of its own that exits when the call returns, taking its pool with it: the
generation thread keeps the only lasting one.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread, joined before returning (its error re-raised here)."""
    done: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            done.append((True, context.run(fn, *args)))
        except BaseException as e:  # handed to the caller, which raises it
            done.append((False, e))

    worker = threading.Thread(target=target, name="ragtune-torch-call", daemon=True)
    worker.start()
    worker.join()
    ok, value = done[0]
    if not ok:
        raise value
    return value


async def run_sync(
    fn: Callable[..., T],
    *args: Any,
    limiter: anyio.CapacityLimiter | None = None,
    abandon_on_cancel: bool = False,
) -> T:
    """``anyio.to_thread.run_sync`` (its limiter and cancellation), with ``fn`` itself on a
    thread that does not outlive the call."""
    return await anyio.to_thread.run_sync(
        functools.partial(in_own_thread, fn, *args),
        limiter=limiter,
        abandon_on_cancel=abandon_on_cancel,
    )


__all__ = ["in_own_thread", "run_sync"]
