"""Embedder runtimes (settings.embedder_backend): ONNX Runtime fp32 gives torch's vectors and
shares its indexes; int8 vectors get their own model id, so indexes never mix them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragtune.core.config import Settings, resolve_settings
from ragtune.core.errors import IndexMismatch, InvalidInput
from ragtune.core.index_store import open_index
from ragtune.core.models import load_embedder
from tests.tiny_models import CORPUS

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _with(settings: Settings, backend: str) -> Settings:
    return settings.model_copy(update={"embedder_backend": backend})


def _graphs(settings: Settings) -> list[Path]:
    return sorted((settings.models_cache_dir / "onnx").glob("*/model.onnx"))


def test_onnx_gives_torch_vectors_and_exports_once(tiny_settings: Settings) -> None:
    torch_emb = load_embedder(tiny_settings)
    onnx_emb = load_embedder(_with(tiny_settings, "onnx"))
    assert onnx_emb.model_id == torch_emb.model_id and onnx_emb.dim == torch_emb.dim
    texts = [*CORPUS, "a b", "paris " * 60]  # batches pad to different lengths
    a, b = torch_emb.encode(texts, batch_size=4), onnx_emb.encode(texts, batch_size=4)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert float((1 - (a * b).sum(1)).max()) < 1e-4
    # cached beside the materialized models, keyed by model, weights and runtime versions
    (graph,) = _graphs(tiny_settings)
    import onnxruntime
    import torch

    assert f"ort{onnxruntime.__version__}" in graph.parent.name
    assert f"torch{torch.__version__.split('+')[0]}" in graph.parent.name
    assert graph.parent.name.endswith("-fp32")
    # the recipe: traced by the TorchScript exporter, attention etc. fused by ONNX Runtime
    source = json.loads((graph.parent / "ragtune_source.json").read_text())
    assert source["exporter"] == "torchscript" and source["fused"] is True
    ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops
    stamp = graph.stat().st_mtime_ns
    again = load_embedder(_with(tiny_settings, "onnx"))  # no second export
    assert graph.stat().st_mtime_ns == stamp and _graphs(tiny_settings) == [graph]
    assert np.array_equal(again.encode(texts[:3]), b[:3])


def test_int8_vectors_have_their_own_model_id(tiny_settings: Settings) -> None:
    fp32 = load_embedder(tiny_settings)
    int8 = load_embedder(_with(tiny_settings, "onnx-int8"))
    assert int8.model_id == fp32.model_id + "+int8"
    v = int8.encode(CORPUS[:4])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # near the fp32 vectors (this tiny model's layers barely move them: no lower bound)
    gap = 1 - (v * fp32.encode(CORPUS[:4])).sum(1)
    assert float(gap.max()) < 0.05
    (graph,) = [p for p in _graphs(tiny_settings) if p.parent.name.endswith("-int8")]
    ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
    # the fused attention and the matmuls run in int8; the embedding lookup stays fp32
    assert {"QAttention", "MatMulInteger"} <= ops and "EmbedLayerNormalization" in ops


def test_dynamo_export_when_the_torchscript_exporter_fails(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch deprecates the TorchScript exporter; without it the dynamo exporter exports
    the plain graph, which gives the same vectors."""
    import torch

    export = torch.onnx.export

    def no_torchscript(*args: object, **kwargs: object) -> object:
        if kwargs.get("dynamo") is False:
            raise RuntimeError("the TorchScript exporter was removed")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    onnx_emb = load_embedder(_with(tiny_settings, "onnx"))
    (graph,) = _graphs(tiny_settings)
    source = json.loads((graph.parent / "ragtune_source.json").read_text())
    assert source["exporter"] == "dynamo"
    texts = [*CORPUS[:5], "a b"]
    a, b = load_embedder(tiny_settings).encode(texts), onnx_emb.encode(texts)
    assert float((1 - (a * b).sum(1)).max()) < 1e-4


def test_a_fused_graph_that_disagrees_is_not_used(
    tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragtune.core import embed_runtime

    st = load_embedder(tiny_settings).model
    module = embed_runtime._transformer(st)
    embed_runtime.export_transformer(module, tmp_path / "plain.onnx")
    assert embed_runtime.fuse_graph(tmp_path / "plain.onnx", tmp_path / "fused.onnx", module)
    # an optimizer that got the model wrong: its output differs from the plain graph's
    run = embed_runtime._run
    monkeypatch.setattr(
        embed_runtime,
        "_run",
        lambda graph, feed: run(graph, feed) + (graph.name == "fused.onnx"),
    )
    assert not embed_runtime.fuse_graph(tmp_path / "plain.onnx", tmp_path / "fused.onnx", module)
    assert not (tmp_path / "fused.onnx").exists()


def test_indexes_accept_fp32_runtimes_and_refuse_int8(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    from ragtune.indexer.api import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(CORPUS[:8]):
        (docs / f"d{i}.txt").write_text(text)
    torch_emb = load_embedder(tiny_settings)
    build_index(tiny_settings, [docs], "kb", progress=False, embedder=torch_emb)
    onnx_emb = load_embedder(_with(tiny_settings, "onnx"))
    by_torch = open_index(tiny_settings, "kb", torch_emb).search("Paris tower", 3, "dense")
    by_onnx = open_index(tiny_settings, "kb", onnx_emb).search("Paris tower", 3, "dense")
    assert [h.chunk_id for h in by_onnx] == [h.chunk_id for h in by_torch]
    assert [h.score for h in by_onnx] == pytest.approx([h.score for h in by_torch], abs=1e-5)

    int8_emb = load_embedder(_with(tiny_settings, "onnx-int8"))
    with pytest.raises(IndexMismatch, match="embedder_backend = 'torch' or 'onnx'"):
        open_index(tiny_settings, "kb", int8_emb)
    # and an int8 index refuses fp32 queries, naming the setting that fits it
    build_index(tiny_settings, [docs], "kb8", progress=False, embedder=int8_emb)
    assert open_index(tiny_settings, "kb8", int8_emb).search("Paris", 2, "dense")
    with pytest.raises(IndexMismatch, match="embedder_backend = 'onnx-int8'"):
        open_index(tiny_settings, "kb8", onnx_emb)


def test_unknown_backend_is_a_settings_error() -> None:
    with pytest.raises(InvalidInput, match="embedder_backend"):
        resolve_settings(overrides={"embedder_backend": "tensorrt"}, environ={})


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "mpnet"])
def test_other_encoders_export_to_their_torch_vectors(arch: str, tmp_path: Path) -> None:
    """The fused recipe is BERT's; other encoders either fuse correctly or keep the plain
    graph (the sample check), and give torch's vectors either way."""
    from tests.tiny_models import build_tiny_embedder

    folder = build_tiny_embedder(tmp_path / "emb", arch=arch)
    base, _ = resolve_settings(
        overrides={"embedder": str(folder), "cache_dir": tmp_path / "cache"}, environ={}
    )
    texts = [*CORPUS[:6], "a b", "paris " * 60]
    want = load_embedder(base).encode(texts, batch_size=4)
    got = load_embedder(_with(base, "onnx")).encode(texts, batch_size=4)
    assert float((1 - (want * got).sum(1)).max()) < 1e-4
    int8 = load_embedder(_with(base, "onnx-int8")).encode(texts, batch_size=4)
    assert float((1 - (want * int8).sum(1)).max()) < 0.05
