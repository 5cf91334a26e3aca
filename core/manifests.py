"""The artifact formats: an index version's, an adapter's and a tuned embedder's
``manifest.json``, typed.

The indexer writes ``IndexManifest``, the tuner ``AdapterManifest`` and ``EmbedderManifest``;
everything else reads
them through the same classes, so a key is spelled in one place. The JSON keys are the ones
ragtune has always written: data folders made before these types existed read as they are.

Reading checks the file is a JSON object, that its ``schema_version`` is one this ragtune
knows, then every field's type; any failure raises ``ManifestError`` naming the file and the
problem. An adapter manifest without ``schema_version`` (one made by hand or by a script that
fills only the required keys) reads as version 1 with its optional sections empty; an index
manifest has always carried its version, so one without is corrupt.

Writing is atomic (``core.atomic``) and leaves out the fields that are None, as the tuner and
the indexer always did for optional sections (perplexity, duplicates, ...); reading fills them
back in as None, so a write then read gives an equal object.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from ragtune.core.atomic import write_text_atomic
from ragtune.core.errors import ManifestError

MANIFEST = "manifest.json"
INDEX_SCHEMA_VERSION: Final = 2
LEGACY_INDEX_SCHEMA_VERSION: Final = 1  # chunks.jsonl, before the chunk store
ADAPTER_SCHEMA_VERSION: Final = 1
EMBEDDER_SCHEMA_VERSION: Final = 1


def new_version_id() -> str:
    """A version id for an index version or one training of an adapter: sortable and unique
    (UTC time to the second plus a random suffix, so two builds in one second differ)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class _Model(BaseModel):
    # Unknown keys are ignored: a newer ragtune may add an optional key without a new schema.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Manifest(_Model):
    KIND: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    # The version a file without "schema_version" is read as; None: such a file is corrupt.
    UNVERSIONED_READS_AS: ClassVar[int | None] = None

    @classmethod
    def read(cls, path: Path, *, hint: str = "") -> Self:
        """Parse and check ``path``; ManifestError (naming the file, plus ``hint``) if unusable."""

        def fail(problem: str) -> ManifestError:
            return ManifestError(
                f"{cls.KIND} manifest {path} {problem}" + (f"; {hint}" if hint else ""),
                path=str(path),
                problem=problem,
            )

        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise fail("is missing") from None
        except OSError as e:
            raise fail(f"cannot be read ({e.strerror or type(e).__name__})") from e
        except json.JSONDecodeError as e:
            raise fail(f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
        except UnicodeDecodeError as e:
            raise fail("is not UTF-8 text") from e
        if not isinstance(data, dict):
            raise fail(f"is not a JSON object (found {type(data).__name__})")
        version = data.get("schema_version", cls.UNVERSIONED_READS_AS)
        if version is None:
            raise fail("has no schema_version")
        if type(version) is not int or version != cls.SCHEMA_VERSION:
            raise fail(
                f"has schema version {version!r}, but this ragtune reads version "
                f"{cls.SCHEMA_VERSION} (was it written by another ragtune release?)"
            )
        try:
            return cls.model_validate({**data, "schema_version": version})
        except ValidationError as e:
            raise fail(f"has wrong or missing fields: {_describe(e)}") from e

    def to_json(self) -> dict[str, Any]:
        """The JSON object as written to disk (None fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a part."""
        # pydantic's serializer: ~10x faster than json.dumps(indent=...) on a large document
        # table; keys come in field order (schema_version first).
        write_text_atomic(path, self.model_dump_json(indent=1, exclude_none=True) + "\n")


def _describe(e: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in e.errors(include_url=False)[:limit]:
        where = ".".join(str(x) for x in err["loc"]) or "the object"
        if err["type"] == "missing":
            parts.append(f"{where}: missing")
        else:
            got = repr(err["input"])
            got = got if len(got) <= 40 else got[:37] + "..."
            parts.append(f"{where}: {err['msg']} (found {got})")
    more = e.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# ---- index -------------------------------------------------------------------------------

IndexType = Literal["flat", "ivf", "ivf_sq8", "ivf_pq"]


class ChunkerConfig(_Model):
    """What decides the chunks; a change to any of it means re-chunking every document."""

    chunk_size: int
    chunk_overlap: int
    tokenizer: str  # the embedder model id: another tokenizer counts tokens differently
    method: str  # the chunking algorithm (indexer.chunking.CHUNK_METHOD)


class IvfInfo(_Model):
    """The IVF settings, and the trained cells and codes when the index was built as IVF."""

    requested_nlist: int  # the ivf_nlist setting (0: chosen from the corpus size)
    nlist: int | None = None  # cells of the built index (IVF types only)
    trained_on: int | None = None  # corpus size when the cells were trained (retrain on drift)
    train_points: int | None = None  # vectors the cells and codes were trained on (a sample)
    requested_pq_m: int = 0  # the pq_m setting (0: dimension / 8)
    pq_m: int | None = None  # PQ sub-quantizers = bytes per vector (ivf_pq only)
    opq: bool = False  # an OPQ rotation before the PQ codes (ivf_pq only)


class IndexCounts(_Model):
    documents: int
    chunks: int


class Bm25Info(_Model):
    """The persisted BM25 model (``bm25/``, bm25s's format): parameters and sizes."""

    k1: float
    b: float
    method: str  # bm25s scoring variant
    vocabulary: int  # tokens in the vocabulary (append-only between full builds)
    avg_length: float  # mean tokens per chunk


FieldKind = Literal["text", "number", "date", "bool", "mixed"]


class FieldInfo(_Model):
    """One filterable metadata field: what its values are and how many chunks carry it."""

    kind: FieldKind
    chunks: int


class IndexManifest(_Manifest):
    """``indexes/<name>/versions/<version>/manifest.json``: one version of one index.

    Schema 2: chunk texts, metadata and the per-document table live in the index's SQLite
    chunk store (shared by every version, rows tagged with the versions that hold them); the
    version folder holds the FAISS index, the BM25 model, the filter columns and this file.
    """

    KIND: ClassVar[str] = "index"
    SCHEMA_VERSION: ClassVar[int] = INDEX_SCHEMA_VERSION

    schema_version: Literal[2] = INDEX_SCHEMA_VERSION
    name: str
    version: str
    previous_version: str | None = None
    seq: int  # the version's number in the chunk store (rows carry born/died seqs)
    created: str  # when the index was first built (UTC, ISO 8601)
    updated: str  # when this version was written
    embedding_model: str
    embedding_dim: int
    metric: Literal["inner_product"] = "inner_product"
    normalized: bool = True  # vectors are L2-normalized: inner product is cosine similarity
    index_type: IndexType  # what was built
    requested_index_type: IndexType  # the setting (small corpora get flat)
    ivf: IvfInfo
    chunker: ChunkerConfig
    counts: IndexCounts
    next_int_id: int  # chunk ids are never reused: a reader of an old version stays right
    bm25: Bm25Info
    fields: dict[str, FieldInfo]  # filterable metadata fields, in column order


class LegacyDocumentEntry(_Model):
    """One row of a schema-1 manifest's per-document table."""

    sha256: str
    source: str
    chunks: list[int]


class LegacyIvfInfo(_Model):
    requested_nlist: int
    type: Literal["ivf"] | None = None
    nlist: int | None = None
    trained_on: int | None = None


class LegacyIndexManifest(_Manifest):
    """A schema-1 index version (``chunks.jsonl`` + ``index.faiss``, written before the chunk
    store). Readers refuse it with a message saying how to convert it; only the indexer reads
    it, to convert such a version in place without re-embedding (indexer.legacy)."""

    KIND: ClassVar[str] = "index"
    SCHEMA_VERSION: ClassVar[int] = LEGACY_INDEX_SCHEMA_VERSION

    schema_version: Literal[1] = LEGACY_INDEX_SCHEMA_VERSION
    name: str
    version: str
    previous_version: str | None = None
    created: str
    updated: str
    embedding_model: str
    embedding_dim: int
    metric: Literal["inner_product"] = "inner_product"
    normalized: bool = True
    index_type: Literal["flat", "ivf"]
    requested_index_type: Literal["flat", "ivf"]
    ivf: LegacyIvfInfo
    chunker: ChunkerConfig
    counts: IndexCounts
    next_int_id: int
    documents: dict[str, LegacyDocumentEntry]


def index_schema_version(path: Path) -> int | None:
    """The ``schema_version`` of an index manifest, or None when it cannot be read as JSON
    (reading it with ``IndexManifest.read`` then names the problem)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    version = data.get("schema_version") if isinstance(data, dict) else None
    return version if type(version) is int else None


# ---- adapter -----------------------------------------------------------------------------


class PromptExample(_Model):
    prompt: str
    completion: str


class PromptInfo(_Model):
    """The prompt format the adapter was trained with (serving renders the same one)."""

    version: str
    template_id: str
    max_context_chars: int
    example: PromptExample | None = None  # the first training example, rendered


class DataFile(_Model):
    """One --data file as it was read."""

    file: str
    path: str | None = None  # where it was read from (absolute): --retrain reads it again
    sha256: str
    format: str
    weight: float
    records: int
    examples: int
    bad: int
    template_sha256: str | None = None  # with --template


class DataCounts(_Model):
    """Examples at each step of data preparation."""

    records: int
    bad: int
    loaded: int
    duplicates: int | None = None  # with --dedup
    val_capped_to: int | None = None  # when --max-val-examples cut the validation split
    too_long_train: int
    too_long_val: int
    train: int
    val: int
    train_tokens: int
    target_tokens: int


class AdapterData(_Model):
    hash: str  # over every file's sha256, format, weight and template: the run key's data part
    files: list[DataFile]
    template: str | None = None  # the --template file's path (absolute), for --retrain
    counts: DataCounts
    bad_examples: list[str] = []  # the first few bad records, for the person reading


class TrainPoint(_Model):
    """One validation during training."""

    step: int
    epoch: int
    train_loss: float
    val_loss: float


class Perplexity(_Model):
    """General-text perplexity before and after tuning (forgetting check)."""

    base: float
    tuned: float
    ratio: float
    tokens: int
    sample: str


class TrainMetrics(_Model):
    train_loss: float | None = None
    val_loss: float | None = None  # None without a validation split
    best_step: int | None = None
    steps: int
    total_steps: int
    steps_per_epoch: int
    stopped_early: bool
    history: list[TrainPoint] = []
    tokens: int
    tokens_per_s: float
    train_seconds: float
    wall_seconds: float
    resumed_from_step: int | None = None
    peak_rss_mb: float
    trainable_params: int
    perplexity: Perplexity | None = None  # with --forgetting
    processes: int | None = None  # training processes (tune --nproc N; None: one)
    strategy: str | None = None  # how they shared the work: "ddp" or "fsdp"


class RaftSplitStats(_Model):
    examples: int
    oracle: int  # gold document among the passages
    gold_retrieved: int  # retrieval found the gold document in its own top-k
    gold_inserted: int  # retrieval missed it and it was put in
    no_gold: int  # example without a known gold document
    oracle_rate: float
    retrieval_recall: float | None = None


class SnapshotRef(_Model):
    """An index version's chunks, as a digest and counts (``core.index_changes``: the full
    snapshot, document by document, lives in ``index-snapshot.json`` beside the manifest)."""

    index: str
    version: str
    chunks: int
    documents: int
    digest: str  # sha256 over the sorted (document, chunk ids) pairs


class RaftInfo(_Model):
    """Where the RAFT passages came from (the index version pins them)."""

    index: str
    index_version: str
    p_oracle: float
    k: int
    retrieval: str
    quote: bool
    embedding_model: str
    stats: dict[str, RaftSplitStats]  # "train" and "val"
    snapshot: SnapshotRef | None = None  # the index version's chunks (None: older adapters)


class InitFrom(_Model):
    """The adapter this one continued training from (--init-from)."""

    name: str
    created_at: str | None = None
    version: str | None = None
    data_hash: str | None = None


class AdapterManifest(_Manifest):
    """``adapters/<name>/manifest.json``, written last: its presence marks the folder complete.

    Only ``base_model`` is required: a hand-made manifest (or an old unversioned one) with
    just the base model reads fine; the tuner always writes every section.
    """

    KIND: ClassVar[str] = "adapter"
    SCHEMA_VERSION: ClassVar[int] = ADAPTER_SCHEMA_VERSION
    UNVERSIONED_READS_AS: ClassVar[int | None] = 1

    schema_version: Literal[1] = ADAPTER_SCHEMA_VERSION
    name: str | None = None  # the registry folder's name is authoritative
    method: Literal["lora", "full"] = "lora"
    base_model: str
    base_spec: str | None = None  # the generator spec to load the base with
    base_fingerprint: str | None = None  # base weights' hash: refuses another base model
    prompt_template: str | None = None
    prompt: PromptInfo | None = None
    data: AdapterData | None = None
    hyperparameters: dict[str, Any] = {}  # the TuneArgs values that shape the weights
    metrics: TrainMetrics | None = None
    raft: RaftInfo | None = None
    init_from: InitFrom | None = None
    created_at: str | None = None  # UTC, ISO 8601, to the second
    # Identifies one training of a name (None in manifests written before it existed).
    version: str | None = None
    versions: dict[str, str] = {}  # python and library versions it was trained with


# ---- tuned embedder ----------------------------------------------------------------------


class EmbedderCounts(_Model):
    """Examples at each step of preparing (question, gold passage) pairs."""

    records: int
    bad: int
    loaded: int
    duplicates: int | None = None  # with --dedup
    no_passage: int  # examples whose gold passage is neither in the index nor in the data
    val_capped_to: int | None = None  # when --max-val-examples cut the validation split
    train: int  # training pairs
    val: int  # validation questions
    train_groups: int
    val_groups: int


class EmbedderData(_Model):
    hash: str  # over every file's sha256, format, weight and template
    files: list[DataFile]
    counts: EmbedderCounts
    bad_examples: list[str] = []


class MiningInfo(_Model):
    """Where the hard negatives came from: the live index (its version pins them)."""

    index: str
    index_version: str
    embedding_model: str  # the embedder that built (and searched) that index
    retrieval: str  # dense, bm25 or hybrid
    depth: int  # hits searched per question
    per_pair: int  # hard negatives per training pair
    mined: int  # negatives taken from the hits
    filled: int  # pairs short of hits, filled with random passages of the index
    skipped_answer: int  # hits left out because they contain the answer (likely positives)
    skipped_similar: int = 0  # hits left out for scoring too close to the gold passage
    gold_in_depth: float  # share of training questions whose gold passage was in the hits


class RetrievalPoint(_Model):
    """Validation retrieval of one checkpoint (step 0 = the base model)."""

    step: int
    epoch: float
    recall: dict[str, float]  # "k" -> recall@k over the validation questions
    mrr: float  # MRR@10
    train_loss: float | None = None  # mean loss since the previous validation


class EmbedderMetrics(_Model):
    k: int  # the checkpoint is chosen on recall@k (then MRR@10)
    val_questions: int
    val_corpus: int  # passages the validation questions were searched in
    base: RetrievalPoint | None = None  # None without a validation split
    best: RetrievalPoint | None = None
    improved: bool  # the best checkpoint beats the base (else the base weights are kept)
    history: list[RetrievalPoint] = []
    steps: int
    total_steps: int
    steps_per_epoch: int
    stopped_early: bool
    pairs_per_s: float
    train_seconds: float
    wall_seconds: float
    resumed_from_step: int | None = None
    peak_rss_mb: float


class EmbedderManifest(_Manifest):
    """``embedders/<name>/manifest.json``, written last: its presence marks the folder complete.

    ``model_id`` (``name@version``) is what an index built with this embedder records, so an
    index is never searched with another training of the same name.
    """

    KIND: ClassVar[str] = "embedder"
    SCHEMA_VERSION: ClassVar[int] = EMBEDDER_SCHEMA_VERSION

    schema_version: Literal[1] = EMBEDDER_SCHEMA_VERSION
    name: str
    version: str
    model_id: str
    method: Literal["full"] = "full"
    base_model: str  # the model id of the embedder it was trained from
    base_spec: str  # the embedder spec it was trained from
    base_fingerprint: str  # content hash of the base weights
    dim: int
    max_seq_length: int
    data: EmbedderData
    mining: MiningInfo | None = None  # None when trained with in-batch negatives only
    hyperparameters: dict[str, Any] = {}
    metrics: EmbedderMetrics
    created_at: str
    versions: dict[str, str] = {}
