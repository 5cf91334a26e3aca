"""Process memory: stop glibc from keeping freed tensor memory.

PyTorch's CPU allocator takes every tensor from malloc. glibc serves a block from mmap (and
gives it back to the system on free) only above its mmap threshold, and it raises that
threshold, up to 32 MB, whenever such a block is freed: after the first large tensor is
freed, tensors up to 32 MB come from the heap, and the heap keeps what is freed there. A
LoRA training step allocates and frees gigabytes of activations of many sizes, so the heap
grows to the sum of their peaks and never shrinks. A fixed threshold turns the dynamic
adjustment off: tensors above it are mapped and unmapped each time, and RSS follows what is
live. Measured on SmolLM2-135M (bench/bench_memory.py, bench/results/memory.txt): two LoRA
steps on 4 x 460 tokens peak at 5.2-5.9 GB RSS with glibc's default, 3.2 GB with 1 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
_applied: int | None = None


def set_mmap_threshold(kib: int) -> bool:
    """Fix glibc's mmap threshold at ``kib`` KiB (0: leave glibc's dynamic default). Returns
    whether it was set; a C library other than glibc is left alone."""
    global _applied
    if kib <= 0 or _applied == kib:
        return _applied == kib and kib > 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    if mallopt(M_MMAP_THRESHOLD, kib * 1024) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d KiB) was refused", kib)
        return False
    _applied = kib
    return True
