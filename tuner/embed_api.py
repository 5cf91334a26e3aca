"""Train a retriever: the configured sentence-transformers embedder, fine-tuned on the
(question, gold passage) pairs of the same QA data the adapter tuner reads.

``train_embedder`` checks what it can before any training (args, name, base model, index),
prepares the pairs (``tuner.embed_data``: gold passages, hard negatives mined from the live
index, a validation split by group), trains (``tuner.embed_train``) in
``<data>/embedders/.runs/<name>/`` (resumable), then saves the best validated weights as a
sentence-transformers folder into a staging folder, writes manifest.json
(``core.manifests.EmbedderManifest``) last and publishes it atomically
(``core.embedders.publish``). Use it with ``--embedder tuned:NAME``; index with it into a new
index (an index never mixes two embedders' vectors).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core import embedders
from ragtune.core.atomic import staging_dir
from ragtune.core.config import Settings
from ragtune.core.errors import IndexNotFound, InvalidInput
from ragtune.core.manifests import (
    MANIFEST,
    EmbedderData,
    EmbedderManifest,
    EmbedderMetrics,
    RetrievalPoint,
    new_version_id,
)
from ragtune.tuner.embed_args import EmbedTuneArgs
from ragtune.tuner.formats import MAX_REPORTED

if TYPE_CHECKING:
    from ragtune.core.index_store import LoadedIndex
    from ragtune.core.models import Embedder
    from ragtune.tuner.embed_data import EmbedData
    from ragtune.tuner.embed_train import EmbedTrainResult


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def train_embedder(
    settings: Settings,
    args: EmbedTuneArgs,
    *,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> embedders.EmbedderInfo:
    """Fine-tune an embedder and publish it to the tuned-embedder registry.

    Args:
        settings: resolved settings (data dir, the embedder that built the index, threads).
        args: the run's arguments (validated here).
        progress: show progress bars and a data summary on stderr.
        on_step: ``f(step, loss)`` after each optimizer step (tests interrupt with it).

    Raises:
        InvalidInput / DataError: bad arguments or data, before any training.
        ModelNotFound: unknown base embedder. IndexNotFound: no index to mine negatives from.
        IndexMismatch: that index was built with another embedder than the configured one.
        InsufficientResources: too little disk.
    """
    from ragtune.core.models import folder_fingerprint, load_embedder, set_training_allocator
    from ragtune.tuner.api import check_disk
    from ragtune.tuner.embed_data import prepare_pairs
    from ragtune.tuner.embed_train import train_embedder_loop
    from ragtune.tuner.train import prepare_workdir

    t_start = time.perf_counter()
    args.validate()
    if embedders.embedder_dir(settings, args.name).exists() and not args.overwrite:
        raise InvalidInput(
            f"tuned embedder {args.name!r} already exists (remove it with "
            f"`ragtune embedders rm {args.name}` or pass --overwrite)",
            field="name",
        )
    embedders.clean_registry(settings)
    base_spec = args.base or settings.embedder
    set_training_allocator(settings)
    base = load_embedder(settings.model_copy(update={"embedder": base_spec}))  # ModelNotFound
    index = _open_index(settings, args, base if base_spec == settings.embedder else None)
    data = prepare_pairs(args, index, args.mine_retrieval, progress=progress)
    _say(progress, "data: " + ", ".join(f"{k} {v}" for k, v in _counts(data).items()))
    base_path = _model_path(settings, base_spec)
    weights = _folder_bytes(base_path)
    check_disk(settings.embedders_dir, 5 * weights + (args.min_free_disk_mb + 16) * 2**20)
    fingerprint = folder_fingerprint(base_path) if base_path else "hub:" + base_spec
    val_k = args.val_k or settings.top_k
    workdir = embedders.run_dir(settings, args.name)
    key = {
        "args": args.hyperparameters(),
        "data": data.data_hash,
        "base": fingerprint,
        "index_version": index.version if index else None,
        "val_k": val_k,
    }
    if prepare_workdir(workdir, key, args.restart):
        _say(progress, f"resuming interrupted run from {workdir.parent.name}/{args.name}")
    result = train_embedder_loop(
        base.model,
        data.train,
        data.val,
        data.corpus,
        args,
        val_k,
        workdir,
        progress=progress,
        on_step=on_step,
    )
    manifest = embedder_manifest(args, base, base_spec, fingerprint, data, result, val_k)
    manifest = manifest.model_copy(
        update={
            "metrics": manifest.metrics.model_copy(
                update={"wall_seconds": round(time.perf_counter() - t_start, 2)}
            )
        }
    )
    with staging_dir(settings.embedders_dir, f"{args.name}-") as tmp:
        base.model.save(str(tmp))
        manifest.write(tmp / MANIFEST)  # last: its presence marks the folder complete
        info = embedders.publish(settings, tmp, args.name)
    shutil.rmtree(workdir, ignore_errors=True)
    _say(progress, summary_line(info.manifest))
    return info


def _open_index(
    settings: Settings, args: EmbedTuneArgs, embedder: Embedder | None
) -> LoadedIndex | None:
    """The index to mine negatives from and validate in; None when none is needed or there."""
    from ragtune.core.index_store import current_version, open_index

    name = args.index or settings.default_index
    if current_version(settings, name) is None:
        if args.hard_negatives or args.index:
            raise IndexNotFound(
                f"index {name!r} not found: hard negatives are mined from it (build it with "
                f"`ragtune index PATH --index {name}`, name another with --index, or train "
                "with in-batch negatives only: --hard-negatives 0)"
            )
        return None
    if args.mine_retrieval == "bm25" and not args.max_negative_ratio:
        return open_index(settings, name, None)  # no similarity needed: no model to load
    if embedder is None:
        from ragtune.core.models import load_embedder

        embedder = load_embedder(settings)
    return open_index(settings, name, embedder)  # IndexMismatch: built with another embedder


def _model_path(settings: Settings, spec: str) -> Path | None:
    from ragtune.core.models import locate_embedder

    return locate_embedder(spec, settings).path


def _folder_bytes(path: Path | None) -> int:
    if path is None or not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*.safetensors")) + sum(
        f.stat().st_size for f in path.rglob("*.bin")
    )


def _counts(data: EmbedData) -> dict[str, Any]:
    return data.counts.model_dump(exclude_none=True)


def embedder_manifest(
    args: EmbedTuneArgs,
    base: Embedder,
    base_spec: str,
    fingerprint: str,
    data: EmbedData,
    result: EmbedTrainResult,
    val_k: int,
) -> EmbedderManifest:
    """What the embedder folder says about itself: base, data, mining, args, validation."""
    from ragtune.tuner.api import library_versions
    from ragtune.tuner.train import peak_rss_mb

    s = result.state
    history = [RetrievalPoint.model_validate(h) for h in s.history]
    best = next((h for h in history if h.step == s.best_step), None)
    base_point = history[0] if history and history[0].step == 0 else None
    version = new_version_id()
    return EmbedderManifest(
        name=args.name,
        version=version,
        model_id=embedders.model_id(args.name, version),
        base_model=base.model_id,
        base_spec=base_spec,
        base_fingerprint=fingerprint,
        dim=base.dim,
        max_seq_length=base.max_seq_length,
        data=EmbedderData(
            hash=data.data_hash,
            files=data.files,
            counts=data.counts,
            bad_examples=[str(b) for b in data.bad[:MAX_REPORTED]],
        ),
        mining=data.mining,
        hyperparameters={**args.hyperparameters(), "val_k": val_k},
        metrics=EmbedderMetrics(
            k=val_k,
            val_questions=len(data.val),
            val_corpus=result.val_corpus if data.val else 0,
            base=base_point,
            best=best,
            improved=bool(best and base_point and best.step != 0),
            history=history,
            steps=s.step,
            total_steps=result.schedule.total,
            steps_per_epoch=result.schedule.steps_per_epoch,
            stopped_early=s.stopped_early,
            pairs_per_s=result.pairs_per_s,
            train_seconds=round(s.train_seconds, 2),
            wall_seconds=0.0,
            resumed_from_step=result.resumed_from,
            peak_rss_mb=peak_rss_mb(),
        ),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        versions={**library_versions(), **_st_version()},
    )


def _st_version() -> dict[str, str]:
    from importlib.metadata import version

    return {"sentence-transformers": version("sentence-transformers")}


def summary_line(m: EmbedderManifest) -> str:
    """One line: the validation recall of the base and the kept weights, and the speed."""
    met = m.metrics
    k = str(met.k)
    if met.base is None or met.best is None:
        val = "no validation split"
    else:
        val = (
            f"validation recall@{k} {met.base.recall[k]:.3f} (base) -> "
            f"{met.best.recall[k]:.3f} (step {met.best.step})"
        )
        if not met.improved:
            val += ": no checkpoint beat the base, its weights are kept"
    return (
        f"embedder {m.name!r} ready as tuned:{m.name} ({m.model_id}): {val}; "
        f"{met.pairs_per_s} pairs/s"
    )
