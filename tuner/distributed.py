"""Data-parallel training: one adapter trained by N processes with torch DDP or FSDP2 (gloo
on the CPU, NCCL on GPUs), launched by torchrun (``torch.distributed.run``; ``ragtune tune
--nproc N`` runs it for one machine).

Two strategies (``TuneArgs.strategy``):

- ``ddp``: every rank holds the whole model; gradients are all-reduced (``no_sync`` on the
  micro-batches before a step's last).
- ``fsdp``: torch's FSDP2 (``fully_shard``) shards every parameter, frozen base weights and
  LoRA alike, over the ranks: each decoder layer is one unit (gathered for its forward and
  backward, freed after), then the root. Gradients are reduce-scattered on the last
  micro-batch only (``set_requires_gradient_sync``). Whatever reads or writes the trainable
  weights (checkpoints, best weights, the final save) goes through ``full_trainable`` /
  ``load_full_trainable`` and the optimizer's ``full_optimizer_state`` /
  ``load_full_optimizer_state``: collectives that every rank calls, with rank 0 alone
  holding the full tensors (and writing them). The files have the layout a single process
  or DDP writes (the optimizer state by parameter index).

Each optimizer step's examples are the same as in a one-process run (the data order
depends only on the seed and the epoch); rank ``r`` takes every N-th of them, in
micro-batches of ``batch_size``. Its summed token loss is divided by the whole step's
response tokens and multiplied by N (DDP averages gradients over the ranks), so the
gradient is the one-process gradient, up to the order of float additions. Every rank runs
the same number of micro-batches (DDP synchronizes once per step, on the last one); a rank
with fewer examples runs a padding micro-batch with its loss multiplied by 0.

Only rank 0 writes: the checkpoints, the best weights, and the registry entry at the end
(under DDP the others read the checkpoint to resume; under FSDP rank 0 reads it and
broadcasts). A killed rank takes the job down (torchrun ends the
others); the registry never sees a partial adapter, and the next run resumes from the last
checkpoint.

``Parallel()`` (one process) does nothing at all, so the training loop reads the same either
way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# torchrun's environment protocol: what each worker is told about itself.
RANK, WORLD_SIZE, LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"
STRATEGIES = ("ddp", "fsdp")


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
    strategy: str = "ddp"  # or "fsdp" (STRATEGIES)
    _ready: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], strategy: str = "ddp") -> Parallel:
        """Read torchrun's variables; without them, one process."""
        if WORLD_SIZE not in environ:
            return cls(strategy=strategy)
        return cls(
            rank=int(environ.get(RANK, "0")),
            world=int(environ[WORLD_SIZE]),
            local_rank=int(environ.get(LOCAL_RANK, "0")),
            strategy=strategy,
        )

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """The model's parameters are split over the ranks (FSDP): its forward pass, and
        every read or write of its weights, is a collective that all ranks must call."""
        return self.strategy == "fsdp" and self.active

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

    @contextlib.contextmanager
    def naming_lost_peers(self) -> Iterator[None]:
        """A collective that fails because another rank went away (gloo's "Connection
        reset by peer", say) becomes one clear ``PeerLost`` naming this rank."""
        try:
            yield
        except RuntimeError as e:
            if not (self.active and lost_peer(e)):
                raise
            from ragtune.core.errors import PeerLost

            said = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PeerLost(
                f"rank {self.rank}: lost contact with another training process, which "
                f"stopped or was killed ({said})"
            ) from e

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
        (rank 0's weights are broadcast to the others here); under FSDP the model itself,
        sharded in place (build the optimizer after this: its parameters are new)."""
        if not self._ready:
            return model
        if self.sharded:
            return shard(model, device, self.world)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def accumulating(self, forward_model: Any, last: bool) -> Iterator[None]:
        """Around a micro-batch: gradients are synchronized on the step's last one only."""
        if self.sharded:
            forward_model.set_requires_gradient_sync(last)
            yield
        elif self._ready and not last:
            with forward_model.no_sync():
                yield
        else:
            yield

    @property
    def loss_scale(self) -> int:
        """DDP and FSDP average the ranks' gradients; the loss is scaled up so that they add."""
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

    def batches_each(self, n_items: int, batch_size: int) -> int:
        """How many batches of its ``share`` the busiest rank runs (a sharded forward pass is
        a collective: every rank must run as many)."""
        most = -(-n_items // self.world) if self.active else n_items
        return -(-most // batch_size)

    # --- the trainable weights, whole (collectives under FSDP) -----------------------------
    def full_trainable(self, model: Any) -> dict[str, Any] | None:
        """The trainable weights, whole, on the CPU, keyed by parameter name: on rank 0 (None
        on the others, which must call this too under FSDP)."""
        if not self.sharded:
            return trainable_state(model) if self.is_writer else None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full: dict[str, Any] = get_model_state_dict(
            model, options=_full_options(ignore_frozen=True)
        )
        return {k: v.contiguous() for k, v in full.items()} if self.is_writer else None

    def load_full_trainable(self, model: Any, read: Callable[[], dict[str, Any]]) -> None:
        """Put whole trainable weights into the model: ``read()`` gives them (by name). Under
        FSDP rank 0 alone reads them and broadcasts; each rank keeps its shard."""
        if not self.sharded:
            copy_into(model, read())
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        full = read() if self.is_writer else {}
        set_model_state_dict(model, full, options=_full_options(ignore_frozen=True, load=True))

    def full_optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer's state, whole, in ``optimizer.state_dict()``'s own layout
        (parameters by index): on rank 0, None on the others (which call it too)."""
        if not self.sharded:
            return optimizer.state_dict() if self.is_writer else None
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=_full_options())
        return _by_index(full, trainable_names(model)) if self.is_writer else None

    def load_full_optimizer_state(
        self, model: Any, optimizer: Any, read: Callable[[], dict[str, Any]]
    ) -> None:
        """Restore the optimizer from ``read()`` (``full_optimizer_state``'s layout)."""
        if not self.sharded:
            optimizer.load_state_dict(read())
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        full = _by_name(read(), trainable_names(model)) if self.is_writer else {}
        set_optimizer_state_dict(model, optimizer, full, options=_full_options(load=True))


# What the process group's transports say when the other end of a connection is gone.
_PEER_GONE = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "remote process exited",  # NCCL
)


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank went away."""
    import torch.distributed as dist

    if isinstance(err, dist.DistNetworkError):
        return True
    if not isinstance(err, RuntimeError):  # what the transports raise
        return False
    text = str(err).lower()
    return any(marker in text for marker in _PEER_GONE)


def trainable_names(model: Any) -> list[str]:
    """The trainable parameters' names, in the optimizer's order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: Any) -> dict[str, Any]:
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def copy_into(model: Any, weights: Mapping[str, Any]) -> None:
    """Copy whole weights (by name) into an unsharded model's parameters."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device))


def _full_options(ignore_frozen: bool = False, load: bool = False) -> Any:
    """Whole tensors, gathered to rank 0's CPU (saving) or broadcast from it (loading)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(
        full_state_dict=True,
        cpu_offload=not load,
        broadcast_from_rank0=load,
        ignore_frozen_params=ignore_frozen,
        strict=not ignore_frozen,
    )


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch.distributed.checkpoint's optimizer state (parameters by name) in the layout of
    ``optimizer.state_dict()`` (by position), which single-process and DDP checkpoints use."""
    pos = {n: i for i, n in enumerate(names)}
    return {
        "state": {pos[n]: v for n, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [pos[n] for n in g["params"]]} for g in state["param_groups"]
        ],
    }


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }


def shard(model: Any, device: str, world: int) -> Any:
    """FSDP2 in place: each decoder layer its own unit, then the root (embeddings, final norm,
    LM head). The layers are the model's ``_no_split_modules`` classes (what transformers
    names for any causal LM), else the blocks of its largest ModuleList. Rank 0's trainable
    weights are broadcast first, so every rank shards the same tensors. A model on the CPU
    with a GPU ``device`` keeps only its shards, moved there by ``fully_shard``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)
    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks of a transformer, in order."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [list(m) for m in base.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(base).__name__}: no decoder layers to shard")
    return max(lists, key=len)


__all__ = ["STRATEGIES", "MicroBatch", "Parallel"]
