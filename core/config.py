"""One typed settings object: defaults < TOML file < RAGTUNE_* environment < CLI flags.

Built once at the edge (CLI, ``create_app``) and passed down; no other module reads
``os.environ``. ``resolve_settings`` also reports where each value came from, which is
what ``ragtune config show`` prints.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtune.core.errors import InvalidInput

ENV_PREFIX = "RAGTUNE_"
DEFAULT_CONFIG_FILE = "ragtune.toml"

PACKAGED_EMBEDDER = "packaged:all-MiniLM-L6-v2"
PACKAGED_GENERATOR = "packaged:SmolLM2-135M-Instruct"
TUNED_EMBEDDER_PREFIX = "tuned:"  # embedder spec of a tuned embedder: tuned:NAME (core.embedders)


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "ragtune"


class Settings(BaseSettings):
    """Every knob ragtune has. Field docs are shown by ``ragtune config show --doc``."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    # --- storage ---
    data_dir: Path = Field(Path("ragtune-data"), description="Indexes, adapters and runs live here")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Materialized models (the packaged GGUF unpacked to safetensors)",
    )

    # --- models ---
    embedder: str = Field(
        PACKAGED_EMBEDDER,
        description="Embedding model: 'packaged:all-MiniLM-L6-v2', 'tuned:NAME' (a tuned embedder "
        "in the data dir), a HF model id or a local folder",
    )
    generator: str = Field(
        PACKAGED_GENERATOR,
        description="Generator: 'packaged:SmolLM2-135M-Instruct', a HF id, a folder or a .gguf file",
    )
    torch_threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default)")

    # --- embedding runtime --- (issue 12: core/embed_runtime.py)
    embedder_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="Embedder runtime: torch; onnx (ONNX Runtime, the same fp32 vectors); "
        "onnx-int8 (int8 weights: other vectors, so indexes built with it only take int8 "
        "queries). The ONNX graph is exported once into the models cache",
    )

    # --- memory --- (issue 12: core/memory.py)
    malloc_mmap_threshold_kb: int = Field(
        1024,
        ge=0,
        description="Fixed glibc mmap threshold in KiB, set when a training run starts: "
        "tensors above it go back to the system when freed, so RSS follows live memory (0 = "
        "glibc's dynamic default, which keeps up to 32 MB blocks in the heap). Serving and "
        "evaluation keep glibc's default: a fixed threshold made a served RAG answer's first "
        "token 14-22% later",
    )

    # --- indexing ---
    chunk_size: int = Field(200, ge=16, le=4096, description="Chunk size in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="Overlap between chunks in tokens")
    embed_batch_size: int = Field(64, ge=1, le=4096, description="Texts per embedding batch")
    index_type: Literal["flat", "ivf", "ivf_sq8", "ivf_pq"] = Field(
        "flat",
        description="flat = exact; ivf = IVF-Flat; ivf_sq8 = IVF + 8-bit codes (4x smaller); "
        "ivf_pq = IVF + product-quantized codes (pq_m bytes a vector)",
    )
    ivf_nlist: int = Field(0, ge=0, description="IVF cells (0 = 4*sqrt(n), chosen at build)")
    ivf_nprobe: int = Field(16, ge=1, description="IVF cells probed per query")
    ivf_train_points: int = Field(
        0, ge=0, description="Vectors IVF cells and codes train on (0 = 64 a cell, >= 10,000)"
    )
    pq_m: int = Field(0, ge=0, description="ivf_pq: sub-quantizers = bytes a vector (0 = dim/8)")
    opq: bool = Field(False, description="ivf_pq: learn an OPQ rotation before the PQ codes")
    prune: bool = Field(True, description="Reindex removes documents whose files vanished")
    skip_unchanged_files: bool = Field(
        True,
        description="Reindex does not re-read files whose size and modification time are "
        "unchanged (false: read and hash every file)",
    )

    # --- retrieval ---
    retrieval: Literal["dense", "bm25", "hybrid"] = Field("hybrid", description="Default method")
    top_k: int = Field(3, ge=1, le=100, description="Passages put into a RAG prompt")
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant")
    default_index: str = Field("default", description="Index used when a request names none")
    index_mmap: bool = Field(
        True, description="Memory-map index files when searching (processes share one copy)"
    )

    # --- generation ---
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Default generation length")
    max_new_tokens_limit: int = Field(512, ge=1, description="Largest max_new_tokens accepted")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy")
    max_context_chars: int = Field(
        1200, ge=100, description="Characters of one passage in a prompt"
    )

    # --- inference kernels --- (issue 12: core/multi_lora.py)
    lora_kernel: Literal["gathered", "peft"] = Field(
        "gathered",
        description="How rows with different LoRA adapters run: 'gathered' = one batched "
        "matmul pair per layer for all rows (stacked adapter weights, an index per row); "
        "'peft' = peft's mixed-batch path (one sub-batch per adapter per layer)",
    )
    prefill_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Precision of prompt prefill on the CPU: bfloat16 runs it under autocast "
        "with bf16 weight copies made once (36% shorter time to first token measured here, "
        "bench/results/ttft.txt; a bf16 copy of the weights in memory; answers can differ "
        "slightly); decode steps stay in the model's precision",
    )

    # --- service ---
    host: str = Field("127.0.0.1", description="Bind address of `ragtune serve`")
    port: int = Field(8000, ge=1, le=65535, description="Port of `ragtune serve`")
    api_keys: list[str] = Field(default_factory=list, description="Bearer tokens; empty = open")
    max_loaded_adapters: int = Field(4, ge=1, description="Adapters held in memory (LRU)")
    batch_window_ms: float = Field(20.0, ge=0, description="Wait this long to fill a batch")
    max_batch_size: int = Field(8, ge=1, le=256, description="Requests generated together")
    queue_size: int = Field(64, ge=1, description="Requests waiting; more get 503")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request generation timeout")
    max_body_bytes: int = Field(64_000, ge=1024, description="Largest request body")
    max_question_chars: int = Field(4000, ge=1, description="Longest question accepted")

    # --- service limits --- (token budgets, prefill chunks, slow clients, shutdown)
    max_prompt_tokens: int = Field(
        2048,
        ge=16,
        description="Longest rendered prompt in tokens (passages are trimmed to fit; a "
        "question or history that does not fit is a 400); the model's context also bounds it",
    )
    prefill_chunk_tokens: int = Field(
        512,
        ge=16,
        description="A prompt longer than this is prefilled in chunks of this many tokens, "
        "so other requests are served between them and a cancelled one stops",
    )
    prefill_batch_tokens: int = Field(
        512,
        ge=16,
        description="Most prompt positions one prefill pass runs (rows x the longest new "
        "part): a burst's short prompts share passes up to this, the rest take the next "
        "ones, so each row's first token comes sooner (a prompt over half of it does not wait "
        "for the batch window). On this CPU one pass over prompts of ~500 tokens cost as much "
        "as the same prompts one by one, or more (bench/results/ttft.txt); raise it on a GPU",
    )
    prefix_cache_mb: float = Field(
        0.0,
        ge=0,
        description="Keep the key/value states of prompt prefixes that later prompts may "
        "share (the same top passages), up to this many MB; 0 = only the fixed preamble",
    )
    openai_answer: Literal["first_line", "full"] = Field(
        "first_line",
        description="OpenAI routes: answer with the first line (the QA span) or the whole "
        "generated text (a request's ragtune.answer overrides it)",
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must send its request headers within this"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive whole within this"
    )
    max_connections: int = Field(
        512, ge=1, description="Open HTTP connections; more are answered 503 and closed"
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, requests in flight get this long to finish; the rest get 503",
    )

    # --- devices and the generation backend --- (GPU execution; generation on a server)
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="torch device for the generator, the embedder and training: auto (CUDA "
        "where present, else the CPU), cpu, cuda or cuda:N",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Generator weights (and training autocast): auto = bfloat16 on a GPU "
        "that supports it, float32 on the CPU",
    )
    generator_backend: Literal["local", "openai"] = Field(
        "local",
        description="local: generate in this process; openai: send the rendered prompts to an "
        "OpenAI-compatible server (vLLM, another ragtune) at generator_url",
    )
    generator_url: str = Field(
        "",
        pattern=r"^(https?://[^\s/]+(/[^\s]*)?)?$",
        description="Base URL of the generation server (http://host:8000; a trailing /v1 is "
        "allowed)",
    )
    generator_api_key: str = Field(
        "", description="Bearer token sent to the generation server (empty: none)"
    )
    generator_model: str = Field(
        "",
        description="The base model's id on the generation server (its --served-model-name; "
        "empty: the generator's short name, as /v1/models shows it)",
    )
    generator_adapter_dir: str = Field(
        "",
        description="The adapter registry folder as the generation server sees it (a shared "
        "volume mounted elsewhere); empty: the same path as here",
    )
    generator_connect_timeout_s: float = Field(
        5.0, gt=0, description="Connecting to the generation server (then 503)"
    )
    generator_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest wait for the generation server's next bytes (then 504)",
    )
    generator_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a call the server never started (connection refused or "
        "reset, 502/503 from it), with exponential backoff",
    )
    generator_retry_backoff_s: float = Field(
        0.25, ge=0, description="First retry's delay; each next one doubles it"
    )
    lora_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders besides the registry that POST /v1/load_lora_adapter may load "
        "adapters from (comma-separated in RAGTUNE_LORA_DIRS)",
    )

    # --- keys and decisions --- (scoped API keys in a file; published decisions)
    api_keys_file: Path | None = Field(
        None,
        description="Scoped API keys, hashed (ragtune keys add|list|rm); default "
        "<data_dir>/api-keys.json. Keys in api_keys have every scope",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        # RAGTUNE_API_KEYS="a,b" is the natural way to pass a list through the environment.
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("lora_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [d.strip() for d in v.split(",") if d.strip()]
        return v

    @model_validator(mode="after")
    def _backend_has_url(self) -> Settings:
        if self.generator_backend == "openai" and not self.generator_url:
            raise ValueError("generator_backend 'openai' needs generator_url")
        return self

    # --- derived paths ---
    @property
    def indexes_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def embedders_dir(self) -> Path:
        return self.data_dir / "embedders"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def models_cache_dir(self) -> Path:
        return self.cache_dir / "models"


def read_toml(path: Path, what: str = "config file", field: str | None = None) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax is an InvalidInput naming ``what``."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InvalidInput(f"{what} not found: {path}", field=field) from e
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{what} {path.name} is not valid TOML: {e}", field=field) from e


def _read_toml(path: Path) -> dict[str, Any]:
    raw = read_toml(path)
    # Allow a [ragtune] table or top-level keys.
    return dict(raw.get("ragtune", raw))


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def resolve_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Build the settings and say where each value came from.

    Args:
        config_file: a TOML file; if None, ``$RAGTUNE_CONFIG`` or ``./ragtune.toml`` when present.
        overrides: values from CLI flags (None values are ignored).
        environ: the environment to read (defaults to ``os.environ``; tests pass their own).

    Returns:
        (settings, sources) where sources maps each field to "default", "file <path>",
        "env RAGTUNE_X" or "flag".
    """
    env = os.environ if environ is None else environ
    if config_file is None:
        if env.get("RAGTUNE_CONFIG"):
            config_file = Path(env["RAGTUNE_CONFIG"])
        elif Path(DEFAULT_CONFIG_FILE).is_file():
            config_file = Path(DEFAULT_CONFIG_FILE)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        file_vals = _read_toml(Path(config_file))
        unknown = sorted(set(file_vals) - set(Settings.model_fields))
        if unknown:
            raise InvalidInput(
                f"config file {config_file}: unknown setting(s) {', '.join(unknown)}"
            )
        layers.append((f"file {config_file}", file_vals))
    env_vals = _env_values(env)
    layers.append(("env", env_vals))
    flag_vals = {k: v for k, v in (overrides or {}).items() if v is not None}
    layers.append(("flag", flag_vals))

    merged: dict[str, Any] = {}
    sources = {name: "default" for name in Settings.model_fields}
    for label, vals in layers:
        for k, v in vals.items():
            merged[k] = v
            sources[k] = f"env {ENV_PREFIX}{k.upper()}" if label == "env" else label
    try:
        # init kwargs only: the layering above is ours, so pydantic-settings must not read env too.
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"])
            problems.append(f"{name} ({sources.get(name, '?')}): {err['msg']}")
        raise InvalidInput("invalid settings: " + "; ".join(problems)) from e
    return settings, sources


def load_settings(
    config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Shorthand for ``resolve_settings(...)[0]``."""
    return resolve_settings(config_file, overrides)[0]
