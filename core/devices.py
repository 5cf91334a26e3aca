"""Where torch work runs and in which precision: one answer for the generator, the embedder
and training.

``device = auto`` is CUDA when a GPU is present, else the CPU. On a GPU the generator's
weights are bfloat16 (float16 where the GPU has no bfloat16), and training keeps float32
master weights under bfloat16 autocast; on the CPU everything stays float32, which is both
exact and, without bf16 matrix units, the faster choice. ``dtype`` overrides the choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch


def resolve_device(settings: Settings, local_rank: int | None = None) -> str:
    """The torch device string for this process: ``cpu``, ``cuda`` or ``cuda:N``.

    ``local_rank``: a data-parallel worker's index on its machine; with ``auto`` or ``cuda``
    each worker takes its own GPU (``cuda:<local_rank>``)."""
    import torch

    want = settings.device
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise InvalidInput(
            f"device {want!r} asks for a GPU, but torch sees no CUDA device "
            f"(torch {torch.__version__}); use device = auto or cpu",
            field="device",
        )
    if want.startswith("cuda:"):
        index = int(want.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise InvalidInput(
                f"device {want!r}: there are {torch.cuda.device_count()} CUDA device(s)",
                field="device",
            )
        return want
    return f"cuda:{local_rank}" if local_rank is not None else "cuda"


def model_dtype(settings: Settings, device: str) -> torch.dtype:
    """The generator's weight dtype on ``device``: ``dtype``, or for ``auto`` bfloat16 on a
    GPU (float16 where it lacks bfloat16) and float32 on the CPU."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if settings.dtype != "auto":
        return names[settings.dtype]
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_dtype(settings: Settings, device: str) -> torch.dtype | None:
    """The autocast dtype for training on ``device`` (None: plain float32). Training keeps
    float32 master weights and AdamW states, and runs the forward pass in this dtype."""
    import torch

    dtype = model_dtype(settings, device)
    return None if dtype == torch.float32 else dtype


@contextlib.contextmanager
def autocast(device: str, dtype: Any) -> Iterator[None]:
    """torch.autocast on ``device`` in ``dtype``; nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    import torch

    with torch.autocast(device_type=device.split(":", 1)[0], dtype=dtype):
        yield


__all__ = ["autocast", "autocast_dtype", "model_dtype", "resolve_device"]
