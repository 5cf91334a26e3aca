"""The embedder's runtime: torch (sentence-transformers as is) or ONNX Runtime, fp32 or int8.

``settings.embedder_backend``:

- ``torch``: ``SentenceTransformer(folder)``, as always.
- ``onnx``: the same SentenceTransformer (its tokenizer, batching, pooling and normalization),
  with the transformer's forward pass run by ONNX Runtime on a graph exported once from the
  configured model. Vectors equal torch's to ~1e-7 in cosine, so an index built with one of
  the two answers queries embedded with the other (same model id).
- ``onnx-int8``: that graph with its matrix multiplications dynamically quantized to int8
  (per channel). Its vectors are not fp32 vectors (cosine ~1e-2 from them), so it gets its
  own model id (``<id>+int8``): an index built with it refuses queries from the others and
  the other way round (``IndexMismatch``).

The export is offline and happens once per model and runtime: it is cached under
``<models_cache_dir>/onnx/<model>-<weights hash>-torch<v>-ort<v>-<fp32|int8>/`` (written
atomically). sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, whose newest
release (0.1.0) requires transformers < 4.58 and does not import under the transformers 5
that sentence-transformers 6 needs; so the graph is exported with torch's own exporter
(``torch.onnx.export``, dynamo) and run with onnxruntime directly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core.atomic import replace_dir, staging_dir
from ragtune.core.errors import ModelNotFound

if TYPE_CHECKING:
    from ragtune.core.config import Settings
    from ragtune.core.models import ModelLocation

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
INT8_SUFFIX = "+int8"  # model id suffix of int8 vectors
GRAPH_FILE = "model.onnx"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INSTALL = "pip install 'ragtune[onnx]' (onnxruntime and onnxscript)"


def backend_model_id(model_id: str, backend: str) -> str:
    """The id an index records for vectors from this backend: fp32 backends share the
    model's id, int8 vectors get their own."""
    return model_id + INT8_SUFFIX if backend == "onnx-int8" else model_id


def mismatch_hint(built_with: str, configured: str) -> str:
    """What to change when an index's embedder id and the configured one differ only in the
    runtime (int8 or not)."""
    if built_with.removesuffix(INT8_SUFFIX) != configured.removesuffix(INT8_SUFFIX):
        return ""
    if built_with.endswith(INT8_SUFFIX):
        return " (the index holds int8 vectors: set embedder_backend = 'onnx-int8')"
    return " (the index holds fp32 vectors: set embedder_backend = 'torch' or 'onnx')"


def open_sentence_transformer(settings: Settings, loc: ModelLocation) -> Any:
    """The configured embedder as a SentenceTransformer on the configured backend."""
    from sentence_transformers import SentenceTransformer

    from ragtune.core.devices import resolve_device

    backend = settings.embedder_backend
    # ONNX Runtime runs here on the CPU; torch follows the device setting (a GPU where present).
    device = resolve_device(settings) if backend == "torch" else "cpu"
    try:
        model = SentenceTransformer(str(loc.path) if loc.path else loc.spec, device=device)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"cannot load embedder {settings.embedder!r}: {e}") from e
    if backend == "torch":
        return model
    graph = exported_graph(settings, loc, model, int8=backend == "onnx-int8")
    use_onnx_runtime(model, graph, settings.torch_threads)
    return model


def _transformer(model: Any) -> Any:
    first = model[0]
    if not hasattr(first, "model") or not hasattr(first, "tokenizer"):
        raise ModelNotFound(
            "embedder_backend 'onnx' needs a sentence-transformers model whose first module "
            f"is a Transformer (this one starts with {type(first).__name__})"
        )
    return first


def _versions() -> tuple[str, str]:
    try:
        import onnxruntime
        import torch
    except ImportError as e:
        raise ModelNotFound(f"embedder_backend 'onnx' needs ONNX Runtime: {_INSTALL}") from e
    return torch.__version__.split("+")[0], onnxruntime.__version__


def graph_dir(settings: Settings, loc: ModelLocation, int8: bool) -> Path:
    """Where the exported graph of this model, runtime and precision is cached."""
    from ragtune.core.models import folder_fingerprint

    torch_v, ort_v = _versions()
    weights = folder_fingerprint(loc.path) if loc.path is not None else "hub:" + loc.spec
    digest = hashlib.sha1(weights.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", loc.model_id)
    kind = "int8" if int8 else "fp32"
    return settings.models_cache_dir / "onnx" / f"{name}-{digest}-torch{torch_v}-ort{ort_v}-{kind}"


def exported_graph(settings: Settings, loc: ModelLocation, model: Any, int8: bool) -> Path:
    """The ONNX graph of the model's transformer (exported and cached on first use)."""
    dest = graph_dir(settings, loc, int8)
    if (dest / GRAPH_FILE).is_file():
        return dest / GRAPH_FILE
    t0 = time.perf_counter()
    log.info("exporting %s to ONNX (%s, once) into %s", loc.model_id, dest.name, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(dest.parent, "export-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
            names = export_transformer(_transformer(model), tmp / "fp32.onnx")
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per channel: a scale per output row keeps MiniLM's vectors ~1e-2 from fp32's
            quantize_dynamic(
                tmp / "fp32.onnx", tmp / GRAPH_FILE, weight_type=QuantType.QInt8, per_channel=True
            )
            (tmp / "fp32.onnx").unlink()
        else:
            (tmp / "fp32.onnx").rename(tmp / GRAPH_FILE)
        (tmp / "ragtune_source.json").write_text(
            json.dumps(
                {
                    "model": loc.model_id,
                    "source": loc.describe(),
                    "inputs": names,
                    "int8": int8,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        )
        replace_dir(tmp, dest)
    return dest / GRAPH_FILE


def export_transformer(module: Any, path: Path) -> list[str]:
    """Export a sentence-transformers Transformer module's model (token embeddings out) with
    torch's dynamo exporter, batch and sequence length dynamic; returns the input names."""
    import torch

    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ModelNotFound(
            f"embedder_backend 'onnx' needs onnxscript to export: {_INSTALL}"
        ) from e
    sample = module.tokenizer(
        ["an example sentence to trace", "and a shorter one"], padding=True, return_tensors="pt"
    )
    names = [n for n in _INPUTS if n in sample]
    hf = module.model

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(
            self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None
        ) -> Any:
            given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
            extra = {k: v for k, v in given.items() if v is not None}
            return self.hf(input_ids=input_ids, **extra).last_hidden_state

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    was_training = hf.training
    hf.eval()
    try:
        torch.onnx.export(
            TokenEmbeddings(),
            (),
            str(path),
            kwargs={n: sample[n] for n in names},
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={n: {0: batch, 1: seq} for n in names},
            dynamo=True,
            external_data=False,
        )
    finally:
        hf.train(was_training)
    return names


def use_onnx_runtime(model: Any, graph: Path, threads: int) -> None:
    """Swap the transformer's torch model for an ONNX Runtime session on ``graph``; the
    torch weights are dropped."""
    module = _transformer(model)
    encoder = _ort_encoder_class()(graph, module.model.config, threads)
    module.model = encoder
    module.model_forward_params = set(encoder.input_names)


@functools.cache
def _ort_encoder_class() -> type[Any]:
    """``OrtEncoder``, a torch module (torch is imported only when it is used)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    class OrtEncoder(torch.nn.Module):
        """Runs an exported transformer in ONNX Runtime; sentence-transformers' Transformer
        module calls it as it would call its Hugging Face model."""

        def __init__(self, graph: Path, config: Any, threads: int) -> None:
            super().__init__()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # 0 = onnxruntime's choice (the cores)
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(graph), opts, providers=["CPUExecutionProvider"]
            )
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.config = config  # sentence-transformers reads output_hidden_states from it

        def forward(self, **features: Any) -> dict[str, Any]:
            feed = {
                n: np.ascontiguousarray(features[n].numpy(), dtype=np.int64)
                for n in self.input_names
            }
            (hidden,) = self.session.run(["last_hidden_state"], feed)
            return {"last_hidden_state": torch.from_numpy(hidden)}

    return OrtEncoder
