"""The embedder's runtime: torch (sentence-transformers as is) or ONNX Runtime, fp32 or int8.

``settings.embedder_backend``:

- ``torch``: ``SentenceTransformer(folder)``, as always.
- ``onnx``: the same SentenceTransformer (its tokenizer, batching, pooling and normalization),
  with the transformer's forward pass run by ONNX Runtime on a graph exported once from the
  configured model. Vectors equal torch's to ~1e-7 in cosine, so an index built with one of
  the two answers queries embedded with the other (same model id).
- ``onnx-int8``: that graph with its matrix multiplications and fused attention dynamically
  quantized to int8 (per channel; the embedding tables stay fp32). Its vectors are not fp32
  vectors (cosine ~1e-2 from them), so it gets its own model id (``<id>+int8``): an index
  built with it refuses queries from the others and the other way round (``IndexMismatch``).

The export is offline and happens once per model, runtime and recipe: it is cached under
``<models_cache_dir>/onnx/<model>-<weights hash>-torch<v>-ort<v>-<recipe>-<fp32|int8>/``
(written atomically). The recipe: the model traced with eager attention by torch's
TorchScript exporter, then ONNX Runtime's transformer optimizer fuses each layer's attention,
its skip + LayerNorm and bias + GELU into single kernels (its fusions match that exporter's
graphs, not the dynamo exporter's). A fused graph is kept only if it gives the unfused
graph's output on a sample; otherwise (an architecture the optimizer does not know) the plain
graph is used. Where the TorchScript exporter is gone (newer torch), the dynamo exporter
exports the plain graph. sentence-transformers' own ``backend="onnx"`` needs optimum-onnx,
whose newest release (0.1.0) requires transformers < 4.58 and does not import under the
transformers 5 that sentence-transformers 6 needs; so the graph is exported here and run with
onnxruntime directly.
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
import warnings
from collections.abc import Iterator
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
# Part of the cache key: a graph exported by an older recipe is exported again, not reused.
RECIPE = "fused1"
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
    folder = f"{name}-{digest}-torch{torch_v}-ort{ort_v}-{RECIPE}-{kind}"
    return settings.models_cache_dir / "onnx" / folder


def exported_graph(settings: Settings, loc: ModelLocation, model: Any, int8: bool) -> Path:
    """The ONNX graph of the model's transformer (exported and cached on first use)."""
    dest = graph_dir(settings, loc, int8)
    if (dest / GRAPH_FILE).is_file():
        return dest / GRAPH_FILE
    t0 = time.perf_counter()
    log.info("exporting %s to ONNX (%s, once) into %s", loc.model_id, dest.name, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    module = _transformer(model)
    with staging_dir(dest.parent, "export-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporters print their steps
            names, exporter = export_transformer(module, tmp / "plain.onnx")
        fused = fuse_graph(tmp / "plain.onnx", tmp / "fused.onnx", module)
        graph = tmp / ("fused.onnx" if fused else "plain.onnx")
        if int8:
            quantize_graph(graph, tmp / GRAPH_FILE)
        else:
            graph.rename(tmp / GRAPH_FILE)
        for name in ("plain.onnx", "fused.onnx"):
            (tmp / name).unlink(missing_ok=True)
        (tmp / "ragtune_source.json").write_text(
            json.dumps(
                {
                    "model": loc.model_id,
                    "source": loc.describe(),
                    "inputs": names,
                    "exporter": exporter,
                    "fused": fused,
                    "int8": int8,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        )
        replace_dir(tmp, dest)
    return dest / GRAPH_FILE


def export_transformer(module: Any, path: Path) -> tuple[list[str], str]:
    """Export a sentence-transformers Transformer module's model (token embeddings out), batch
    and sequence length dynamic; returns the input names and the exporter used."""
    import torch

    sample = _sample(module)
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

    was_training, attention = hf.training, hf.config._attn_implementation
    hf.eval()
    # Eager attention is traced as matmul + mask + softmax + matmul, the pattern ONNX
    # Runtime's optimizer fuses; sdpa's export is not fused.
    hf.config._attn_implementation = "eager"
    # what both exporters are given
    call: dict[str, Any] = {
        "args": (),
        "f": str(path),
        "kwargs": {n: sample[n] for n in names},
        "input_names": names,
        "output_names": ["last_hidden_state"],
    }
    try:
        try:
            dims = {0: "batch", 1: "sequence"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings
                torch.onnx.export(
                    TokenEmbeddings(),
                    **call,
                    dynamic_axes={n: dims for n in [*names, "last_hidden_state"]},
                    opset_version=17,
                    dynamo=False,
                )
            return names, "torchscript"
        except Exception as e:  # deprecated since torch 2.9: gone, or failed on this model
            log.info("the TorchScript exporter failed (%s); exporting with dynamo", e)
            path.unlink(missing_ok=True)
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        except ImportError as e:
            raise ModelNotFound(
                f"embedder_backend 'onnx' needs onnxscript to export: {_INSTALL}"
            ) from e
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        torch.onnx.export(
            TokenEmbeddings(),
            **call,
            dynamic_shapes={n: {0: batch, 1: seq} for n in names},
            dynamo=True,
            external_data=False,
        )
        return names, "dynamo"
    finally:
        hf.config._attn_implementation = attention
        hf.train(was_training)


def _sample(module: Any) -> dict[str, Any]:
    """Two texts of different lengths, so that the traced graph holds a padding mask."""
    return dict(
        module.tokenizer(
            ["an example sentence to trace", "and a shorter one"],
            padding=True,
            return_tensors="pt",
        )
    )


def fuse_graph(plain: Path, fused: Path, module: Any) -> bool:
    """Write ONNX Runtime's fused BERT-style graph of ``plain`` to ``fused``; True if it was
    kept (it gives ``plain``'s output on a sample to 1e-4)."""
    config = module.model.config
    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not heads or not hidden:
        return False
    try:
        from onnxruntime.transformers import optimizer

        with _errors_only(logging.getLogger("onnxruntime.transformers")):
            graph = optimizer.optimize_model(
                str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
            )
        graph.save_model_to_file(str(fused))
    except Exception as e:  # an architecture the optimizer cannot take: the plain graph
        log.info("ONNX Runtime's optimizer did not fuse this model (%s); using the plain graph", e)
        return False
    sample = {k: v.numpy() for k, v in _sample(module).items()}
    gap = float(abs(_run(plain, sample) - _run(fused, sample)).max())
    if gap > 1e-4:
        log.warning("the fused ONNX graph is %.2g off the plain one; using the plain graph", gap)
        fused.unlink()
        return False
    return True


def _run(graph: Path, feed: dict[str, Any]) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: feed[n] for n in names})[0]


def quantize_graph(graph: Path, dest: Path) -> None:
    """int8 weights for the matmuls and fused attention (activations quantized per call).

    Per channel: a scale per output row keeps MiniLM's vectors ~5e-3 from fp32's. The
    embedding tables stay fp32: a lookup gains no speed from int8, only error."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _errors_only(logging.getLogger()):  # its advice to pre-process, on every call
        quantize_dynamic(
            graph,
            dest,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops' outputs
        )


@contextlib.contextmanager
def _errors_only(logger: logging.Logger) -> Iterator[None]:
    """Let ``logger`` pass only errors for the block (ONNX Runtime's tools are chatty)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
