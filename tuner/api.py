"""The tuner's public entry points: train an adapter, inspect and export registry entries.

``train_adapter`` checks everything it can before any training starts (args, base model,
data, split, RAFT index, disk), then trains in a work folder
(``<data>/adapters/.runs/<name>/``, which holds the resumable checkpoint), writes the
adapter into a staging folder with manifest.json (``core.manifests.AdapterManifest``) last,
and publishes it atomically.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ragtune.core.atomic import staging_dir
from ragtune.core.config import Settings
from ragtune.core.errors import DataError, InsufficientResources, InvalidInput, ModelNotFound
from ragtune.core.index_changes import SNAPSHOT_FILE, IndexSnapshot
from ragtune.core.manifests import (
    MANIFEST,
    AdapterData,
    AdapterManifest,
    DataCounts,
    DataFile,
    InitFrom,
    Perplexity,
    PromptExample,
    PromptInfo,
    RaftInfo,
    RaftSplitStats,
    TrainMetrics,
    TrainPoint,
    new_version_id,
)
from ragtune.core.qa import BadRecord, QARecord
from ragtune.core.registry import (
    AdapterInfo,
    adapter_dir,
    check_base,
    clean_registry,
    get_adapter,
    publish,
    registry_writer,
)
from ragtune.tuner.args import TuneArgs, parse_data_spec
from ragtune.tuner.distributed import Parallel
from ragtune.tuner.formats import MAX_REPORTED, load_examples

if TYPE_CHECKING:
    from ragtune.core.models import ModelLocation
    from ragtune.tuner.train import TrainResult

log = logging.getLogger(__name__)

RUNS_DIR = ".runs"


def run_dir(settings: Settings, name: str) -> Path:
    """Work folder of a training run (checkpoints for resume); never listed as an adapter."""
    return settings.adapters_dir / RUNS_DIR / name


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ---- data ----------------------------------------------------------------------------------


@dataclass
class LoadedData:
    """Every --data file read: the examples, one manifest record per file, the bad records."""

    examples: list[QARecord]
    files: list[DataFile]
    bad: list[BadRecord]


@dataclass
class PreparedData:
    """Rendered, tokenized, split data plus every count the manifest records."""

    train: list[Any]  # train.Encoded
    val: list[Any]
    weights: dict[int, float]
    files: list[DataFile]
    counts: DataCounts
    data_hash: str
    bad: list[BadRecord] = field(default_factory=list)
    raft: RaftInfo | None = None
    example: PromptExample | None = None  # the first training example, rendered
    snapshot: IndexSnapshot | None = None  # RAFT: the index version's chunks (core.index_changes)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DataArgs(Protocol):
    """What reading the data needs of a run's arguments (TuneArgs, EmbedTuneArgs)."""

    data: list[str]
    format: str
    template: str | None


def load_data(args: DataArgs, progress: bool = False) -> LoadedData:
    """Read every --data file."""
    out = LoadedData([], [], [])
    for i, spec in enumerate(args.data):
        path, weight = parse_data_spec(spec)
        res = load_examples(path, args.format, args.template, dataset=i)
        out.examples += res.examples
        out.bad += res.bad
        out.files.append(
            DataFile(
                file=Path(path).name,
                path=str(Path(path).resolve()),  # --retrain reads it again
                sha256=_sha256(Path(path)),
                format=res.fmt,
                weight=weight,
                records=res.records,
                examples=len(res.examples),
                bad=len(res.bad),
                template_sha256=_sha256(Path(args.template)) if args.template else None,
            )
        )
        _say(progress, res.summary())
    for b in out.bad[:MAX_REPORTED]:
        _say(progress, f"  skipped {b}")
    if len(out.bad) > MAX_REPORTED:
        _say(progress, f"  ... and {len(out.bad) - MAX_REPORTED} more bad records")
    return out


def prepare_data(
    settings: Settings, args: TuneArgs, tokenizer: Any, progress: bool = False
) -> PreparedData:
    """Load -> dedup -> split -> (RAFT) -> render with core.prompts -> tokenize -> length filter."""
    import random

    from ragtune.core.prompts import render_training_example
    from ragtune.tuner import split as splitter
    from ragtune.tuner.train import encode

    loaded = load_data(args, progress)
    examples, duplicates, val_capped_to = loaded.examples, None, None
    if args.dedup:
        examples, duplicates = splitter.dedup(examples)
    train_ex, val_ex = splitter.split(examples, args.val_fraction, args.seed, args.group_by)
    if len(val_ex) > args.max_val_examples:
        val_ex = random.Random(args.seed).sample(val_ex, args.max_val_examples)
        val_capped_to = args.max_val_examples

    # (question, target, contexts, dataset) per example; contexts only for RAFT
    raft, snapshot = None, None
    if args.raft:
        train_items, val_items, raft, snapshot = _raft_items(
            settings, args, train_ex, val_ex, progress
        )
    else:
        train_items = [(e.question, e.answer, None, e.dataset) for e in train_ex]
        val_items = [(e.question, e.answer, None, e.dataset) for e in val_ex]

    def render(items: list[tuple[str, str, list[str] | None, int]]) -> list[Any]:
        out = []
        for q, a, ctx, ds in items:
            ex = render_training_example(tokenizer, q, a, ctx, settings.max_context_chars)
            out.append(encode(tokenizer, ex.prompt, ex.completion, ds))
        return out

    train_enc, val_enc = render(train_items), render(val_items)
    example = None
    if train_items:
        q, a, ctx, _ = train_items[0]
        ex = render_training_example(tokenizer, q, a, ctx, settings.max_context_chars)
        example = PromptExample(prompt=ex.prompt, completion=ex.completion)
    train_enc, too_long_train = splitter.length_filter(
        train_enc, lambda e: len(e.input_ids), args.max_length
    )
    val_enc, too_long_val = splitter.length_filter(
        val_enc, lambda e: len(e.input_ids), args.max_length
    )
    if not train_enc:
        raise DataError(
            f"all {len(train_items)} training examples are longer than --max-length "
            f"{args.max_length} tokens",
            field="max_length",
        )
    train_enc = [e for e in train_enc if e.n_target > 0]
    counts = DataCounts(
        records=sum(f.records for f in loaded.files),
        bad=len(loaded.bad),
        loaded=len(loaded.examples),
        duplicates=duplicates,
        val_capped_to=val_capped_to,
        too_long_train=too_long_train,
        too_long_val=too_long_val,
        train=len(train_enc),
        val=len(val_enc),
        train_tokens=sum(len(e.input_ids) for e in train_enc),
        target_tokens=sum(e.n_target for e in train_enc),
    )
    weights = {i: parse_data_spec(s)[1] for i, s in enumerate(args.data)}
    h = hashlib.sha256()
    for f in loaded.files:
        h.update(f"{f.sha256}|{f.format}|{f.weight}|{f.template_sha256}".encode())
    return PreparedData(
        train_enc,
        val_enc,
        weights,
        loaded.files,
        counts,
        h.hexdigest(),
        loaded.bad,
        raft,
        example,
        snapshot,
    )


def _raft_items(
    settings: Settings,
    args: TuneArgs,
    train_ex: list[QARecord],
    val_ex: list[QARecord],
    progress: bool,
) -> tuple[list, list, RaftInfo, IndexSnapshot]:
    from ragtune.core.index_changes import index_snapshot
    from ragtune.core.index_store import open_index
    from ragtune.core.models import load_embedder
    from ragtune.tuner.raft import build_raft

    name = args.index or settings.default_index
    embedder = load_embedder(settings)
    index = open_index(settings, name, embedder)
    k = args.raft_k or settings.top_k
    method = args.retrieval or settings.retrieval
    out = []
    stats_all = {}
    for part, exs in (("train", train_ex), ("val", val_ex)):
        built, stats = build_raft(
            exs, index, k, args.p_oracle, args.seed, method, args.raft_quote, progress=progress
        )
        out.append([(r.example.question, r.target, r.contexts, r.example.dataset) for r in built])
        stats_all[part] = RaftSplitStats.model_validate(stats.to_dict())
    _say(
        progress,
        f"RAFT: index {name!r} version {index.version}, k={k}, "
        f"oracle rate {stats_all['train'].oracle_rate}, "
        f"retrieval recall {stats_all['train'].retrieval_recall}",
    )
    # the chunks the passages came from: the adapter is bound to this index version
    snapshot = index_snapshot(settings, name, index.version)
    raft = RaftInfo(
        index=name,
        index_version=index.version,
        p_oracle=args.p_oracle,
        k=k,
        retrieval=method,
        quote=args.raft_quote,
        embedding_model=embedder.model_id,
        stats=stats_all,
        snapshot=snapshot.ref(),
    )
    return out[0], out[1], raft, snapshot


# ---- checks before training ----------------------------------------------------------------


def _folder_bytes(folder: str) -> int:
    p = Path(folder)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.glob("*.safetensors")) + sum(
        f.stat().st_size for f in p.glob("*.bin")
    )


def estimate_disk(method: str, model_bytes: int) -> int:
    """Bytes a run writes at its peak: LoRA is small; full keeps ~5 copies of the weights
    (staging, best, last checkpoint = weights + AdamW's two moments)."""
    margin = 16 << 20
    return (5 * model_bytes if method == "full" else model_bytes // 10) + margin


def check_disk(path: Path, needed: int, what: str = "training") -> None:
    """Refuse to start when the disk under ``path`` has less than ``needed`` bytes free."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < needed:
        raise InsufficientResources(
            f"not enough disk for {what}: {free / 2**20:.0f} MB free in the data folder, "
            f"{needed / 2**20:.0f} MB needed"
        )


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ragtune", "torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# ---- training ------------------------------------------------------------------------------


def train_adapter(
    settings: Settings,
    args: TuneArgs,
    *,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    parallel: Parallel | None = None,
) -> AdapterInfo:
    """Train a LoRA adapter (or a full model) and publish it to the registry.

    Args:
        settings: resolved settings (data dir, models, threads, prompt limits).
        args: the run's arguments (validated here).
        progress: show a tqdm bar and a data summary on stderr.
        on_step: ``f(step, loss)`` called after each optimizer step (tests interrupt with it).
        parallel: this process's rank in a data-parallel job (``tuner.distributed``, under
            torchrun): rank 0 prepares the data and writes; every rank trains its share.

    Returns:
        The published registry entry.

    Raises:
        InvalidInput / DataError: bad arguments or data (before any training).
        ModelNotFound: unknown base model. AdapterMismatch: --init-from on another base.
        InsufficientResources: too little disk.
    """
    par = replace(parallel or Parallel(), strategy=args.strategy)
    if args.strategy == "fsdp" and not par.active:
        raise InvalidInput(
            "--strategy fsdp shards the model over processes: give --nproc 2 or more",
            field="strategy",
        )
    writer = par.is_writer
    # every check that needs no data: fails in seconds; each rank takes its own GPU
    run = setup(settings, args, par.local_rank if par.active else None)
    par.start(run.device)
    try:
        data: PreparedData | None = None
        if writer:
            if cleaned := clean_registry(run.settings):  # what killed tunes left behind
                _say(progress, f"cleaned {cleaned} leftover(s) of an interrupted run")
            data = prepare_data(run.settings, args, run.tokenizer, progress)
            counts = data.counts.model_dump(exclude_none=True)
            _say(progress, "data: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            needed = estimate_disk(args.method, _folder_bytes(run.folder))
            check_disk(run.settings.adapters_dir, needed + args.min_free_disk_mb * 2**20)
        data = par.broadcast(data)  # the same examples on every rank
        model, metrics = train(run, args, data, progress and writer, on_step, par)
        # under FSDP every rank gathers the sharded adapter for rank 0 to save
        weights = par.full_trainable(model) if par.sharded else None
        if writer:
            manifest = adapter_manifest(run, args, data, model, metrics)
            save_and_publish(run, args, model, manifest, data.snapshot, weights)
            shutil.rmtree(run_dir(run.settings, args.name), ignore_errors=True)  # checkpoints
            _say(
                progress,
                f"adapter {args.name!r} ready: val loss {metrics.val_loss}, "
                f"{metrics.tokens_per_s} tokens/s over {par.world} process(es), "
                f"peak RSS {metrics.peak_rss_mb} MB",
            )
        par.barrier()  # published before any rank reads it
        # FSDP's modules hold the process group's async work; freed only at interpreter exit,
        # gloo's threads can abort the process there (pytorch/pytorch#179291): free them now
        del model
        gc.collect()
    finally:
        par.stop()
    return get_adapter(run.settings, args.name)


@dataclass
class Run:
    """What ``setup`` established: the base model to train on and where it stands."""

    settings: Settings  # with --base applied
    base: ModelLocation
    folder: str  # the base model's files
    tokenizer: Any
    fingerprint: str  # of the base weights (recorded, and checked against --init-from)
    init_from: AdapterInfo | None  # the adapter to continue from (--init-from)
    device: str = "cpu"  # where this process trains (its own GPU in a data-parallel job)


def setup(settings: Settings, args: TuneArgs, local_rank: int | None = None) -> Run:
    """Check the args, the adapter name, the base model and --init-from before any data work."""
    from ragtune.core.devices import resolve_device
    from ragtune.core.models import (
        folder_fingerprint,
        generator_folder,
        load_tokenizer,
        locate_generator,
    )

    args.validate()
    if args.base:
        settings = settings.model_copy(update={"generator": args.base})
    if adapter_dir(settings, args.name).exists() and not args.overwrite:
        raise InvalidInput(
            f"adapter {args.name!r} already exists (remove it with "
            f"`ragtune adapters rm {args.name}` or pass --overwrite)",
            field="name",
        )
    loc = locate_generator(settings.generator)  # ModelNotFound for an unknown base model
    folder = generator_folder(settings)
    try:  # fails here, before any training, if the base model cannot be loaded
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError) as e:
        raise ModelNotFound(
            f"cannot load base model {settings.generator!r}: no usable tokenizer/model files there"
        ) from e
    fingerprint = folder_fingerprint(folder)
    init_from = None
    if args.init_from:
        init_from = get_adapter(settings, args.init_from)
        check_base(init_from, loc.model_id, fingerprint)
        if init_from.method != "lora":
            raise InvalidInput(
                f"--init-from {args.init_from}: not a LoRA adapter", field="init_from"
            )
    return Run(
        settings,
        loc,
        folder,
        tokenizer,
        fingerprint,
        init_from,
        resolve_device(settings, local_rank),
    )


def run_key(run: Run, args: TuneArgs, data: PreparedData) -> dict[str, Any]:
    """What an interrupted run's checkpoint must match for a rerun to resume from it."""
    from ragtune.core.prompts import template_id

    return {
        "args": args.hyperparameters(),
        "data": data.data_hash,
        "base": run.fingerprint,
        "init_from": run.init_from.version if run.init_from else None,
        "prompt": template_id(run.tokenizer),
        "max_context_chars": run.settings.max_context_chars,
    }


def train(
    run: Run,
    args: TuneArgs,
    data: PreparedData,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    parallel: Parallel | None = None,
) -> tuple[Any, TrainMetrics]:
    """Build the model, train it in the run folder (resuming a killed run), measure it.
    In a data-parallel job rank 0 alone prepares the run folder and measures perplexity."""
    from ragtune.core.devices import autocast_dtype
    from ragtune.tuner.forgetting import perplexity
    from ragtune.tuner.train import prepare_workdir, train_loop

    par = parallel or Parallel()
    measure = args.forgetting and par.is_writer
    # a sharded model's forward pass needs every rank: all measure the tuned one
    measure_tuned = args.forgetting and (par.is_writer or par.sharded)
    t_start = time.perf_counter()
    # FSDP: the base loads on the CPU and each rank moves only its shard to its device
    load_on = "cpu" if par.sharded else run.device
    model, _ = _build_model(run.settings, args, run.folder, run.init_from, load_on)
    device = run.device
    base_ppl = perplexity(_unwrapped(model), run.tokenizer) if measure else None
    workdir = run_dir(run.settings, args.name)
    if par.is_writer and prepare_workdir(workdir, run_key(run, args, data), args.restart):
        _say(progress, f"resuming interrupted run from {RUNS_DIR}/{args.name}")
    par.barrier()  # the run folder is ready (and its checkpoint, to resume from)
    result = train_loop(
        model,
        data.train,
        data.val,
        args,
        workdir,
        pad_id=run.tokenizer.pad_token_id,
        weights=data.weights,
        device=device,
        progress=progress,
        on_step=on_step,
        parallel=par,
        amp=autocast_dtype(run.settings, device),
    )
    tuned_ppl = perplexity(model, run.tokenizer) if measure_tuned else None
    ppl = None
    if base_ppl and tuned_ppl:
        ppl = Perplexity(
            base=base_ppl["perplexity"],
            tuned=tuned_ppl["perplexity"],
            ratio=round(tuned_ppl["perplexity"] / base_ppl["perplexity"], 4),
            tokens=base_ppl["tokens"],
            sample=base_ppl["sample"],
        )
    metrics = _metrics(result, model, time.perf_counter() - t_start, ppl)
    if par.active:
        metrics = metrics.model_copy(update={"processes": par.world, "strategy": par.strategy})
    return model, metrics


def _metrics(
    result: TrainResult, model: Any, wall_seconds: float, ppl: Perplexity | None
) -> TrainMetrics:
    from ragtune.tuner.train import peak_rss_mb

    s = result.state
    return TrainMetrics(
        train_loss=_r(result.train_loss),
        val_loss=_r(result.val_loss),
        best_step=s.best_step,
        steps=s.step,
        total_steps=result.total_steps,
        steps_per_epoch=result.steps_per_epoch,
        stopped_early=s.stopped_early,
        history=[TrainPoint.model_validate(h) for h in s.history],
        tokens=s.tokens,
        tokens_per_s=result.tokens_per_s,
        train_seconds=round(s.train_seconds, 2),
        wall_seconds=round(wall_seconds, 2),
        resumed_from_step=result.resumed_from,
        peak_rss_mb=peak_rss_mb(),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        perplexity=ppl,
    )


def adapter_manifest(
    run: Run, args: TuneArgs, data: PreparedData, model: Any, metrics: TrainMetrics
) -> AdapterManifest:
    """Everything the adapter folder says about itself: base, prompt, data, args, metrics."""
    from ragtune.core.prompts import PROMPT_VERSION, template_id

    hyper = args.hyperparameters()
    if args.method == "lora":
        cfg = _unwrapped_config(model)
        hyper.update(
            r=cfg.r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=sorted(cfg.target_modules),
        )
    settings, loc, init = run.settings, run.base, run.init_from
    return AdapterManifest(
        name=args.name,
        method="full" if args.method == "full" else "lora",  # TuneArgs.validate checked it
        base_model=loc.model_id,
        base_spec=settings.generator if loc.kind in ("packaged", "hub") else loc.model_id,
        base_fingerprint=run.fingerprint,
        prompt_template=template_id(run.tokenizer),
        prompt=PromptInfo(
            version=PROMPT_VERSION,
            template_id=template_id(run.tokenizer),
            max_context_chars=settings.max_context_chars,
            example=data.example,
        ),
        data=AdapterData(
            hash=data.data_hash,
            files=data.files,
            template=str(Path(args.template).resolve()) if args.template else None,
            counts=data.counts,
            bad_examples=[str(b) for b in data.bad[:MAX_REPORTED]],
        ),
        hyperparameters=hyper,
        metrics=metrics,
        raft=data.raft,
        init_from=InitFrom(
            name=init.name,
            created_at=init.created_at,
            version=init.version,
            data_hash=init.manifest.data.hash if init.manifest.data else None,
        )
        if init
        else None,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        version=new_version_id(),
        versions=library_versions(),
    )


def save_and_publish(
    run: Run,
    args: TuneArgs,
    model: Any,
    manifest: AdapterManifest,
    snapshot: IndexSnapshot | None = None,
    weights: dict[str, Any] | None = None,
) -> AdapterInfo:
    """Save into a staging folder, manifest last (its presence marks the folder complete),
    and move it into the registry in one rename. A RAFT adapter's index snapshot goes
    beside the manifest (``index-snapshot.json``). ``weights``: the adapter's trainable
    weights gathered whole (FSDP), saved instead of the model's own (sharded) ones."""
    settings = run.settings
    with registry_writer(settings), staging_dir(settings.adapters_dir, f"{args.name}-") as tmp:
        if args.method == "full":
            model.save_pretrained(tmp, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
        elif weights is not None:
            model.save_pretrained(tmp, state_dict=weights)
        else:
            model.save_pretrained(tmp)
        if snapshot is not None:
            snapshot.write(tmp / SNAPSHOT_FILE)
        manifest.write(tmp / MANIFEST)
        return publish(settings, tmp, args.name)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)


def _unwrapped(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _unwrapped_config(model: Any) -> Any:
    return model.peft_config[model.active_adapter]


def _build_model(
    settings: Settings,
    args: TuneArgs,
    folder: str,
    init_info: AdapterInfo | None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """Load the base model in fp32 (on a GPU the forward pass runs under bf16 autocast) on
    ``device`` and make the right parameters trainable."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.core.models import set_torch_threads, set_training_allocator

    set_torch_threads(settings)
    set_training_allocator(settings)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"cannot load base model {settings.generator!r}: {e}") from e
    model.to(device)
    torch.manual_seed(args.seed)  # LoRA init and dropout draw from the global generator
    model.config.use_cache = False  # no KV cache while training
    if args.gradient_checkpointing:
        # non-reentrant checkpointing needs no input that requires grad (frozen embeddings)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.method == "full":
        return model, device
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_info is not None:
        model = PeftModel.from_pretrained(model, str(init_info.path), is_trainable=True)
    else:
        targets: Any = args.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        cfg = LoraConfig(
            r=args.r,
            lora_alpha=args.alpha,
            lora_dropout=args.dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
            bias="none",
        )
        try:
            model = get_peft_model(model, cfg)
        except ValueError as e:
            raise InvalidInput(f"--target-modules: {e}", field="target_modules") from e
    return model, device


# ---- registry operations -------------------------------------------------------------------


def load_tuned(settings: Settings, name: str) -> tuple[Any, Any, AdapterInfo]:
    """(model, tokenizer, info) for a registered adapter on the configured generator,
    refusing an adapter trained on another base model (AdapterMismatch)."""
    import torch

    from ragtune.core.models import load_generator

    info = get_adapter(settings, name)
    if info.method == "full":
        from transformers import AutoModelForCausalLM

        from ragtune.core.models import load_tokenizer

        tok = load_tokenizer(str(info.path))
        model = AutoModelForCausalLM.from_pretrained(str(info.path), dtype=torch.float32)
        return model.eval(), tok, info
    gen = load_generator(settings)
    check_base(info, gen.model_id, gen.fingerprint)
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(gen.model, str(info.path))
    return tuned.eval(), gen.tokenizer, info


def remove_adapter(settings: Settings, name: str) -> int:
    """Remove an adapter and its interrupted run; returns the leftovers cleaned meanwhile."""
    from ragtune.core.registry import remove

    cleaned = remove(settings, name)
    shutil.rmtree(run_dir(settings, name), ignore_errors=True)
    return cleaned
