"""Incremental builds on real FAISS: counts, reuse of vectors, prune, versions, IVF, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import DataError, IndexMismatch, InvalidInput
from ragtune.core.index_store import (
    check_compatible,
    current_version,
    open_index,
    read_documents,
    read_manifest,
    version_dir,
)
from ragtune.core.models import Embedder, load_embedder
from ragtune.indexer.api import build_index
from ragtune.indexer.build import index_lock
from tests.indexer.conftest import write_corpus


def build(settings: Settings, paths: list[Path], emb: Embedder, **kw):
    return build_index(settings, paths, "kb", progress=False, embedder=emb, **kw)


def open_kb(settings: Settings, emb: Embedder):
    return open_index(settings, "kb", emb)


def test_first_build_then_search_every_method(tiny_settings, tiny_embedder, corpus) -> None:
    s = build(tiny_settings, [corpus], tiny_embedder)
    assert s.changed and s.version == current_version(tiny_settings, "kb")
    assert (s.documents.added, s.chunks.added, s.total_documents) == (5, s.total_chunks, 5)
    assert s.errors == [] and s.to_dict()["documents"]["added"] == 5
    idx = open_kb(tiny_settings, tiny_embedder)
    assert idx.size == s.total_chunks
    for method in ("dense", "bm25", "hybrid"):
        hits = idx.search("Everest mountain Himalayas", 3, method)
        assert hits and len(hits) <= 3
    assert idx.search("Everest mountain Himalayas", 3, "bm25")[0].doc_id == "docs/everest.md"
    assert idx.search("Curie chemistry", 1, "hybrid")[0].doc_id == "curie"
    m = read_manifest(tiny_settings, "kb")
    assert m.embedding_model == tiny_embedder.model_id
    assert m.embedding_dim == tiny_embedder.dim
    assert m.chunker.chunk_size == 64


def test_incremental_add_update_remove(tiny_settings, tiny_embedder, corpus) -> None:
    first = build(tiny_settings, [corpus], tiny_embedder)
    keep_ids = read_documents(tiny_settings, "kb")["curie"]["chunks"]
    old_vecs = open_kb(tiny_settings, tiny_embedder).faiss_index.reconstruct(keep_ids[0])

    (corpus / "paris.txt").write_text("The Eiffel Tower is in Paris. It was built in 1889.")
    (corpus / "everest.md").unlink()
    (corpus / "new.txt").write_text("Photosynthesis turns light into sugar.")
    s = build(tiny_settings, [corpus], tiny_embedder)

    d = s.documents
    assert (d.added, d.updated, d.removed, d.unchanged) == (1, 1, 1, 3)
    assert (s.chunks.added, s.chunks.updated, s.chunks.removed) == (1, 1, 2)
    assert s.previous_version == first.version and s.total_documents == 5
    docs2 = read_documents(tiny_settings, "kb")
    assert "docs/everest.md" not in docs2
    assert docs2["curie"]["chunks"] == keep_ids  # unchanged: same chunk ids
    idx = open_kb(tiny_settings, tiny_embedder)
    np.testing.assert_array_equal(idx.faiss_index.reconstruct(keep_ids[0]), old_vecs)
    assert idx.faiss_index.ntotal == len(idx.chunks) == s.total_chunks
    assert idx.search("photosynthesis sugar", 1, "bm25")[0].doc_id == "docs/new.txt"
    assert all(h.doc_id != "docs/everest.md" for h in idx.search("Everest", 5, "hybrid"))


def test_nothing_changed_writes_no_new_version(tiny_settings, tiny_embedder, corpus) -> None:
    first = build(tiny_settings, [corpus], tiny_embedder)
    again = build(tiny_settings, [corpus], tiny_embedder)
    assert not again.changed and again.version == first.version
    assert again.documents.unchanged == 5 and again.chunks.added == 0


def test_no_prune_keeps_documents_not_seen(tiny_settings, tiny_embedder, corpus, tmp_path) -> None:
    build(tiny_settings, [corpus], tiny_embedder)
    more = write_corpus(tmp_path / "more", {"x.txt": "Extra document about rivers."})
    s = build(tiny_settings, [more], tiny_embedder, prune=False)
    assert (s.documents.added, s.documents.removed, s.documents.kept) == (1, 0, 5)
    assert s.total_documents == 6
    s = build(tiny_settings, [more], tiny_embedder, prune=True)
    assert (s.documents.removed, s.total_documents) == (5, 1)


def test_prune_default_comes_from_settings(tiny_settings, tiny_embedder, corpus) -> None:
    build(tiny_settings, [corpus], tiny_embedder)
    (corpus / "paris.txt").unlink()
    s = build(tiny_settings.model_copy(update={"prune": False}), [corpus], tiny_embedder)
    assert s.documents.kept == 1 and not s.pruned


def test_a_missing_path_or_unreadable_file_prunes_nothing(
    tiny_settings, tiny_embedder, corpus, tmp_path
) -> None:
    build(tiny_settings, [corpus], tiny_embedder)
    (corpus / "paris.txt").unlink()
    s = build(tiny_settings, [corpus, tmp_path / "typo"], tiny_embedder)
    assert s.documents.removed == 0 and s.documents.kept == 1 and not s.pruned
    assert any("not pruning" in e for e in s.errors)
    # A file that exists but cannot be read this time keeps its old documents.
    (corpus / "everest.md").write_bytes(b"\xff\xfe\x00broken")
    s = build(tiny_settings, [corpus], tiny_embedder)
    assert s.documents.removed == 1 and s.documents.kept == 1  # paris.txt goes, everest stays
    assert any("docs/everest.md: binary file" in e for e in s.errors)


def test_nothing_to_index_is_an_error_and_leaves_the_index(
    tiny_settings, tiny_embedder, corpus, tmp_path
) -> None:
    first = build(tiny_settings, [corpus], tiny_embedder)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"nothing to index: bad.txt: binary file"):
        build(tiny_settings, [bad, tmp_path / "nope"], tiny_embedder)
    assert current_version(tiny_settings, "kb") == first.version


def test_chunk_settings_change_re_embeds_everything(tiny_settings, tiny_embedder, corpus) -> None:
    build(tiny_settings, [corpus], tiny_embedder)
    s = build(tiny_settings.model_copy(update={"chunk_size": 16}), [corpus], tiny_embedder)
    assert s.documents.updated == 5 and s.documents.unchanged == 0
    assert read_manifest(tiny_settings, "kb").chunker.chunk_size == 16


def test_keeps_the_live_and_the_previous_version_only(tiny_settings, tiny_embedder, corpus) -> None:
    versions = []
    for i in range(3):
        (corpus / "counter.txt").write_text(f"Run number {i} of the indexer.")
        versions.append(build(tiny_settings, [corpus], tiny_embedder).version)
    vroot = version_dir(tiny_settings, "kb", "x").parent
    assert sorted(p.name for p in vroot.iterdir() if not p.name.startswith(".")) == sorted(
        versions[1:]
    )
    # The previous version is whole: a reader that still holds it can reload it.
    old = open_index(tiny_settings, "kb", tiny_embedder, version=versions[1])
    assert old.search("Run number", 1, "bm25")[0].text == "Run number 1 of the indexer."


def test_another_embedder_is_refused(tiny_settings, tiny_embedder, corpus, tmp_path) -> None:
    from tests.tiny_models import build_tiny_embedder

    build(tiny_settings, [corpus], tiny_embedder)
    other_dir = build_tiny_embedder(tmp_path / "other-embedder", seed=1)
    other = load_embedder(tiny_settings.model_copy(update={"embedder": str(other_dir)}))
    with pytest.raises(IndexMismatch, match="was built with embedder 'embedder'"):
        build(tiny_settings, [corpus], other)
    with pytest.raises(IndexMismatch):
        open_index(tiny_settings, "kb", other)
    with pytest.raises(IndexMismatch, match=r"\(32-d\).*\(64-d\)"):
        check_compatible(read_manifest(tiny_settings, "kb"), tiny_embedder.model_id, 64)


def test_one_writer_at_a_time(tiny_settings, tiny_embedder, corpus) -> None:
    idir = tiny_settings.indexes_dir / "kb"
    with index_lock(idir), pytest.raises(InvalidInput, match="another process"):
        build(tiny_settings, [corpus], tiny_embedder)


def test_leftovers_of_a_crash_are_cleaned(tiny_settings, tiny_embedder, corpus) -> None:
    build(tiny_settings, [corpus], tiny_embedder)
    vroot = tiny_settings.indexes_dir / "kb" / "versions"
    (vroot / ".tmp-20260101T000000Z-dead-x").mkdir()
    (corpus / "paris.txt").write_text("Changed text about Paris.")
    s = build(tiny_settings, [corpus], tiny_embedder)
    assert s.cleaned == 1 and not any(p.name.startswith(".tmp-") for p in vroot.iterdir())


def _many_docs(root: Path, n: int) -> Path:
    words = ["paris", "river", "mountain", "python", "curie", "nile", "tower", "france", "earth"]
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=8)) + f" document {i}."
        lines.append(json.dumps({"id": f"d{i}", "text": text}))
    root.mkdir(parents=True, exist_ok=True)
    (root / "many.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_ivf_falls_back_to_flat_on_tiny_corpora(tiny_settings, tiny_embedder, corpus) -> None:
    settings = tiny_settings.model_copy(update={"index_type": "ivf"})
    s = build(settings, [corpus], tiny_embedder)
    assert s.index_type == "flat"
    assert read_manifest(settings, "kb").requested_index_type == "ivf"


def test_ivf_build_update_and_search(tiny_settings, tiny_embedder, tmp_path) -> None:
    import faiss

    settings = tiny_settings.model_copy(update={"index_type": "ivf", "ivf_nprobe": 64})
    root = _many_docs(tmp_path / "many", 400)
    s = build(settings, [root], tiny_embedder)
    assert s.index_type == "ivf"
    m = read_manifest(settings, "kb")
    assert m.ivf.nlist == 10 and m.ivf.trained_on == 400  # min(4*sqrt(400), 400//39)
    # Update in place: the trained cells are kept, removed ids are gone, new ones searchable.
    lines = (root / "many.jsonl").read_text().splitlines()
    lines = [*lines[:-10], json.dumps({"id": "special", "text": "Marie Curie chemistry"})]
    (root / "many.jsonl").write_text("\n".join(lines) + "\n")
    s = build(settings, [root], tiny_embedder)
    assert (s.documents.added, s.documents.removed, s.index_type) == (1, 10, "ivf")
    idx = open_index(settings, "kb", tiny_embedder)
    assert isinstance(idx.faiss_index, faiss.IndexIVFFlat) and idx.faiss_index.ntotal == 391
    # With every cell probed, IVF is exact: the same top hits as brute force.
    assert idx.search("Marie Curie chemistry", 1, "dense")[0].doc_id == "special"
    # Switching the setting back to flat rebuilds the kind from the stored vectors (no embedding).
    s = build(tiny_settings, [root], tiny_embedder)
    assert s.changed and s.index_type == "flat" and s.chunks.added == 0
    flat = open_kb(tiny_settings, tiny_embedder)
    assert flat.search("Marie Curie chemistry", 1, "dense")[0].doc_id == "special"
