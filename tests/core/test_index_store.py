"""The index format's read side: names, tokenization, fusion, loading, refusal, cache reload."""

from __future__ import annotations

import pytest

from ragtune.core.errors import IndexMismatch, IndexNotFound, InvalidInput
from ragtune.core.index_store import (
    IndexCache,
    bm25_text,
    bm25_tokenize,
    check_compatible,
    current_version,
    list_indexes,
    open_index,
    read_manifest,
    rrf_fuse,
    validate_name,
)


def test_validate_name() -> None:
    assert validate_name("kb-1.v2_x") == "kb-1.v2_x"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "a..b"):
        with pytest.raises(InvalidInput):
            validate_name(bad)


def test_bm25_tokenize_stems_and_drops_stopwords() -> None:
    assert bm25_tokenize("What were the Countries founding the League?") == [
        "countri",
        "found",
        "leagu",
    ]
    assert bm25_tokenize("the of and") == []
    assert bm25_text({"text": "It was built in 1889.", "metadata": {"title": "Eiffel_Tower"}}) == (
        "Eiffel_Tower\nIt was built in 1889."
    )
    assert bm25_text({"text": "plain", "metadata": {}}) == "plain"


def test_rrf_fuse_weights_and_ties() -> None:
    assert [i for i, _ in rrf_fuse([[1, 2, 3], [3, 2, 1]], k=60)] == [1, 3, 2]  # ties: lower id
    fused = rrf_fuse([[1, 2], [2, 1]], k=5, weights=[0.5, 1.0])
    assert fused[0][0] == 2  # the heavier list wins the disagreement
    assert fused[0][1] == pytest.approx(0.5 / 7 + 1.0 / 6)


def _build(settings, emb, root, name="kb"):
    from ragtune.indexer.api import build_index

    return build_index(settings, [root], name, progress=False, embedder=emb)


@pytest.fixture
def tiny_emb(tiny_settings):
    from ragtune.core.models import load_embedder

    return load_embedder(tiny_settings)


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("The Eiffel Tower is in Paris.")
    (root / "b.txt").write_text("Mount Everest is the highest mountain on Earth.")
    (root / "c.jsonl").write_text(
        '{"id": "nile", "text": "It is a river in Africa.", "metadata": {"title": "Nile"}}\n'
    )
    return root


def test_load_and_search(tiny_settings, tiny_emb, docs) -> None:
    assert list_indexes(tiny_settings) == [] and current_version(tiny_settings, "kb") is None
    with pytest.raises(IndexNotFound, match="ragtune index PATH --index kb"):
        read_manifest(tiny_settings, "kb")
    _build(tiny_settings, tiny_emb, docs)
    assert list_indexes(tiny_settings) == ["kb"]
    m = read_manifest(tiny_settings, "kb")
    check_compatible(m, tiny_emb.model_id, tiny_emb.dim)
    with pytest.raises(IndexMismatch, match=r"'kb' was built .* \(32-d\).*\(16-d\); rebuild"):
        check_compatible(m, tiny_emb.model_id, 16)
    idx = open_index(tiny_settings, "kb", tiny_emb)
    assert idx.manifest == m and (
        idx.size == 3 and idx.name == "kb" and idx.version == current_version(tiny_settings, "kb")
    )
    # The title is searchable although the passage never names its subject.
    assert idx.search("Nile", 1, "bm25")[0].doc_id == "nile"
    assert idx.search("Nile", 1, "bm25")[0].metadata["title"] == "Nile"
    batch = idx.search_batch(["Everest", "the of", "Paris tower"], 2, "bm25")
    assert batch[0][0].doc_id == "docs/b.txt" and batch[1] == []
    assert batch[2][0].doc_id == "docs/a.txt"
    assert len(idx.search("anything at all", 10, "dense")) == 3  # k larger than the index
    hyb = idx.search_batch(["Everest", "Paris tower"], 3, "hybrid")
    assert [h[0].doc_id for h in hyb] == ["docs/b.txt", "docs/a.txt"]
    with pytest.raises(InvalidInput):
        idx.search("x", 0, "dense")
    with pytest.raises(InvalidInput):
        idx.search("x", 1, "fuzzy")  # type: ignore[arg-type]


def test_cache_swaps_in_a_new_version(tiny_settings, tiny_emb, docs) -> None:
    first = _build(tiny_settings, tiny_emb, docs)
    cache = IndexCache(tiny_settings, tiny_emb)
    held = cache.get("kb")
    assert cache.get("kb") is held
    (docs / "d.txt").write_text("Python is a programming language.")
    second = _build(tiny_settings, tiny_emb, docs)
    fresh = cache.get("kb")
    assert fresh.version == second.version != first.version and fresh.size == 4
    # The request that held the old version still searches it undisturbed.
    assert held.version == first.version and held.size == 3
    assert held.search("Paris", 1, "hybrid")[0].doc_id == "docs/a.txt"
    assert cache.loaded() == {"kb": second.version}
    with pytest.raises(IndexNotFound):
        cache.get("missing")


def test_cache_refuses_another_embedder(tiny_settings, tiny_emb, docs) -> None:
    from ragtune.core.models import Embedder

    _build(tiny_settings, tiny_emb, docs)
    cache = IndexCache(tiny_settings, Embedder(tiny_emb.model, "other-model"))
    with pytest.raises(IndexMismatch, match="other-model"):
        cache.get("kb")
