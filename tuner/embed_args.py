"""``EmbedTuneArgs``: every knob of one embedder training, a dataclass with a docstring per field.

As with ``TuneArgs``, the fields are the flags of ``ragtune tune-embedder`` (``--hard-negatives``
is ``hard_negatives``) and the keys of its ``--config`` TOML file (top level or
``[tune-embedder]``); the docstrings are the flags' help, and ``validate`` names the flag of
every problem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragtune.core.config import read_toml
from ragtune.core.errors import InvalidInput
from ragtune.tuner.args import attribute_docs, parse_data_spec

RETRIEVALS = ("dense", "bm25", "hybrid")
SCHEDULES = ("linear", "cosine", "constant")
TOML_TABLE = "tune-embedder"


@dataclass
class EmbedTuneArgs:
    data: list[str] = field(default_factory=list)
    """Data files, each ``FILE`` or ``FILE:WEIGHT`` (the formats ``ragtune tune`` reads); each
    question is paired with its gold passage (SQuAD: its paragraph; JSONL: ``doc_id`` or
    ``context``)."""
    name: str = ""
    """Name of the tuned embedder in the registry; use it as ``--embedder tuned:NAME``."""
    format: str = "auto"
    """Data format: auto, prompt, alpaca, chat, squad or template."""
    template: str | None = None
    """Template file (TOML with Jinja fields) for --format template or CSV data."""
    base: str | None = None
    """Embedder to start from (default: the configured embedder)."""

    index: str | None = None
    """Index to mine hard negatives from and to validate in (default: the default_index
    setting). It must have been built with the configured embedder."""
    hard_negatives: int = 2
    """Hard negatives per pair: top hits of the index that are not the gold passage
    (0 = in-batch negatives only). Two by default: chosen on the validation split
    (bench/results/embedder.txt)."""
    mine_depth: int = 10
    """Hits searched per question when mining; the negatives are drawn from the non-gold
    ones among them, hardest first."""
    mine_retrieval: str = "dense"
    """Retrieval method that mines the negatives: dense, bm25 or hybrid."""
    skip_answer_negatives: bool = True
    """Do not use a hit that contains the answer text as a negative (it may answer too)."""
    max_negative_ratio: float = 0.0
    """Do not use a hit whose similarity to the question (the index embedder's cosine) is above
    this share of the gold passage's: that close to the gold, it probably answers too. Needs no
    answer text, so it works where answers are free text (forums, reviews); 0.95 is
    NV-Retriever's "TopK-PercPos". 0 = off."""

    epochs: float = 1.0
    """Passes over the training pairs (ignored when --max-steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides --epochs)."""
    max_pairs: int | None = None
    """Train on a seeded sample of at most this many pairs (bounds the CPU time)."""
    batch_size: int = 32
    """Pairs per step; every other pair's passages are in-batch negatives."""
    lr: float = 1e-4
    """Peak learning rate (AdamW), reached after the warmup (1e-4 beat 3e-5 on the SQuAD
    validation split: bench/results/embedder.txt)."""
    schedule: str = "linear"
    """After the warmup: linear (decay to zero at the last step), cosine or constant."""
    warmup_ratio: float = 0.1
    """Fraction of the steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    scale: float = 20.0
    """Similarity scale of the ranking loss (1 / temperature)."""
    max_seq_length: int = 128
    """Tokens per text while training (0: the model's own limit); longer passages are cut.
    Indexing still embeds whole chunks; 128 trains ~4x faster than 256 on a CPU."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0 = no clipping)."""
    seed: int = 42
    """Seed for the split, sampling, mining draws and batch order."""

    val_fraction: float = 0.1
    """Share of the examples held out for validation, by group (SQuAD: by article)."""
    max_val_examples: int = 300
    """Cap on validation questions (a seeded sample)."""
    val_k: int | None = None
    """The checkpoint with the best validation recall@k is kept (default: the top_k setting)."""
    max_val_corpus: int = 20000
    """Passages the validation questions are searched in: the whole index when it is at most
    this big, else the validation gold passages, their hard negatives and a seeded sample."""
    evals_per_epoch: int = 4
    """Validate this many times per epoch, evenly spaced (the last at the epoch's end), so that
    the best checkpoint is not lost between two validations."""
    eval_every: int = 0
    """Validate every N optimizer steps instead (and at each epoch's end; 0 = use
    --evals-per-epoch)."""
    patience: int = 0
    """Stop after this many validations without improvement (0 = never stop early)."""
    save_every: int = 50
    """Write a resumable checkpoint every N optimizer steps (and at each validation)."""
    group_by: str | None = None
    """Record field that groups examples for the split (SQuAD: the article by default)."""
    dedup: bool = True
    """Drop repeated examples (same question, answer and passage)."""
    min_free_disk_mb: int = 200
    """Disk to keep free beyond the run's own estimate; the run refuses to start otherwise."""
    restart: bool = False
    """Discard an interrupted run's checkpoint instead of resuming from it."""
    overwrite: bool = False
    """Replace a tuned embedder of the same name (indexes built with it must be rebuilt)."""

    def validate(self) -> EmbedTuneArgs:
        """Check every value; raise InvalidInput naming the flag."""
        from ragtune.core.index_store import validate_name
        from ragtune.tuner.formats import FORMATS

        def bad(flag: str, msg: str) -> None:
            raise InvalidInput(f"--{flag}: {msg}", field=flag.replace("-", "_"))

        if not self.data:
            bad("data", "give at least one data file")
        for spec in self.data:
            parse_data_spec(spec)
        if not self.name:
            bad("name", "give the tuned embedder a name")
        validate_name(self.name, "embedder")
        if self.index:
            validate_name(self.index, "index")
        if self.format not in FORMATS:
            bad("format", f"unknown format {self.format!r} (use {', '.join(FORMATS)})")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.mine_retrieval not in RETRIEVALS:
            bad("mine-retrieval", f"must be one of {', '.join(RETRIEVALS)}")
        for flag, v in (
            ("batch-size", self.batch_size),
            ("mine-depth", self.mine_depth),
            ("max-val-examples", self.max_val_examples),
            ("max-val-corpus", self.max_val_corpus),
            ("save-every", self.save_every),
            ("evals-per-epoch", self.evals_per_epoch),
        ):
            if v < 1:
                bad(flag, "must be at least 1")
        if self.batch_size < 2:
            bad("batch-size", "in-batch negatives need at least 2 pairs per step")
        for flag, opt in (
            ("max-steps", self.max_steps),
            ("max-pairs", self.max_pairs),
            ("val-k", self.val_k),
        ):
            if opt is not None and opt < 1:
                bad(flag, "must be at least 1")
        if self.max_seq_length and self.max_seq_length < 8:
            bad("max-seq-length", "must be 0 (the model's limit) or at least 8 tokens")
        for flag, v in (
            ("hard-negatives", self.hard_negatives),
            ("eval-every", self.eval_every),
            ("patience", self.patience),
            ("min-free-disk-mb", self.min_free_disk_mb),
        ):
            if v < 0:
                bad(flag, "must not be negative")
        if self.hard_negatives > self.mine_depth:
            bad("hard-negatives", f"cannot exceed --mine-depth ({self.mine_depth})")
        if not self.lr > 0 or self.lr > 1:
            bad("lr", "must be in (0, 1]")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup-ratio", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight-decay", "must not be negative")
        if not 0.0 <= self.max_negative_ratio <= 1.0:
            bad("max-negative-ratio", "must be in [0, 1] (0 = off)")
        if not self.scale > 0:
            bad("scale", "must be positive")
        if self.grad_clip < 0:
            bad("grad-clip", "must not be negative")
        if self.max_steps is None and not self.epochs > 0:
            bad("epochs", "must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val-fraction", "must be in [0, 1)")
        if self.patience and self.val_fraction == 0:
            bad("patience", "early stopping needs validation data (--val-fraction > 0)")
        return self

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> EmbedTuneArgs:
        """Load from a TOML file (top level or ``[tune-embedder]``); non-None overrides win."""
        raw = read_toml(Path(path), "--config file", field="config")
        raw = dict(raw.get(TOML_TABLE, raw))
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EmbedTuneArgs:
        """Build from plain values (TOML, JSON); unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        norm = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            raise InvalidInput(
                f"unknown tune-embedder option(s): {', '.join(unknown)}", field="config"
            )
        if isinstance(norm.get("data"), str):
            norm["data"] = [norm["data"]]
        return cls(**norm)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hyperparameters(self) -> dict[str, Any]:
        """The values that shape the trained weights (recorded in the manifest)."""
        skip = {"data", "name", "template", "restart", "overwrite", "min_free_disk_mb"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def field_docs() -> dict[str, str]:
    """Attribute docstrings of EmbedTuneArgs (the CLI shows them as flag help)."""
    return attribute_docs(EmbedTuneArgs)
