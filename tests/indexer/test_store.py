"""Index format 2 on real FAISS and SQLite: versions share chunk-store rows, readers keep their
version across swaps, unchanged files are not read, chunks carry metadata, filters apply
before the top-k in every method, BM25 is persisted and updated to what a rebuild gives."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput
from ragtune.core.index_store import current_version, open_index, read_manifest, version_dir
from ragtune.indexer.api import build_index


def build(settings: Settings, paths: list[Path], emb, name: str = "kb", **kw):
    return build_index(settings, paths, name, progress=False, embedder=emb, **kw)


def store_rows(settings: Settings, name: str = "kb") -> dict[str, int]:
    con = sqlite3.connect(settings.indexes_dir / name / "store.sqlite")
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("documents", "chunks", "vectors")
        }
    finally:
        con.close()


def records(n: int, offset: int = 0, **meta) -> str:
    topics = ["river", "mountain", "tower", "desert"]
    out = []
    for i in range(offset, offset + n):
        m = {"topic": topics[i % 4], "year": 2000 + i % 25, "day": f"2026-01-{1 + i % 28:02d}"}
        text = f"Record {i} is about the {topics[i % 4]} number {i}."
        out.append(json.dumps({"id": f"r{i}", "text": text, "metadata": {**m, **meta}}))
    return "\n".join(out) + "\n"


# Words the tiny embedder's tokenizer knows: texts made of them get distinct vectors.
KNOWN = [
    "eiffel",
    "tower",
    "paris",
    "capital",
    "france",
    "olympic",
    "games",
    "mount",
    "everest",
    "highest",
    "mountain",
    "earth",
    "himalayas",
    "nile",
    "river",
    "africa",
    "longest",
    "rivers",
    "world",
    "python",
    "programming",
    "language",
    "created",
    "guido",
    "rossum",
    "photosynthesis",
    "light",
    "water",
    "carbon",
    "dioxide",
    "sugar",
    "oxygen",
    "great",
    "wall",
    "china",
    "built",
    "centuries",
    "marie",
    "curie",
    "nobel",
    "prizes",
    "physics",
    "chemistry",
]


def word_text(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(KNOWN, size=8))


def word_records(n: int, offset: int = 0) -> str:
    return "".join(
        json.dumps({"id": f"r{i}", "text": word_text(i)}) + "\n" for i in range(offset, offset + n)
    )


def test_versions_share_rows_and_old_rows_are_collected(tiny_settings, tiny_embedder, corpus):
    build(tiny_settings, [corpus], tiny_embedder)
    assert store_rows(tiny_settings) == {"documents": 5, "chunks": 5, "vectors": 5}
    (corpus / "paris.txt").write_text("Paris is on the Seine.")
    build(tiny_settings, [corpus], tiny_embedder)
    # The 4 unchanged documents were not copied: one new row, the old one kept for the
    # previous version (still kept on disk for its readers).
    assert store_rows(tiny_settings) == {"documents": 6, "chunks": 6, "vectors": 6}
    (corpus / "everest.md").unlink()
    third = build(tiny_settings, [corpus], tiny_embedder)
    # The first version is gone, and with it the old Paris row; Everest's row stays for the
    # previous version until the next run.
    assert store_rows(tiny_settings) == {"documents": 5, "chunks": 5, "vectors": 5}
    assert third.total_documents == 4
    (corpus / "nile.html").write_text("<p>The Nile flows north.</p>")
    build(tiny_settings, [corpus], tiny_embedder)
    # Everest's row went with the second version; the old Nile row stays for the third.
    assert store_rows(tiny_settings) == {"documents": 5, "chunks": 5, "vectors": 5}


def test_a_reader_keeps_its_version_across_swaps(tiny_settings, tiny_embedder, corpus):
    first = build(tiny_settings, [corpus], tiny_embedder)
    old = open_index(tiny_settings, "kb", tiny_embedder)
    for i in range(3):  # three swaps: the first version is two behind the previous one
        (corpus / "counter.txt").write_text(f"Counter document, run {i}.")
        (corpus / "paris.txt").write_text(f"Paris, edition {i}.")
        build(tiny_settings, [corpus], tiny_embedder)
    assert version_dir(tiny_settings, "kb", first.version).is_dir()  # held: not deleted
    hits = old.search("Eiffel Tower Paris", 1, "hybrid")
    assert hits[0].text == "The Eiffel Tower is in Paris. Paris is the capital of France."
    assert old.search("Counter", 3, "bm25") == []  # its own view: no later document
    old.close()  # (or drop it: the lock goes when the object is collected)
    (corpus / "counter.txt").write_text("Counter document, last run.")
    build(tiny_settings, [corpus], tiny_embedder)
    assert not version_dir(tiny_settings, "kb", first.version).exists()
    # Rows only the collected versions held are gone: the 6 live ones and the counter
    # document of the previous version are left.
    assert store_rows(tiny_settings)["documents"] == 7


def test_unchanged_files_are_not_read(tiny_settings, tiny_embedder, corpus):
    first = build(tiny_settings, [corpus], tiny_embedder)
    assert (first.files, first.unchanged_files) == (4, 0)
    again = build(tiny_settings, [corpus], tiny_embedder)
    assert not again.changed and (again.files, again.unchanged_files) == (0, 4)
    assert (again.documents.unchanged, again.chunks.unchanged) == (5, 5)
    # Touched, not changed: read once, nothing re-embedded, no new version; the new time is
    # remembered, so the run after that reads nothing again.
    st = (corpus / "paris.txt").stat()
    os.utime(corpus / "paris.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = build(tiny_settings, [corpus], tiny_embedder)
    assert not touched.changed and touched.files == 1 and touched.documents.unchanged == 5
    assert build(tiny_settings, [corpus], tiny_embedder).files == 0
    rescan = build(
        tiny_settings.model_copy(update={"skip_unchanged_files": False}), [corpus], tiny_embedder
    )
    assert not rescan.changed and rescan.files == 4
    # A change inside an unchanged-looking folder is found (size or time differ).
    (corpus / "people.jsonl").write_text(
        (corpus / "people.jsonl").read_text() + '{"id": "x", "text": "New record."}\n'
    )
    grown = build(tiny_settings, [corpus], tiny_embedder)
    assert (grown.files, grown.documents.added, grown.documents.unchanged) == (1, 1, 5)


def test_a_duplicate_id_in_a_changed_file_is_reported(
    tiny_settings, tiny_embedder, corpus, tmp_path
):
    build(tiny_settings, [corpus], tiny_embedder)
    (corpus / "more.jsonl").write_text('{"id": "curie", "text": "Another Curie."}\n')
    s = build(tiny_settings, [corpus], tiny_embedder)
    assert any(
        "duplicate document id 'curie' (indexed from docs/people.jsonl)" in e for e in s.errors
    )
    idx = open_index(tiny_settings, "kb", tiny_embedder)
    assert idx.search("Curie", 5, "bm25")[0].text.startswith("Marie Curie won")


def test_every_chunk_carries_metadata(tiny_settings, tiny_embedder, corpus):
    build(tiny_settings, [corpus], tiny_embedder)
    idx = open_index(tiny_settings, "kb", tiny_embedder)
    meta = {h.doc_id: h.metadata for h in idx.search("the", 10, "dense")}
    assert meta["curie"]["topic"] == "science" and meta["curie"]["file_type"] == "jsonl"
    assert meta["docs/everest.md"]["title"] == "Everest"
    assert meta["docs/nile.html"]["title"] == "Nile"
    assert all(m["modified"].endswith("Z") and m["source"] for m in meta.values())
    fields = read_manifest(tiny_settings, "kb").fields
    assert fields["modified"].kind == "date" and fields["topic"].chunks == 1


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_filters_apply_before_the_top_k(tiny_settings, tiny_embedder, tmp_path, index_type):
    settings = tiny_settings.model_copy(update={"index_type": index_type, "ivf_nprobe": 1})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "r.jsonl").write_text(records(400))
    s = build(settings, [tmp_path / "docs"], tiny_embedder)
    assert s.index_type == index_type
    idx = open_index(settings, "kb", tiny_embedder)
    all_meta = {c["doc_id"]: c["metadata"] for c in idx.chunks.values()}
    for flt, want in [
        (
            {"topic": "desert", "year": {"gte": 2020}},
            lambda m: m["topic"] == "desert" and m["year"] >= 2020,
        ),
        ({"day": {"lt": "2026-01-03"}}, lambda m: m["day"] < "2026-01-03"),
        (
            {"topic": {"in": ["river", "tower"]}, "year": 2003},
            lambda m: m["topic"] in ("river", "tower") and m["year"] == 2003,
        ),
    ]:
        passing = {d for d, m in all_meta.items() if want(m)}
        assert passing
        for method in ("dense", "bm25", "hybrid"):
            hits = idx.search("Record about the river number", 10, method, flt)
            # Before the top-k: always min(k, passing) hits, all of them passing.
            assert {h.doc_id for h in hits} <= passing, (method, flt)
            assert len(hits) == min(10, len(passing)), (method, flt)
        # Dense with a filter on an exact index = exact search among the passing chunks.
        if index_type == "flat":
            hits = idx.search("Record about the river number", 5, "dense", flt)
            q = np.asarray(tiny_embedder.encode(["Record about the river number"]))[0]
            texts = [c["text"] for c in idx.chunks.values() if c["doc_id"] in passing]
            exact = np.sort(np.asarray(tiny_embedder.encode(texts)) @ q)[::-1][:5]
            np.testing.assert_allclose([h.score for h in hits], exact, atol=1e-5)
    with pytest.raises(InvalidInput, match="field 'topik' is not a metadata field of index 'kb'"):
        idx.search("x", 3, "hybrid", {"topik": "river"})


def test_bm25_is_persisted_and_an_update_equals_a_rebuild(tiny_settings, tiny_embedder, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text(records(60))
    (docs / "b.jsonl").write_text(records(40, offset=100))
    build(tiny_settings, [docs], tiny_embedder)
    vdir = version_dir(tiny_settings, "kb", current_version(tiny_settings, "kb") or "")
    assert (vdir / "bm25" / "data.csc.index.npy").is_file()
    (docs / "a.jsonl").write_text(records(50) + records(5, offset=300))  # 10 gone, 5 new
    build(tiny_settings, [docs], tiny_embedder)
    build(tiny_settings, [docs], tiny_embedder, name="fresh")
    inc = open_index(tiny_settings, "kb", None)
    fresh = open_index(tiny_settings, "fresh", None)
    assert inc.size == fresh.size == 95
    for q in ("Record about the river", "mountain number 7", "desert 301", "tower"):
        a = {h.doc_id: round(h.score, 4) for h in inc.search(q, 100, "bm25")}
        b = {h.doc_id: round(h.score, 4) for h in fresh.search(q, 100, "bm25")}
        assert a == b and a


def test_compressed_kinds_update_delete_and_switch_back_exactly(
    tiny_settings, tiny_embedder, tmp_path
):
    import faiss

    docs = tmp_path / "docs"
    docs.mkdir()
    for f in range(11):
        (docs / f"part{f}.jsonl").write_text(word_records(1000, offset=1000 * f))
    sq8 = tiny_settings.model_copy(update={"index_type": "ivf_sq8", "ivf_nprobe": 8})
    s = build(sq8, [docs], tiny_embedder)
    m = read_manifest(sq8, "kb")
    assert s.index_type == "ivf_sq8" and m.ivf.nlist == 282 and m.ivf.train_points == 11000
    idx = open_index(sq8, "kb", tiny_embedder)
    assert isinstance(idx.faiss_index, faiss.IndexIVFScalarQuantizer)
    assert idx.search(word_text(1234), 1, "dense")[0].doc_id == "r1234"
    # An update: one file loses half its records, another gets new ones; the cells are kept.
    (docs / "part3.jsonl").write_text(word_records(500, offset=3000))
    (docs / "part4.jsonl").write_text(word_records(1000, offset=4000) + word_records(3, 20000))
    s = build(sq8, [docs], tiny_embedder)
    assert (s.documents.removed, s.documents.added, s.files) == (500, 3, 2)
    idx = open_index(sq8, "kb", tiny_embedder)
    assert idx.faiss_index.ntotal == 10503
    assert read_manifest(sq8, "kb").ivf.trained_on == 11000  # not retrained
    assert all(h.doc_id != "r3700" for h in idx.search(word_text(3700), 20, "dense"))
    assert idx.search(word_text(20001), 1, "dense")[0].doc_id == "r20001"
    # Product quantization with an OPQ rotation: 4 bytes a vector (dim 32 / 8).
    pq = sq8.model_copy(update={"index_type": "ivf_pq", "opq": True})
    s = build(pq, [docs], tiny_embedder)
    m = read_manifest(pq, "kb")
    assert (s.index_type, m.ivf.pq_m, m.ivf.opq, s.chunks.added) == ("ivf_pq", 4, True, 0)
    idx = open_index(pq, "kb", tiny_embedder)
    assert isinstance(idx.faiss_index, faiss.IndexPreTransform)
    found = [h.doc_id for h in idx.search(word_text(20001), 10, "dense")]
    assert "r20001" in found and "r3700" not in found
    # Back to exact: rebuilt from the store's float16 vectors, not from the lossy PQ codes.
    s = build(tiny_settings, [docs], tiny_embedder)
    assert s.index_type == "flat" and s.chunks.added == 0
    flat = open_index(tiny_settings, "kb", tiny_embedder)
    q = word_text(777)
    qv = np.asarray(tiny_embedder.encode([q]))[0]
    hits = flat.search(q, 5, "dense")
    assert hits[0].doc_id == "r777"
    exact = np.asarray(tiny_embedder.encode([h.text for h in hits])) @ qv
    np.testing.assert_allclose([h.score for h in hits], exact, atol=2e-3)  # float16 rounding


def test_pq_m_must_divide_the_dimension(tiny_settings, tiny_embedder, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "r.jsonl").write_text(records(20))
    bad = tiny_settings.model_copy(update={"index_type": "ivf_pq", "pq_m": 5})
    with pytest.raises(InvalidInput, match=r"pq_m = 5 does not divide the embedding dimension 32"):
        build(bad, [tmp_path / "d"], tiny_embedder)


def test_index_show_reads_the_store(tiny_settings, tiny_embedder, corpus):
    from ragtune.indexer.api import describe_index, index_overview

    build(tiny_settings, [corpus], tiny_embedder)
    info = describe_index(tiny_settings, "kb")
    assert info.sources["docs/people.jsonl"] == 2 and info.document_ids[0] == "curie"
    over = index_overview(tiny_settings, "kb")
    assert over.store_bytes > 0 and over.bytes > over.faiss_bytes > 0
    assert "file_type" in over.fields


def test_a_missing_chunk_store_is_one_clear_error(tiny_settings, tiny_embedder, corpus):
    from ragtune.core.errors import ManifestError

    build(tiny_settings, [corpus], tiny_embedder)
    (tiny_settings.indexes_dir / "kb" / "store.sqlite").unlink()
    for action in (
        lambda: open_index(tiny_settings, "kb", tiny_embedder),
        lambda: build(tiny_settings, [corpus], tiny_embedder),
    ):
        with pytest.raises(ManifestError, match=r"index 'kb' has no chunk store .*index rm kb"):
            action()
