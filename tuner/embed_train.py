"""The embedder's training loop: in-batch and hard negatives, a plain readable PyTorch loop.

One optimizer step over B pairs with N hard negatives each::

    questions  [B]      \\
    positives  [B]       > SentenceTransformer -> embeddings [B], [B], N x [B]
    negatives  [N x B]  /
    MultipleNegativesRankingLoss: softmax over B x (1 + N) passages per question, the
    question's own gold passage the right answer; the other B - 1 gold passages (in-batch)
    and all B x N hard negatives the wrong ones. Scale 20 = temperature 0.05.

Each column goes through the model on its own, so the short questions are not padded to
passage length. A batch never holds one text twice: the gold passage of a question must not
turn up as another question's negative (SQuAD asks ~5 questions per paragraph), the same rule
as sentence-transformers' NO_DUPLICATES batch sampler.

Validation (before training, ``evals_per_epoch`` times per epoch or every ``eval_every``
steps, at each epoch's end and at the last step) searches the held-out questions in the
validation corpus; the checkpoint with the best recall@k (then MRR@10) is kept, the base model included: when no checkpoint beats it,
the base weights are what gets published. Checkpoints (weights, optimizer, scheduler, RNG)
land in the run folder every ``save_every`` steps and at each validation, so a rerun of a
killed training continues from the last one; the batch order is a function of the seed and
the epoch, so resuming skips exactly the batches already trained on.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.tuner.embed_args import EmbedTuneArgs
from ragtune.tuner.embed_data import Pair, Passage, ValQuestion
from ragtune.tuner.train import (
    LAST,
    WEIGHTS,
    load_trainable,
    lr_lambda,
    save_checkpoint,
    save_weights,
)

BEST = "best"
RECALL_KS = (1, 2, 3, 5, 10)
MRR_DEPTH = 10
ENCODE_BATCH = 64


# ---- batches -------------------------------------------------------------------------------


def epoch_batches(pairs: Sequence[Pair], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded order of the pairs cut into batches in which no text occurs twice.

    A pair that would repeat a text of the batch being filled waits for a later batch; a
    last batch of one pair (no in-batch negative) is dropped.
    """
    order = list(range(len(pairs)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    texts = [p.texts() for p in pairs]
    batches: list[list[int]] = []
    pending = order
    while pending:
        batch: list[int] = []
        seen: set[str] = set()
        rest: list[int] = []
        for i in pending:
            if len(batch) < batch_size and not (texts[i] & seen):
                batch.append(i)
                seen |= texts[i]
            else:
                rest.append(i)
        batches.append(batch)
        pending = rest
    return [b for b in batches if len(b) > 1]


@dataclass(frozen=True)
class Schedule:
    """Every step's batch and epoch, fixed before training (so resuming can skip exactly)."""

    batches: list[list[int]]
    epochs: list[int]  # the epoch of each step
    steps_per_epoch: int

    @classmethod
    def of(cls, pairs: Sequence[Pair], args: EmbedTuneArgs) -> Schedule:
        first = epoch_batches(pairs, args.batch_size, args.seed, 0)
        per_epoch = len(first)
        if per_epoch == 0:
            from ragtune.core.errors import DataError

            raise DataError(
                "too few distinct training pairs for one batch (need at least 2)", field="data"
            )
        total = args.max_steps or max(1, round(args.epochs * per_epoch))
        batches: list[list[int]] = []
        epochs: list[int] = []
        e = 0
        while len(batches) < total:
            part = first if e == 0 else epoch_batches(pairs, args.batch_size, args.seed, e)
            take = part[: total - len(batches)]
            batches += take
            epochs += [e] * len(take)
            e += 1
        return cls(batches, epochs, per_epoch)

    @property
    def total(self) -> int:
        return len(self.batches)

    def epoch_ends_at(self, step: int) -> bool:
        """Step ``step`` (1-based) is the last of its epoch."""
        return step == self.total or self.epochs[step] != self.epochs[step - 1]

    def validates_at(self, step: int, every: int, per_epoch: int) -> bool:
        """Validation is due after step ``step`` (1-based): every ``every`` steps when set,
        else ``per_epoch`` times per epoch, evenly spaced; always at an epoch's end."""
        if self.epoch_ends_at(step):
            return True
        if every:
            return step % every == 0
        pos = step - self.epochs.index(self.epochs[step - 1])  # 1-based, in its epoch
        n = self.steps_per_epoch
        return pos * per_epoch // n > (pos - 1) * per_epoch // n


# ---- validation ----------------------------------------------------------------------------


def retrieval_figures(
    model: Any, val: Sequence[ValQuestion], corpus: Sequence[Passage], ks: Sequence[int]
) -> tuple[dict[str, float], float]:
    """(recall@k for each k, MRR@10) of ``model`` searching ``corpus`` for ``val``.

    Several chunks of one document count once, at their best rank (as the eval harness
    scores retrieval).
    """
    import numpy as np
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        c = model.encode(
            [p.text for p in corpus],
            batch_size=ENCODE_BATCH,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        q = model.encode(
            [v.question for v in val],
            batch_size=ENCODE_BATCH,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    if was_training:
        model.train()
    scores = np.asarray(q, dtype=np.float32) @ np.asarray(c, dtype=np.float32).T
    depth = min(len(corpus), 4 * max(max(ks), MRR_DEPTH))
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    recall = dict.fromkeys(ks, 0.0)
    mrr = 0.0
    for row, v in enumerate(val):
        idx = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
        ranked = list(dict.fromkeys(corpus[i].doc_id for i in idx))
        gold = set(v.gold)
        for k in ks:
            recall[k] += len(gold & set(ranked[:k])) / len(gold)
        first = next((r for r, d in enumerate(ranked[:MRR_DEPTH], 1) if d in gold), None)
        mrr += 1.0 / first if first else 0.0
    n = len(val)
    return {str(k): round(recall[k] / n, 4) for k in ks}, round(mrr / n, 4)


# ---- the loop ------------------------------------------------------------------------------


@dataclass
class EmbedState:
    """What a checkpoint records besides weights and optimizer (JSON)."""

    step: int = 0
    pairs: int = 0
    train_seconds: float = 0.0
    best_score: list[float] | None = None  # (recall@k, MRR@10) of the best checkpoint
    best_step: int | None = None  # 0: the base model
    bad_evals: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0  # since the last validation
    loss_n: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EmbedTrainResult:
    state: EmbedState
    schedule: Schedule
    resumed_from: int | None
    ks: list[int]
    val_corpus: int

    @property
    def pairs_per_s(self) -> float:
        s = self.state
        return round(s.pairs / s.train_seconds, 3) if s.train_seconds else 0.0


def train_embedder_loop(
    model: Any,
    train: Sequence[Pair],
    val: Sequence[ValQuestion],
    corpus: Sequence[Passage],
    args: EmbedTuneArgs,
    val_k: int,
    workdir: Path,
    *,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> EmbedTrainResult:
    """Train ``model`` in place; on return it holds the best validated weights."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(args.seed)  # dropout draws from the global generator
    schedule = Schedule.of(train, args)
    ks = sorted({*RECALL_KS, val_k})
    loss_fn = MultipleNegativesRankingLoss(model, scale=args.scale)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm")
    params = [p for p in model.parameters() if p.requires_grad]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for n, p in named if not any(x in n for x in no_decay)]},
        {"params": [p for n, p in named if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    warmup = math.ceil(args.warmup_ratio * schedule.total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.schedule, warmup, schedule.total)
    )
    full_len = int(model.max_seq_length)
    train_len = min(full_len, args.max_seq_length or full_len)

    state = _load_checkpoint(workdir, model, optimizer, scheduler)
    resumed_from = state.step if state else None
    state = state or EmbedState()

    def validate() -> None:
        model.max_seq_length = full_len  # passages are encoded as the indexer encodes them
        recall, mrr = retrieval_figures(model, val, corpus, ks)
        model.max_seq_length = train_len
        loss = round(state.loss_sum / state.loss_n, 5) if state.loss_n else None
        epoch = round(state.step / schedule.steps_per_epoch, 3)
        point = {"step": state.step, "epoch": epoch, "recall": recall, "mrr": mrr}
        state.history.append({**point, "train_loss": loss})
        state.loss_sum, state.loss_n = 0.0, 0
        score = [recall[str(val_k)], mrr]
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_step, state.bad_evals = score, state.step, 0
            save_weights(model, workdir / BEST, workdir)
        else:
            state.bad_evals += 1
            if args.patience and state.bad_evals >= args.patience:
                state.stopped_early = True
        bar.set_postfix_str(f"val recall@{val_k} {recall[str(val_k)]:.3f}", refresh=False)

    bar = _bar(schedule.total, state.step, progress)
    model.max_seq_length = train_len
    try:
        if val and state.step == 0 and not state.history:
            validate()  # the base model: what the tuned one must beat
        loss_neg = args.hard_negatives
        while state.step < schedule.total and not state.stopped_early:
            batch = [train[i] for i in schedule.batches[state.step]]
            t0 = time.perf_counter()
            model.train()
            cols = [[p.question for p in batch], [p.positive for p in batch]]
            cols += [[p.negatives[j] for p in batch] for j in range(loss_neg)]
            # one forward per column: questions stay short (no padding to passage length)
            embs = [model(model.preprocess(col))["sentence_embedding"] for col in cols]
            loss = loss_fn.compute_loss_from_embeddings(embs, None)  # type: ignore[arg-type]  # labels unused
            loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.train_seconds += time.perf_counter() - t0
            state.step += 1
            state.pairs += len(batch)
            value = float(loss.detach())
            state.loss_sum += value
            state.loss_n += 1
            bar.update(1)
            bar.set_postfix_str(f"loss {value:.3f}", refresh=False)
            if on_step is not None:
                on_step(state.step, value)
            due = schedule.validates_at(state.step, args.eval_every, args.evals_per_epoch)
            if val and due:
                validate()
            if due or state.step % args.save_every == 0:
                save_checkpoint(workdir, model, optimizer, scheduler, state)  # type: ignore[arg-type]
    finally:
        bar.close()
        model.max_seq_length = full_len
    if val and state.best_step is not None:
        load_trainable(model, workdir / BEST / WEIGHTS)
    model.eval()
    return EmbedTrainResult(state, schedule, resumed_from, ks, len(corpus))


def _load_checkpoint(
    workdir: Path, model: Any, optimizer: Any, scheduler: Any
) -> EmbedState | None:
    import torch

    ck = workdir / LAST
    if not (ck / "state.json").is_file():
        return None
    load_trainable(model, ck / WEIGHTS)
    extra = torch.load(ck / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"]["torch"])
    return EmbedState(**json.loads((ck / "state.json").read_text()))


def _bar(total: int, initial: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="tune-embedder",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
