"""Embedder runtimes (settings.embedder_backend): ONNX Runtime fp32 gives torch's vectors and
shares its indexes; int8 vectors get their own model id, so indexes never mix them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragtune.core.config import Settings, resolve_settings
from ragtune.core.errors import IndexMismatch, InvalidInput
from ragtune.core.index_store import open_index
from ragtune.core.models import load_embedder
from tests.tiny_models import CORPUS

pytest.importorskip("onnxruntime")


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
    assert any(p.parent.name.endswith("-int8") for p in _graphs(tiny_settings))


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
