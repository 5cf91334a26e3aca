"""The typed manifests: round trips, data folders written before the types existed, and one
clear error (naming the file and the problem) for a corrupt manifest or an unknown schema
version, through the library and the CLI.

tests/data/legacy holds artifacts written by ragtune at commit 8952068, the last one before
core.manifests: an index (``kb``: three documents from docs.jsonl, the tiny embedder; schema 1,
chunks.jsonl, which readers now refuse and an update run converts) and the manifest and config
of a RAFT adapter trained with --dedup and --forgetting (every section).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from ragtune.cli.main import main
from ragtune.core.config import Settings
from ragtune.core.errors import IndexFormatOutdated, InvalidInput, ManifestError
from ragtune.core.index_store import (
    current_version,
    open_index,
    read_documents,
    read_manifest,
    version_dir,
)
from ragtune.core.manifests import AdapterManifest, IndexManifest, LegacyIndexManifest
from ragtune.core.registry import check_base, get_adapter, list_adapters, remove, scan_adapters
from tests.helpers import index_docs

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
LEGACY_INDEX = LEGACY / "indexes" / "kb" / "versions" / "20261130T135808Z-76e5be"
LEGACY_ADAPTER = LEGACY / "adapters" / "old-raft"
DOCS = {"paris": "The Eiffel Tower is in Paris.", "nile": "The Nile is a river in Africa."}


@pytest.fixture
def tiny_emb(tiny_settings: Settings):
    from ragtune.core.models import load_embedder

    return load_embedder(tiny_settings)


@pytest.fixture
def cli(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    """Run `ragtune ARGS` in-process through the real entry point: (exit code, out, err)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGTUNE_CONFIG", raising=False)
    base = ["--data-dir", str(tiny_settings.data_dir), "--embedder", tiny_settings.embedder]

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main([*base, "--generator", tiny_settings.generator, "--threads", "1", *args])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return int(e.value.code or 0), out, err

    return run


def _copy_legacy(settings: Settings) -> None:
    shutil.copytree(LEGACY / "indexes", settings.indexes_dir)
    shutil.copytree(LEGACY / "adapters", settings.adapters_dir)


# ---- round trips ---------------------------------------------------------------------------


def test_index_manifest_round_trip(tiny_settings: Settings, tiny_emb, tmp_path: Path) -> None:
    first = index_docs(tiny_settings, "kb", DOCS, embedder=tiny_emb)
    second = index_docs(tiny_settings, "kb", DOCS | {"x": "Python is a language."}, tiny_emb)
    m = read_manifest(tiny_settings, "kb")
    assert (m.version, m.previous_version, m.schema_version, m.seq) == (second, first, 2, 2)
    docs = read_documents(tiny_settings, "kb")
    assert m.counts.documents == len(docs) == 3 and m.next_int_id == 3
    m.write(tmp_path / "copy.json")
    assert IndexManifest.read(tmp_path / "copy.json") == m
    on_disk = json.loads((version_dir(tiny_settings, "kb", second) / "manifest.json").read_text())
    assert on_disk == json.loads((tmp_path / "copy.json").read_text()) == m.to_json()
    assert docs["x"]["source"].endswith("kb.jsonl") and "documents" not in on_disk
    assert on_disk["fields"]["source"] == {"kind": "text", "chunks": 3}


def test_legacy_manifests_read_and_write_back_the_same_keys(tmp_path: Path) -> None:
    for cls, src in ((LegacyIndexManifest, LEGACY_INDEX), (AdapterManifest, LEGACY_ADAPTER)):
        m = cls.read(src / "manifest.json")
        m.write(tmp_path / "m.json")
        assert cls.read(tmp_path / "m.json") == m
        original = json.loads((src / "manifest.json").read_text())
        # The only difference: keys whose value was null are left out (and read back as None).
        if cls is LegacyIndexManifest:
            assert original.pop("previous_version") is None
        else:
            assert original.pop("init_from") is None
            assert original["metrics"].pop("resumed_from_step") is None
        assert json.loads((tmp_path / "m.json").read_text()) == original
    a = AdapterManifest.read(LEGACY_ADAPTER / "manifest.json")
    assert a.raft and a.raft.stats["train"].oracle_rate == 1.0 and a.raft.index == "docs"
    assert a.metrics and a.metrics.perplexity and a.metrics.perplexity.ratio == 1.0008
    assert a.data and a.data.counts.duplicates == 0 and a.data.counts.val_capped_to is None
    assert a.hyperparameters["retrieval"] is None  # nulls inside free-form sections are kept


def test_a_legacy_index_is_refused_clearly_and_converted_by_an_update(
    tiny_settings: Settings, tiny_emb, cli
) -> None:
    from ragtune.indexer.api import build_index, describe_index

    _copy_legacy(tiny_settings)
    old = current_version(tiny_settings, "kb")
    path = version_dir(tiny_settings, "kb", old) / "manifest.json"
    with pytest.raises(IndexFormatOutdated) as e:
        open_index(tiny_settings, "kb", tiny_emb)
    assert e.value.status == 409 and e.value.path == str(path)
    assert "written by an earlier ragtune" in e.value.message
    assert "`ragtune index PATH... --index kb`" in e.value.message
    rc, out, err = cli("search", "Everest", "--index", "kb", "--method", "bm25")
    assert rc == 2 and out == "" and err.startswith("error: index 'kb' was written by an earlier")
    rc, out, err = cli("index", "list")
    assert rc == 0 and "warning: index 'kb' was written by an earlier ragtune" in err
    # An update over the same documents converts it: a new version, nothing re-embedded.
    docs = tiny_settings.data_dir / "docs.jsonl"
    shutil.copy(LEGACY / "docs.jsonl", docs)
    conv = build_index(tiny_settings, [docs], "kb", progress=False, embedder=tiny_emb)
    assert conv.changed and conv.previous_version == old and conv.documents.unchanged == 3
    assert (conv.chunks.added, conv.chunks.updated, conv.chunks.unchanged) == (0, 0, 3)
    idx = open_index(tiny_settings, "kb", tiny_emb)
    assert idx.size == 3 and idx.search("Everest", 1, "bm25")[0].doc_id == "everest"
    assert idx.search("Everest mountain", 1, "dense")[0].doc_id == "everest"
    hit = idx.search("Everest", 1, "bm25", {"file_type": "jsonl"})[0]
    assert hit.metadata["source"] == "docs.jsonl" and "modified" in hit.metadata
    assert describe_index(tiny_settings, "kb").sources == {"docs.jsonl": 3}
    same = build_index(tiny_settings, [docs], "kb", progress=False, embedder=tiny_emb)
    assert not same.changed and same.unchanged_files == 1
    with docs.open("a") as f:
        f.write(json.dumps({"id": "curie", "text": "Marie Curie won Nobel Prizes."}) + "\n")
    grown = build_index(tiny_settings, [docs], "kb", progress=False, embedder=tiny_emb)
    assert grown.changed and grown.previous_version == conv.version
    assert (grown.documents.added, grown.chunks.unchanged) == (1, 3)  # old vectors reused
    assert read_documents(tiny_settings, "kb")["curie"]["chunks"] == [3]

    info = get_adapter(tiny_settings, "old-raft")
    assert info.method == "lora" and info.created_at == "2026-11-30T13:58:08+00:00"
    rc, out, _ = cli("adapters", "list", "--json")
    assert rc == 0 and json.loads(out)[0]["raft_index"] == "docs"
    rc, out, _ = cli("adapters", "show", "old-raft")
    assert rc == 0 and json.loads(out)["raft"]["index_version"] == "20261130T135808Z-cb3bf8"


def test_a_minimal_unversioned_adapter_manifest_reads_as_version_1(
    tiny_settings: Settings,
) -> None:
    folder = tiny_settings.adapters_dir / "hand-made"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"base_model": "generator"}))
    info = get_adapter(tiny_settings, "hand-made")
    m = info.manifest
    assert (m.schema_version, m.method, m.metrics, m.raft, m.hyperparameters) == (
        1,
        "lora",
        None,
        None,
        {},
    )
    check_base(info, "anything", "f" * 64)  # no fingerprint recorded: nothing to refuse


# ---- errors --------------------------------------------------------------------------------

CORRUPTIONS = {
    "bad JSON": (lambda m: '{"name": "kb",', "is not valid JSON (Expecting"),
    "not an object": (lambda m: "[1, 2]", "is not a JSON object (found list)"),
    "unknown schema": (
        lambda m: json.dumps(m | {"schema_version": 99}),
        "has schema version 99, but this ragtune reads version 2",
    ),
    "no schema": (
        lambda m: json.dumps({k: v for k, v in m.items() if k != "schema_version"}),
        "has no schema_version",
    ),
    "wrong type": (
        lambda m: json.dumps(m | {"embedding_dim": "many"}),
        "has wrong or missing fields: embedding_dim: Input should be a valid integer",
    ),
    "missing key": (
        lambda m: json.dumps({k: v for k, v in m.items() if k != "counts"}),
        "has wrong or missing fields: counts: missing",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_index_manifest_is_one_clear_error(
    case: str, tiny_settings: Settings, tiny_emb, cli
) -> None:
    from ragtune.indexer.api import build_index

    corrupt, problem = CORRUPTIONS[case]
    index_docs(tiny_settings, "good", DOCS, embedder=tiny_emb)
    version = index_docs(tiny_settings, "kb", DOCS, embedder=tiny_emb)
    path = version_dir(tiny_settings, "kb", version) / "manifest.json"
    path.write_text(corrupt(json.loads(path.read_text())))

    with pytest.raises(ManifestError) as e:
        open_index(tiny_settings, "kb", tiny_emb)
    assert e.value.path == str(path) and problem in e.value.message
    assert e.value.message.startswith(f"index manifest {path} ")
    assert e.value.message.endswith(
        "remove the index with `ragtune index rm kb` and build it again"
    )
    with pytest.raises(ManifestError, match="remove the index"):  # no update on top of it
        build_index(tiny_settings, [tiny_settings.data_dir / "docs"], "kb", embedder=tiny_emb)

    for args in (("search", "Paris", "--index", "kb", "--method", "bm25"), ("index", "show", "kb")):
        rc, out, err = cli(*args)
        assert rc == 1 and out == "" and err.startswith(f"error: index manifest {path} ")
        assert problem in err
    rc, out, err = cli("index", "list")  # the broken one is named, the good one still listed
    assert rc == 0 and "good" in out and "kb" not in out.replace("good", "")
    assert f"warning: index manifest {path}" in err
    rc, out, _ = cli("index", "rm", "kb")  # and it can be removed
    assert rc == 0 and current_version(tiny_settings, "kb") is None


def test_a_missing_index_manifest_names_the_file(tiny_settings: Settings, tiny_emb) -> None:
    version = index_docs(tiny_settings, "kb", DOCS, embedder=tiny_emb)
    path = version_dir(tiny_settings, "kb", version) / "manifest.json"
    path.unlink()
    with pytest.raises(ManifestError, match=f"index manifest {path} is missing"):
        read_manifest(tiny_settings, "kb")


def test_bm25_only_index_needs_no_embedder(tiny_settings: Settings, tiny_emb) -> None:
    index_docs(tiny_settings, "kb", DOCS, embedder=tiny_emb)
    idx = open_index(tiny_settings, "kb", None)
    assert idx.search("Nile river", 1, "bm25")[0].doc_id == "nile"
    with pytest.raises(InvalidInput, match="only BM25"):
        idx.search("Nile river", 1, "hybrid")


ADAPTER_CORRUPTIONS = {
    "bad JSON": ("{", "is not valid JSON"),
    "unknown schema": (
        json.dumps({"schema_version": 2, "base_model": "generator"}),
        "has schema version 2, but this ragtune reads version 1",
    ),
    "wrong type": (
        json.dumps({"base_model": "generator", "method": "qlora"}),
        "method: Input should be 'lora' or 'full'",
    ),
    "missing key": (json.dumps({"method": "lora"}), "base_model: missing"),
}


@pytest.mark.parametrize("case", list(ADAPTER_CORRUPTIONS))
def test_a_corrupt_adapter_manifest_is_skipped_in_listings_and_an_error_when_used(
    case: str, tiny_settings: Settings, cli, caplog: pytest.LogCaptureFixture
) -> None:
    text, problem = ADAPTER_CORRUPTIONS[case]
    shutil.copytree(LEGACY_ADAPTER, tiny_settings.adapters_dir / "good")
    bad = tiny_settings.adapters_dir / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    (bad / "manifest.json").write_text(text)
    path = bad / "manifest.json"

    with pytest.raises(ManifestError) as e:
        get_adapter(tiny_settings, "bad")
    assert e.value.message.startswith(f"adapter manifest {path} ") and problem in e.value.message
    assert "ragtune adapters rm bad" in e.value.message
    found, problems = scan_adapters(tiny_settings)
    assert [a.name for a in found] == ["good"] and [p.path for p in problems] == [str(path)]
    with caplog.at_level(logging.WARNING, logger="ragtune.core.registry"):
        assert [a.name for a in list_adapters(tiny_settings)] == ["good"]
    assert f"skipping adapter: adapter manifest {path}" in caplog.text

    rc, out, err = cli("adapters", "show", "bad")
    assert rc == 1 and out == "" and err.startswith(f"error: adapter manifest {path} ")
    assert problem in err
    rc, out, err = cli("adapters", "list")
    assert rc == 0 and out.startswith("good ") and f"warning: adapter manifest {path}" in err
    remove(tiny_settings, "bad")  # a broken adapter can still be removed
    assert not bad.exists()
