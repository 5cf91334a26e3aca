"""The training loop: plain PyTorch, readable top to bottom.

Arithmetic of one optimizer step: ``grad_accum`` micro-batches of ``batch_size`` examples;
e.g. 4 examples x 2 micro-batches x ~500 tokens = ~4k tokens per step (~40 s on 2 CPU cores
for SmolLM2-135M with LoRA). Choices that matter:

- Loss only on the response: prompt positions are labelled -100. Examples are padded on the
  left, so every response ends at the last position and the LM head runs only on the last
  ``longest response + 1`` positions (``logits_to_keep``): a 49k-word vocabulary times every
  prompt token is most of the memory and a good share of the time otherwise.
- The loss of a step is the sum of token losses over all its micro-batches divided by the
  number of response tokens in the step, so gradient accumulation equals a big batch.
- The data order of epoch ``e`` depends only on (seed, e), so a run resumed at step ``s``
  sees exactly the batches an uninterrupted run would have; the checkpoint restores the
  weights, the optimizer, the scheduler and the torch RNG (dropout).
- Validation: mean response-token loss on held-out examples each epoch (or every N steps);
  the best weights are kept on disk and restored at the end; optional early stopping.

``train_loop`` reads top to bottom: plan the steps (``StepPlan``), set up the optimizer
(``_setup``), resume from the checkpoint, then per step: ``train_step`` -> ``_validate`` ->
``save_checkpoint``; at the end ``_finish`` restores the best weights.

Data-parallel runs (``tuner.distributed``, under torchrun) go through the same loop: each
rank takes its share of a step's micro-batches and of the validation set, the sums are
added over the ranks, and rank 0 alone writes checkpoints. On a GPU the forward pass runs
under bfloat16 autocast (``autocast``), with float32 weights and optimizer states.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.atomic import replace_dir, staging_dir, write_json_atomic
from ragtune.core.devices import autocast
from ragtune.tuner.args import TuneArgs
from ragtune.tuner.distributed import Parallel

log = logging.getLogger(__name__)

LAST = "last"  # resumable checkpoint (weights + optimizer + scheduler + RNG + state)
BEST = "best"  # weights with the best validation loss so far
RUN_FILE = "run.json"
WEIGHTS = "trainable.safetensors"


@dataclass(frozen=True)
class Encoded:
    """A tokenized example: prompt tokens followed by response tokens."""

    input_ids: list[int]
    n_prompt: int
    dataset: int = 0

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.n_prompt


def encode(tokenizer: Any, prompt: str, completion: str, dataset: int = 0) -> Encoded:
    """Tokenize prompt and completion separately: the prompt tokens are exactly the ones the
    server feeds (``core.prompts.render_prompt`` tokenized alone), never merged across the
    boundary. The chat template already holds the special tokens, so none are added."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return Encoded(list(p) + list(c), len(p), dataset)


def collate(batch: Sequence[Encoded], pad_id: int, full_logits: bool = False) -> dict[str, Any]:
    """Left-pad a micro-batch; labels are -100 on prompt and padding."""
    import torch

    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        off = T - len(e.input_ids)
        ids[i, off:] = torch.tensor(e.input_ids)
        mask[i, off:] = 1
        labels[i, off + e.n_prompt :] = ids[i, off + e.n_prompt :]
    # positions count real tokens only, so a left-padded row sees the positions it would alone
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = T if full_logits else max(e.n_target for e in batch) + 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "labels": labels,
        "keep": min(keep, T),
        "n_tokens": int(mask.sum()),
        "n_target": sum(e.n_target for e in batch),
    }


def supports_logits_to_keep(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def loss_sum(model: Any, b: dict[str, Any], device: Any) -> Any:
    """Summed cross-entropy over the response tokens of a micro-batch (a 0-d tensor)."""
    import torch.nn.functional as F

    keep = b["keep"]
    T = b["input_ids"].shape[1]
    kwargs = {"logits_to_keep": keep} if keep < T else {}
    out = model(
        input_ids=b["input_ids"].to(device),
        attention_mask=b["attention_mask"].to(device),
        position_ids=b["position_ids"].to(device),
        **kwargs,
    )
    logits = out.logits[:, -keep:][:, :-1]  # [B, keep-1, V]: predicts positions T-keep+1 .. T-1
    labels = b["labels"][:, T - keep + 1 :].to(device)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def evaluate(
    model: Any,
    data: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    device: Any,
    full_logits: bool = False,
    parallel: Parallel | None = None,
    amp: Any = None,
) -> float:
    """Mean response-token loss over ``data`` (each rank its share, summed over the ranks;
    ``amp``: the autocast dtype, None for float32)."""
    import torch

    par = parallel or Parallel()
    mine = par.share(data)
    # a sharded forward pass is a collective: a rank with fewer batches runs padding ones
    count = par.batches_each(len(data), batch_size) if par.sharded else None
    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad(), autocast(str(device), amp):
        for k in range(count if count is not None else -(-len(mine) // batch_size)):
            part = mine[k * batch_size : (k + 1) * batch_size]
            b = collate(part or data[:1], pad_id, full_logits)
            loss = float(loss_sum(model, b, device))
            if part:
                nll += loss
                n += b["n_target"]
    if was_training:
        model.train()
    nll, total = par.sum(nll, float(n))
    return nll / max(total, 1)


def epoch_order(
    datasets: Sequence[int], weights: dict[int, float], seed: int, epoch: int
) -> list[int]:
    """Example indices for one epoch: dataset ``d`` contributes ``weight_d x its size``
    examples (whole repeats plus a seeded sample for the fraction), then all are shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_ds: dict[int, list[int]] = {}
    for i, d in enumerate(datasets):
        by_ds.setdefault(d, []).append(i)
    order: list[int] = []
    for d in sorted(by_ds):
        idx, w = by_ds[d], weights.get(d, 1.0)
        order += idx * int(w)
        frac = round((w - int(w)) * len(idx))
        if frac:
            order += rng.sample(idx, frac)
    rng.shuffle(order)
    return order


def epoch_size(datasets: Sequence[int], weights: dict[int, float]) -> int:
    return len(epoch_order(datasets, weights, 0, 0))


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return f


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class TrainState:
    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    tokens: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    state: TrainState
    total_steps: int
    steps_per_epoch: int
    train_loss: float | None  # mean response-token loss over the last logged span
    val_loss: float | None  # of the returned weights (the best ones when validating)
    resumed_from: int | None

    @property
    def tokens_per_s(self) -> float:
        s = self.state
        return round(s.tokens / s.train_seconds, 2) if s.train_seconds else 0.0


# ---- checkpoints ---------------------------------------------------------------------------


def load_trainable(model: Any, path: Path, parallel: Parallel | None = None) -> None:
    """Put the weights saved at ``path`` into the trainable parameters (under FSDP every rank
    calls this: rank 0 reads the file and broadcasts)."""
    from safetensors.torch import load_file

    (parallel or Parallel()).load_full_trainable(model, lambda: load_file(str(path)))


def save_weights(model: Any, folder: Path, parent: Path, parallel: Parallel | None = None) -> None:
    """The trainable weights into ``folder`` (replaced atomically); rank 0 writes, and under
    FSDP every rank calls this to gather them."""
    from safetensors.torch import save_file

    par = parallel or Parallel()
    weights = par.full_trainable(model)
    if weights is None:  # not the writer
        return
    with staging_dir(parent, folder.name + "-") as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        replace_dir(tmp, folder)


def save_checkpoint(
    workdir: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    parallel: Parallel | None = None,
) -> None:
    """Everything needed to continue exactly where this step ended; written atomically by
    rank 0 (under FSDP every rank calls this: the weights and optimizer state are gathered).
    The files have the same layout whatever the strategy."""
    import torch
    from safetensors.torch import save_file

    par = parallel or Parallel()
    weights = par.full_trainable(model)
    optim = par.full_optimizer_state(model, optimizer)
    if weights is None or optim is None:  # not the writer
        return
    with staging_dir(workdir, "ckpt-") as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng},
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        replace_dir(tmp, workdir / LAST)


def load_checkpoint(
    workdir: Path, model: Any, optimizer: Any, scheduler: Any, parallel: Parallel | None = None
) -> TrainState | None:
    """Restore the last checkpoint, if there is one (every rank calls this)."""
    import torch

    par = parallel or Parallel()
    ck = workdir / LAST
    if not (ck / "state.json").is_file():
        return None
    load_trainable(model, ck / WEIGHTS, par)
    extra = torch.load(ck / "optimizer.pt", weights_only=False)
    par.load_full_optimizer_state(model, optimizer, lambda: extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"]["torch"])
    if "cuda" in extra["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["rng"]["cuda"])
    return TrainState(**json.loads((ck / "state.json").read_text()))


def prepare_workdir(workdir: Path, run_key: dict[str, Any], restart: bool) -> bool:
    """Keep an interrupted run's checkpoints only if they belong to this exact run.

    Returns True when a resumable checkpoint is there.
    """
    import shutil

    run_file = workdir / RUN_FILE
    same = run_file.is_file() and json.loads(run_file.read_text()) == run_key
    if workdir.exists() and (restart or not same):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not run_file.is_file():
        write_json_atomic(run_file, run_key)
    return (workdir / LAST / "state.json").is_file()


# ---- the loop ------------------------------------------------------------------------------


def train_loop(
    model: Any,
    train_set: Sequence[Encoded],
    val_set: Sequence[Encoded],
    args: TuneArgs,
    workdir: Path,
    *,
    pad_id: int,
    weights: dict[int, float] | None = None,
    device: Any = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    parallel: Parallel | None = None,
    amp: Any = None,
) -> TrainResult:
    """Train the model's trainable parameters in place; return what happened.

    ``workdir`` holds the resumable checkpoint: if one is there (``prepare_workdir`` said so)
    the run continues from it. ``on_step(step, loss)`` is called after every optimizer step.
    ``parallel``: this process's rank in a data-parallel job (default: alone); ``amp``: the
    autocast dtype of the forward pass (None: float32).
    """
    par = parallel or Parallel()
    plan = StepPlan.of([e.dataset for e in train_set], weights or {}, args)
    batches = StepBatches(train_set, weights or {}, args.seed, plan)
    run = _setup(model, args, workdir, pad_id, device, plan.total, par, amp)
    state = load_checkpoint(workdir, model, run.optimizer, run.scheduler, par) or TrainState()
    resumed_from = state.step or None
    if resumed_from:
        log.info("resuming from step %d of %d", state.step, plan.total)

    model.train()
    bar = _progress_bar(plan.total, state.step, progress and par.is_writer)
    span = LossSpan()  # response-token loss since the last validation
    last_saved = state.step
    try:
        while state.step < plan.total and not state.stopped_early:
            epoch, chunk = batches.at(state.step)
            if not chunk:  # max_steps beyond a short last epoch: move on
                state.step += 1
                continue
            loss = train_step(run, chunk, state, span)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=_tok_s(state))
            bar.update(1)

            validate = bool(val_set) and plan.validates_after(state.step, args.eval_every)
            if validate:
                _validate(run, val_set, state, span.mean(), epoch)
                span = LossSpan()
                val = state.history[-1]["val_loss"]
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}", tok_s=_tok_s(state))
            if (validate or state.step % args.save_every == 0) and state.step < plan.total:
                save_checkpoint(workdir, model, run.optimizer, run.scheduler, state, par)
                last_saved = state.step
            if on_step is not None:
                on_step(state.step, loss)
    except KeyboardInterrupt:
        # not under FSDP: a rank alone cannot gather the shards
        if state.step > last_saved and par.is_writer and not par.sharded:
            save_checkpoint(workdir, model, run.optimizer, run.scheduler, state)
        bar.close()
        raise
    bar.close()
    return _finish(run, bool(val_set), state, span, plan, resumed_from)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run takes and how examples map onto them."""

    per_step: int  # examples per optimizer step: batch_size x grad_accum
    steps_per_epoch: int
    total: int  # max_steps, or epochs x steps_per_epoch

    @classmethod
    def of(cls, datasets: Sequence[int], weights: dict[int, float], args: TuneArgs) -> StepPlan:
        per_step = args.batch_size * args.grad_accum
        steps_per_epoch = max(1, math.ceil(epoch_size(datasets, weights) / per_step))
        total = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
        return cls(per_step, steps_per_epoch, total)

    def validates_after(self, step: int, eval_every: int) -> bool:
        """Validate every ``eval_every`` steps, else at each epoch end; always at the end."""
        if eval_every:
            return step % eval_every == 0 or step == self.total
        return step % self.steps_per_epoch == 0 or step == self.total


class StepBatches:
    """The examples of each optimizer step. Epoch ``e``'s order depends only on (seed, e), so
    a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(
        self, train_set: Sequence[Encoded], weights: dict[int, float], seed: int, plan: StepPlan
    ) -> None:
        self.train_set, self.weights, self.seed, self.plan = train_set, weights, seed, plan
        self.datasets = [e.dataset for e in train_set]
        self.order: list[int] = []
        self.order_epoch = -1

    def at(self, step: int) -> tuple[int, list[Encoded]]:
        """(epoch, examples) of optimizer step ``step`` (0-based); a short last epoch gives []."""
        epoch, s_in = divmod(step, self.plan.steps_per_epoch)
        if epoch != self.order_epoch:
            self.order = epoch_order(self.datasets, self.weights, self.seed, epoch)
            self.order_epoch = epoch
        n = self.plan.per_step
        return epoch, [self.train_set[i] for i in self.order[s_in * n : (s_in + 1) * n]]


@dataclass
class LossSpan:
    """Summed response-token loss and token count over some optimizer steps."""

    nll: float = 0.0
    tokens: int = 0

    def mean(self) -> float:
        return self.nll / max(self.tokens, 1)


@dataclass
class _Run:
    """What every step uses: the model, its optimizer and the fixed settings of the run."""

    model: Any
    args: TuneArgs
    workdir: Path
    pad_id: int
    device: Any
    full_logits: bool  # the model cannot trim its LM head (no ``logits_to_keep``)
    params: list[Any]  # the trainable parameters
    optimizer: Any
    scheduler: Any
    parallel: Parallel
    forward_model: Any  # what the training forward pass calls (DDP around ``model``)
    amp: Any = None  # autocast dtype (None: float32)


def _setup(
    model: Any,
    args: TuneArgs,
    workdir: Path,
    pad_id: int,
    device: Any,
    total: int,
    parallel: Parallel,
    amp: Any,
) -> _Run:
    """AdamW over the trainable parameters; warmup then ``args.schedule`` over ``total`` steps.
    The model is wrapped (DDP) or sharded (FSDP: new parameters) before the optimizer sees it."""
    import torch

    forward_model = parallel.wrap(model, str(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    warmup = int(args.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.schedule, warmup, total)
    )
    full_logits = not supports_logits_to_keep(model)
    return _Run(
        model=model,
        args=args,
        workdir=workdir,
        pad_id=pad_id,
        device=device,
        full_logits=full_logits,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        parallel=parallel,
        forward_model=forward_model,
        amp=amp,
    )


def train_step(run: _Run, chunk: Sequence[Encoded], state: TrainState, span: LossSpan) -> float:
    """One optimizer step over ``chunk`` in micro-batches of ``batch_size``; returns its loss.

    Each micro-batch adds (its summed token loss / the step's response tokens) to the
    gradient, so accumulating ``grad_accum`` micro-batches equals one big batch.
    """
    import torch

    args, par = run.args, run.parallel
    n_target = sum(e.n_target for e in chunk)  # of the whole step, every rank's share included
    t0 = time.perf_counter()
    step_nll, step_tokens = 0.0, 0
    micro = par.micro_batches(chunk, args.batch_size)
    for j, mb in enumerate(micro):
        b = collate(mb.examples, run.pad_id, run.full_logits)
        with par.accumulating(run.forward_model, last=j == len(micro) - 1):
            with autocast(str(run.device), run.amp):
                nll = loss_sum(run.forward_model, b, run.device)
            scale = 0.0 if mb.padding else par.loss_scale / n_target
            (nll * scale).backward()
        if not mb.padding:
            step_nll += float(nll.detach())
            step_tokens += b["n_tokens"]
    step_nll, tokens = par.sum(step_nll, float(step_tokens))
    step_tokens = int(tokens)
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, args.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)

    state.step += 1
    state.train_seconds += time.perf_counter() - t0
    state.tokens += step_tokens
    span.nll += step_nll
    span.tokens += n_target
    return step_nll / n_target


def _validate(
    run: _Run, val_set: Sequence[Encoded], state: TrainState, train_loss: float, epoch: int
) -> None:
    """Record the validation loss; keep the best weights on disk; count towards patience."""
    args = run.args
    v = evaluate(
        run.model,
        val_set,
        args.batch_size,
        run.pad_id,
        run.device,
        run.full_logits,
        run.parallel,
        run.amp,
    )
    state.history.append(
        {
            "step": state.step,
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 5),
            "val_loss": round(v, 5),
        }
    )
    if state.best_val is None or v < state.best_val:
        state.best_val, state.best_step, state.bad_evals = v, state.step, 0
        save_weights(run.model, run.workdir / BEST, run.workdir, run.parallel)
    else:
        state.bad_evals += 1
        if args.patience and state.bad_evals >= args.patience:
            state.stopped_early = True
            log.info(
                "early stop at step %d: no improvement in %d validations", state.step, args.patience
            )


def _finish(
    run: _Run,
    validated: bool,
    state: TrainState,
    span: LossSpan,
    plan: StepPlan,
    resumed_from: int | None,
) -> TrainResult:
    """Put the best weights back (when validating) and sum up the run."""
    train_loss = span.mean() if span.tokens else None
    if train_loss is None and state.history:
        train_loss = state.history[-1]["train_loss"]
    val_loss = None
    if validated:
        if state.best_step is not None and state.best_step != state.step:
            run.parallel.barrier()  # rank 0 has written them
            # keep the best, not the last
            load_trainable(run.model, run.workdir / BEST / WEIGHTS, run.parallel)
        val_loss = state.best_val
    return TrainResult(state, plan.total, plan.steps_per_epoch, train_loss, val_loss, resumed_from)


def _progress_bar(total: int, initial: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="training",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )


def _tok_s(state: TrainState) -> str:
    return f"{state.tokens / max(state.train_seconds, 1e-9):.0f}"
