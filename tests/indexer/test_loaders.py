"""Loaders: every format, document ids, and bad input reported per file (and line)."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.core.qa import squad_doc_id
from ragtune.indexer.loaders import content_hash, load_paths
from tests.indexer.conftest import minimal_pdf


def by_id(res):
    return {d.id: d for d in res.documents}


def test_formats_and_ids(corpus: Path) -> None:
    (corpus / "sub").mkdir()
    (corpus / "sub" / "report.pdf").write_bytes(minimal_pdf("Glaciers retreat in summer."))
    (corpus / ".hidden.txt").write_text("secret")
    (corpus / "image.png").write_bytes(b"\x89PNG....")
    res = load_paths([corpus])
    docs = by_id(res)
    assert set(docs) == {
        "docs/paris.txt",
        "docs/everest.md",
        "docs/nile.html",
        "curie",
        "python",
        "docs/sub/report.pdf",
    }
    assert res.issues == []
    assert res.skipped_files == 1  # the .png; hidden files are not even counted
    html = docs["docs/nile.html"]
    assert "The Nile is a river in Africa." in html.text
    assert "var x" not in html.text and "color" not in html.text
    assert html.metadata["title"] == "Nile"
    curie = docs["curie"].metadata
    assert curie.pop("modified") == _mtime(corpus / "people.jsonl")
    assert curie == {"topic": "science", "source": "docs/people.jsonl", "file_type": "jsonl"}
    assert docs["docs/sub/report.pdf"].text == "Glaciers retreat in summer."
    pdf = docs["docs/sub/report.pdf"].metadata
    assert (pdf["pages"], pdf["file_type"]) == (1, "pdf")
    assert docs["docs/everest.md"].metadata["title"] == "Everest"  # its first # heading
    assert docs["docs/nile.html"].metadata["file_type"] == "html"
    # The file's type and time are metadata, but not part of the content hash.
    paris = docs["docs/paris.txt"]
    assert paris.metadata["file_type"] == "txt"
    assert paris.sha256 == content_hash(paris.text, {"source": "docs/paris.txt"})


def _mtime(path: Path) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))


def test_touching_a_file_keeps_its_hash_and_unchanged_files_are_not_read(corpus: Path) -> None:
    import os

    before = by_id(load_paths([corpus]))
    st = (corpus / "paris.txt").stat()
    os.utime(corpus / "paris.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    res = load_paths([corpus])
    after = by_id(res)
    assert after["docs/paris.txt"].sha256 == before["docs/paris.txt"].sha256
    assert (
        after["docs/paris.txt"].metadata["modified"]
        != before["docs/paris.txt"].metadata["modified"]
    )
    # Files whose size and modification time are known are not read at all.
    known = dict(res.fingerprints)
    known["docs/nile.html"] = (0, 0)  # changed since: read again
    again = load_paths([corpus], known)
    assert again.unchanged_sources == set(known) - {"docs/nile.html"}
    assert [d.id for d in again.documents] == ["docs/nile.html"] and again.files == 1


def test_ids_do_not_depend_on_the_current_folder(corpus: Path, monkeypatch) -> None:
    a = {d.id for d in load_paths([corpus]).documents}
    monkeypatch.chdir(corpus)
    b = {d.id for d in load_paths([Path(".")]).documents}
    c = {d.id for d in load_paths([Path("paris.txt")]).documents}
    assert a == b
    assert c == {"paris.txt"}


def test_squad_one_document_per_paragraph(tmp_path: Path) -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "Super_Bowl_50",
                "paragraphs": [
                    {"context": "Super Bowl 50 was an American football game.", "qas": []},
                    {"context": "The game was played in Santa Clara.", "qas": []},
                ],
            },
            {"title": "Nile", "paragraphs": [{"context": "The Nile flows north.", "qas": []}]},
        ],
    }
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(squad))
    docs = by_id(load_paths([f]))
    assert squad_doc_id("Super_Bowl_50", 1) == "Super_Bowl_50#p1"
    assert list(docs) == ["Super_Bowl_50#p0", "Super_Bowl_50#p1", "Nile#p0"]
    assert docs["Super_Bowl_50#p1"].text == "The game was played in Santa Clara."
    assert docs["Super_Bowl_50#p1"].metadata["title"] == "Super_Bowl_50"


def test_json_list_of_records(tmp_path: Path) -> None:
    f = tmp_path / "recs.json"
    f.write_text(json.dumps([{"id": 7, "text": "seven"}, {"text": "no id"}]))
    assert set(by_id(load_paths([f]))) == {"7", "recs.json#1"}


def test_bad_input_is_reported_and_the_rest_loaded(corpus: Path, tmp_path: Path) -> None:
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02 not text")
    (corpus / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (corpus / "empty.txt").write_text("  \n\n ")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (corpus / "bad.jsonl").write_text(
        '{"id": "ok1", "text": "fine"}\n{not json\n{"id": "x"}\n{"id": "e", "text": "  "}\n'
    )
    (corpus / "bad.json").write_text("{oops")
    res = load_paths([corpus, tmp_path / "missing"])
    msgs = [str(i) for i in res.issues]
    joined = "\n".join(msgs)
    assert "docs/binary.txt: binary file" in joined
    assert "docs/latin1.md: not valid UTF-8" in joined
    assert "docs/empty.txt: empty document" in joined
    assert "docs/broken.pdf: not a readable PDF" in joined
    assert "docs/bad.jsonl:2: malformed JSON" in joined
    assert "docs/bad.jsonl:3: missing 'text'" in joined
    assert "docs/bad.jsonl:4: empty document" in joined
    assert "docs/bad.json: malformed JSON" in joined
    assert f"{tmp_path / 'missing'}: no such file or folder" in joined
    assert res.missing_paths == [str(tmp_path / "missing")]
    # The good documents are all there, including the good line of the bad JSONL file.
    assert {"docs/paris.txt", "curie", "python", "ok1"} <= set(by_id(res))
    assert "docs/bad.jsonl" in res.failed_sources and "docs/paris.txt" not in res.failed_sources


def test_duplicate_ids_keep_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "same", "text": "first"}\n')
    (tmp_path / "b.jsonl").write_text('{"id": "same", "text": "second"}\n')
    res = load_paths([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert [d.text for d in res.documents] == ["first"]
    assert "b.jsonl: duplicate document id 'same' (first in a.jsonl)" in str(res.issues[0])


def test_a_file_given_twice_loads_once(corpus: Path) -> None:
    res = load_paths([corpus, corpus / "paris.txt"])
    assert [d.id for d in res.documents].count("docs/paris.txt") == 1
    assert res.issues == []
