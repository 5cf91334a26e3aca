"""The CLI: `ragtune index ...` and `ragtune search ...`, in-process through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.cli.main import main
from ragtune.core.config import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tiny_settings: Settings, monkeypatch, tmp_path, capsys):
    """Run `ragtune ARGS` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)  # no stray ragtune.toml
    for key in ("RAGTUNE_CONFIG", "RAGTUNE_DATA_DIR", "RAGTUNE_EMBEDDER", "RAGTUNE_TOP_K"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAGTUNE_CHUNK_SIZE", str(tiny_settings.chunk_size))
    monkeypatch.setenv("RAGTUNE_CHUNK_OVERLAP", str(tiny_settings.chunk_overlap))
    base = [
        "--data-dir",
        str(tiny_settings.data_dir),
        "--embedder",
        tiny_settings.embedder,
        "--threads",
        "1",
    ]

    def _run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main([*base, *args])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return int(e.value.code or 0), out, err

    return _run


def test_index_list_show_rm(run, corpus: Path) -> None:
    rc, out, _ = run("index", str(corpus), "--index", "kb", "-q")
    assert rc == 0 and "5 added" in out and "index 'kb'" in out
    rc, out, _ = run("index", str(corpus), "--index", "kb", "--json", "-q")
    summary = json.loads(out)
    assert rc == 0 and summary["changed"] is False and summary["documents"]["unchanged"] == 5
    rc, out, _ = run("index", "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["kb"]
    rc, out, _ = run("index", "list")
    assert "kb" in out and "flat" in out
    rc, out, _ = run("index", "show", "kb")
    assert rc == 0 and "docs/people.jsonl  (2 documents)" in out
    assert "MB chunk store" in out and "modified (date)" in out
    rc, out, _ = run("index", "show", "kb", "--json")
    assert json.loads(out)["documents"] == 5
    rc, out, _ = run("index", "rm", "kb")
    assert rc == 0 and "removed index 'kb'" in out
    rc, out, err = run("index", "show", "kb")
    assert rc != 0 and "error: index 'kb' not found" in err
    rc, out, _ = run("index", "list")
    assert "no indexes" in out


def test_explicit_build_subcommand_and_prune_flag(run, corpus: Path) -> None:
    rc, out, _ = run("index", "build", str(corpus), "-i", "kb", "-q")
    assert rc == 0
    (corpus / "paris.txt").unlink()
    rc, out, _ = run("index", str(corpus), "-i", "kb", "--no-prune", "--json", "-q")
    assert json.loads(out)["documents"]["kept"] == 1
    rc, out, _ = run("index", str(corpus), "-i", "kb", "--prune", "--json", "-q")
    assert json.loads(out)["documents"]["removed"] == 1


def test_bad_input_messages_and_exit_codes(run, corpus: Path, tmp_path: Path) -> None:
    (corpus / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\nnot json\n')
    rc, out, _ = run("index", str(corpus), str(tmp_path / "missing"), "-i", "kb", "-q")
    assert rc == 0  # something sensible was done: the good files are indexed
    assert "docs/bad.jsonl:2: malformed JSON" in out
    assert "missing: no such file or folder" in out
    bin_file = tmp_path / "blob.txt"
    bin_file.write_bytes(b"\x00\x01")
    rc, _, err = run("index", str(bin_file), "-i", "other", "-q")
    assert rc != 0 and "error: nothing to index: blob.txt: binary file" in err
    rc, _, err = run("index", str(corpus), "-i", "../evil", "-q")
    assert rc != 0 and "invalid index name" in err


def test_search_single_and_methods(run, corpus: Path) -> None:
    run("index", str(corpus), "-i", "kb", "-q")
    rc, out, _ = run("search", "Everest mountain", "-i", "kb", "-k", "2", "--method", "bm25")
    assert rc == 0 and out.startswith("1. [") and "docs/everest.md" in out
    rc, out, _ = run("search", "Curie chemistry", "-i", "kb", "-k", "3", "--json")
    payload = json.loads(out)
    assert payload["method"] == "hybrid" and len(payload["hits"]) == 3
    assert payload["hits"][0]["doc_id"] == "curie"
    assert set(payload["hits"][0]) == {"chunk_id", "doc_id", "text", "score", "metadata"}
    rc, out, _ = run("search", "river", "-i", "kb", "--method", "dense", "--json")
    assert len(json.loads(out)["hits"]) == 3  # setting top_k
    rc, _, err = run("search", "river", "-i", "nope")
    assert rc != 0 and "error: index 'nope' not found" in err
    rc, _, err = run("search", "-i", "kb")
    assert rc != 0 and "give either a QUERY or --queries FILE" in err


def test_batch_search_writes_one_jsonl_line_per_query(run, corpus: Path, tmp_path: Path) -> None:
    run("index", str(corpus), "-i", "kb", "-q")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(
        '{"id": "q1", "query": "Everest mountain"}\n'
        "Curie chemistry\n"
        "{broken\n"
        '{"id": "q3", "query": "Nile river Africa"}\n'
    )
    out_file = tmp_path / "hits.jsonl"
    rc, _, err = run(
        "search", "--queries", str(qfile), "-i", "kb", "-k", "2", "--out", str(out_file)
    )
    assert rc == 0 and f"{qfile}:3: malformed JSON" in err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "2", "q3"]
    assert all(len(r["hits"]) == 2 for r in rows)
    assert rows[0]["hits"][0]["doc_id"] == "docs/everest.md"
    # Without --out the JSONL goes to stdout.
    rc, out, _ = run("search", "--queries", str(qfile), "-i", "kb", "--method", "bm25")
    assert len(out.strip().splitlines()) == 3


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from ragtune.cli.main import main\n"
        "for args in (['--help'], ['index', '--help'], ['search', '--help'], ['index', 'list', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'faiss', 'transformers', 'sentence_transformers', 'bm25s') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "ragtune index PATH... --index NAME" in res.stdout
    assert "--queries" in res.stdout


def test_search_filter_and_compressed_index_flags(run, corpus: Path, tmp_path: Path) -> None:
    rc, out, _ = run("index", str(corpus), "--index", "kb", "-q", "--index-type", "ivf_sq8")
    assert rc == 0 and "flat index" in out  # 5 chunks: too few to train, exact instead
    flt = '{"file_type": {"in": ["md", "html"]}}'
    rc, out, _ = run("search", "mountain river", "--index", "kb", "--json", "--filter", flt)
    payload = json.loads(out)
    assert rc == 0 and payload["filter"] == {"file_type": {"in": ["md", "html"]}}
    assert {h["doc_id"] for h in payload["hits"]} <= {"docs/everest.md", "docs/nile.html"}
    assert all("modified" in h["metadata"] for h in payload["hits"])
    q = tmp_path / "q.txt"
    q.write_text("Paris\nCurie chemistry\n")
    rc, out, _ = run(
        "search", "--queries", str(q), "--index", "kb", "--method", "bm25",
        "--filter", '{"topic": "science"}',
    )  # fmt: skip
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and lines[0]["hits"] == [] and lines[1]["hits"][0]["doc_id"] == "curie"
    for bad, message in [
        ("{file_type: md}", "error: filter: not valid JSON"),
        ('{"file_type": {"like": "m%"}}', "error: filter: field 'file_type': unknown operator"),
        ('{"filetype": "md"}', "error: filter: field 'filetype' is not a metadata field of"),
    ]:
        rc, out, err = run("search", "x", "--index", "kb", "--method", "bm25", "--filter", bad)
        assert rc == 2 and out == "" and err.startswith(message), err
    rc, out, _ = run("index", str(corpus), "--index", "kb", "--json", "-q", "--rescan")
    assert rc == 0 and json.loads(out)["files"] == 4
    rc, out, _ = run("index", str(corpus), "--index", "kb", "--json", "-q")
    assert json.loads(out)["files"] == 0 and json.loads(out)["unchanged_files"] == 4
