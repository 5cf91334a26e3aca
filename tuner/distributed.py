"""Data-parallel training: one adapter trained by N processes with torch DDP (gloo on the CPU,
NCCL on GPUs), launched by torchrun (``torch.distributed.run``; ``ragtune tune --nproc N``
runs it for one machine).

Each optimizer step's examples are the same as in a one-process run (the data order
depends only on the seed and the epoch); rank ``r`` takes every N-th of them, in
micro-batches of ``batch_size``. Its summed token loss is divided by the whole step's
response tokens and multiplied by N (DDP averages gradients over the ranks), so the
gradient is the one-process gradient, up to the order of float additions. Every rank runs
the same number of micro-batches (DDP synchronizes once per step, on the last one); a rank
with fewer examples runs a padding micro-batch with its loss multiplied by 0.

Only rank 0 writes: the checkpoints, the best weights, and the registry entry at the end
(others read the checkpoint to resume). A killed rank takes the job down (torchrun ends the
others); the registry never sees a partial adapter, and the next run resumes from the last
checkpoint.

``Parallel()`` (one process) does nothing at all, so the training loop reads the same either
way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# torchrun's environment protocol: what each worker is told about itself.
RANK, WORLD_SIZE, LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"


@dataclass(frozen=True)
class MicroBatch:
    examples: Sequence[Any]  # train.Encoded
    padding: bool = False  # a stand-in that keeps the ranks' step counts equal (loss x 0)


@dataclass
class Parallel:
    """This process's place in a data-parallel job (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _ready: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Parallel:
        """Read torchrun's variables; without them, one process."""
        if WORLD_SIZE not in environ:
            return cls()
        return cls(
            rank=int(environ.get(RANK, "0")),
            world=int(environ[WORLD_SIZE]),
            local_rank=int(environ.get(LOCAL_RANK, "0")),
        )

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints and the registry; the others only compute."""
        return self.rank == 0

    # --- the process group --------------------------------------------------------------
    def start(self, device: str) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU."""
        if not self.active or self._ready:
            return
        import torch
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)
        self._ready = True
        log.info("rank %d of %d joined (%s)", self.rank, self.world, backend)

    def stop(self) -> None:
        if self._ready:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._ready = False

    def barrier(self) -> None:
        if self._ready:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: T | None) -> T:
        """Rank 0's ``obj`` on every rank (pickled; for the prepared data, once)."""
        if not self._ready:
            assert obj is not None
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def sum(self, *values: float) -> list[float]:
        """The sums of ``values`` over the ranks (float64)."""
        if not self._ready:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    # --- the model ----------------------------------------------------------------------
    def wrap(self, model: Any, device: str) -> Any:
        """The model that runs the training forward pass: DDP around it when data-parallel
        (rank 0's weights are broadcast to the others here)."""
        if not self._ready:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def accumulating(self, forward_model: Any, last: bool) -> Iterator[None]:
        """Around a micro-batch: gradients are synchronized on the step's last one only."""
        if self._ready and not last:
            with forward_model.no_sync():
                yield
        else:
            yield

    @property
    def loss_scale(self) -> int:
        """DDP averages the ranks' gradients; the loss is scaled up so that they add."""
        return self.world if self._ready else 1

    # --- the data -----------------------------------------------------------------------
    def micro_batches(self, chunk: Sequence[T], batch_size: int) -> list[MicroBatch]:
        """This rank's share of one optimizer step, in micro-batches; every rank gets the
        same number (padding ones where it has fewer examples)."""
        if not self.active:
            return [MicroBatch(chunk[i : i + batch_size]) for i in range(0, len(chunk), batch_size)]
        mine = list(chunk[self.rank :: self.world])
        most = -(-len(chunk) // self.world)  # the largest share
        count = -(-most // batch_size)
        out = [MicroBatch(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)]
        while len(out) < count:
            out.append(MicroBatch(chunk[:1], padding=True))
        return out

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a list (validation examples)."""
        return list(items[self.rank :: self.world]) if self.active else list(items)


__all__ = ["MicroBatch", "Parallel"]
