"""``TuneArgs``: every knob of one training run, as a dataclass with a docstring per field.

The CLI flags are these fields (``--lr`` is ``lr``, ``--target-modules`` is
``target_modules``), and ``ragtune tune --help`` shows the docstrings below. A TOML file
(``--config``) can hold any of them, either at top level or under ``[tune]``; flags given
on the command line win over the file. ``validate`` names the flag of every problem.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ragtune.core.config import read_toml
from ragtune.core.errors import InvalidInput
from ragtune.tuner.distributed import STRATEGIES

METHODS = ("lora", "full")
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TuneArgs:
    data: list[str] = field(default_factory=list)
    """Data files, each ``FILE`` or ``FILE:WEIGHT``; a weight scales how often that file's
    examples are drawn per epoch (2 = twice, 0.5 = a random half)."""
    name: str = ""
    """Adapter name in the registry (a safe folder name)."""
    format: str = "auto"
    """Data format: auto, prompt, alpaca, chat, squad or template."""
    template: str | None = None
    """Template file (TOML with Jinja fields) for --format template or CSV data."""
    base: str | None = None
    """Base model spec (default: the configured generator)."""
    method: str = "lora"
    """lora (an adapter) or full (full fine-tuning into a full model folder)."""
    init_from: str | None = None
    """Continue training from this registered adapter (sequential fine-tuning)."""

    raft: bool = False
    """Build RAFT-style examples: retrieved passages with the gold one present with
    probability --p-oracle, otherwise distractors only."""
    index: str | None = None
    """Index to retrieve RAFT passages from (default: the configured default index)."""
    raft_k: int | None = None
    """Passages per RAFT example (default: the top_k setting, as served)."""
    p_oracle: float = 0.8
    """Probability that the gold passage is among a RAFT example's passages."""
    raft_quote: bool = False
    """RAFT target starts with the quoted supporting sentence, then the short answer."""
    retrieval: str | None = None
    """Retrieval method for RAFT passages: dense, bm25 or hybrid (default: the setting)."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Modules that get LoRA weights (comma-separated on the command line), or 'all-linear'."""

    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    schedule: str = "cosine"
    """Learning-rate schedule after warmup: cosine, linear or constant."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: float = 1.0
    """Passes over the training data (ignored when --max-steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides --epochs)."""
    batch_size: int = 4
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch-size x grad-accum)."""
    max_length: int = 768
    """Longest example in tokens; longer ones are dropped and counted."""
    seed: int = 42
    """Seed for the split, RAFT sampling, data order, LoRA init and dropout."""

    val_fraction: float = 0.1
    """Share of examples held out for validation (0 = none)."""
    max_val_examples: int = 64
    """Cap on validation examples (validation costs a forward pass each)."""
    group_by: str | None = None
    """Record field that groups examples for the split (SQuAD: the article by default)."""
    eval_every: int = 0
    """Validate every N optimizer steps (0 = at the end of each epoch)."""
    patience: int = 0
    """Stop after this many validations without improvement (0 = never stop early)."""
    strategy: str = "ddp"
    """How --nproc N processes share the training: ddp (each holds the whole model, torch
    DDP) or fsdp (the model, frozen base and LoRA alike, is sharded over them: torch FSDP2,
    for a base model too big for one device)."""
    save_every: int = 25
    """Write a resumable checkpoint every N optimizer steps (and at each validation)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: a fraction of the memory (activations
    dominate LoRA's footprint) for ~1/3 more compute; off for speed when memory is plenty."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0 = no clipping)."""
    dedup: bool = True
    """Drop repeated examples (same question, answer and context)."""
    forgetting: bool = True
    """Measure perplexity of base and tuned model on a fixed general-text sample."""
    min_free_disk_mb: int = 200
    """Disk to keep free beyond the run's own estimate; the run refuses to start otherwise."""
    restart: bool = False
    """Discard an interrupted run's checkpoint instead of resuming from it."""
    overwrite: bool = False
    """Replace an adapter of the same name in the registry."""

    def validate(self) -> TuneArgs:
        """Check every value; raise InvalidInput naming the flag."""
        from ragtune.core.index_store import validate_name

        def bad(flag: str, msg: str) -> None:
            raise InvalidInput(f"--{flag}: {msg}", field=flag.replace("-", "_"))

        if not self.data:
            bad("data", "give at least one data file")
        for spec in self.data:
            parse_data_spec(spec)
        if not self.name:
            bad("name", "give the adapter a name")
        validate_name(self.name, "adapter")
        if self.init_from:
            validate_name(self.init_from, "adapter")
        from ragtune.tuner.formats import FORMATS

        if self.format not in FORMATS:
            bad("format", f"unknown format {self.format!r} (use {', '.join(FORMATS)})")
        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if self.method == "full" and self.init_from:
            bad("init-from", "continuing from an adapter needs --method lora")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.strategy == "fsdp" and self.method != "lora":
            bad("strategy", "fsdp trains LoRA adapters (--method lora)")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.retrieval is not None and self.retrieval not in ("dense", "bm25", "hybrid"):
            bad("retrieval", "must be dense, bm25 or hybrid")
        if not 0.0 <= self.p_oracle <= 1.0:
            bad("p-oracle", "must be between 0 and 1")
        if self.raft_k is not None and self.raft_k < 1:
            bad("raft-k", "must be at least 1")
        if self.index and not self.raft:
            bad("index", "only used with --raft")
        if self.index:
            validate_name(self.index, "index")
        for flag, v in (
            ("r", self.r),
            ("alpha", self.alpha),
            ("batch-size", self.batch_size),
            ("grad-accum", self.grad_accum),
            ("max-val-examples", self.max_val_examples),
            ("save-every", self.save_every),
        ):
            if v < 1:
                bad(flag, "must be at least 1")
        if self.max_length < 16:
            bad("max-length", "must be at least 16 tokens")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if not self.lr > 0 or self.lr > 1:
            bad("lr", "must be in (0, 1]")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup-ratio", "must be in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max-steps", "must be at least 1")
        if self.max_steps is None and not self.epochs > 0:
            bad("epochs", "must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val-fraction", "must be in [0, 1)")
        for flag, v in (
            ("eval-every", self.eval_every),
            ("patience", self.patience),
            ("min-free-disk-mb", self.min_free_disk_mb),
        ):
            if v < 0:
                bad(flag, "must not be negative")
        if self.patience and self.val_fraction == 0:
            bad("patience", "early stopping needs validation data (--val-fraction > 0)")
        if not self.target_modules:
            bad("target-modules", "name at least one module")
        return self

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TuneArgs:
        """Load from a TOML file (top level or ``[tune]``); non-None ``overrides`` win."""
        path = Path(path)
        raw = read_toml(path, "--config file", field="config")
        raw = dict(raw.get("tune", raw))
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneArgs:
        """Build from plain values (TOML, JSON); unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        norm = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            raise InvalidInput(f"unknown tune option(s): {', '.join(unknown)}", field="config")
        if isinstance(norm.get("data"), str):
            norm["data"] = [norm["data"]]
        if isinstance(norm.get("target_modules"), str):
            norm["target_modules"] = split_modules(norm["target_modules"])
        return cls(**norm)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hyperparameters(self) -> dict[str, Any]:
        """The values that shape the trained weights (recorded in the manifest)."""
        skip = {
            "data",
            "name",
            "template",
            "restart",
            "overwrite",
            "min_free_disk_mb",
            "forgetting",
            "strategy",  # how the processes share the work, not what they compute
        }
        return {k: v for k, v in asdict(self).items() if k not in skip}


def split_modules(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def parse_data_spec(spec: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:WEIGHT`` -> (file, weight). A Windows-style ``C:\\`` is not a weight."""
    path, sep, weight = spec.rpartition(":")
    if sep and path and weight and not weight.startswith(("\\", "/")):
        try:
            w = float(weight)
        except ValueError:
            return spec, 1.0
        if not w > 0:
            raise InvalidInput(f"--data {spec}: weight must be positive", field="data")
        return path, w
    return spec, 1.0


def field_docs() -> dict[str, str]:
    """Attribute docstrings of TuneArgs (the CLI shows them as flag help)."""
    return attribute_docs(TuneArgs)


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string under each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.replace("``", "").split())
    return docs
