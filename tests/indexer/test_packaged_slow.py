"""End to end on the real packaged embedder (all-MiniLM-L6-v2) and real SQuAD paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.index_store import open_index
from ragtune.core.models import load_embedder
from ragtune.core.qa import squad_paragraphs
from ragtune.indexer.api import build_index
from tests.conftest import SHARED_SQUAD

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_SQUAD.is_file(), reason="shared SQuAD data not present"),
]


@pytest.fixture(scope="module")
def squad_subset(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    data = json.loads(SHARED_SQUAD.read_text())
    arts = data["data"][:2]
    path = tmp_path_factory.mktemp("squad") / "dev.json"
    path.write_text(json.dumps({"version": "1.1", "data": arts}))
    qa = [
        (qa["question"], p.doc_id) for p in squad_paragraphs(arts, pytest.fail) for qa in p.qas[:1]
    ]
    return path, qa


def test_squad_subset_hybrid_recall(packaged_settings, squad_subset) -> None:
    path, qa = squad_subset
    emb = load_embedder(packaged_settings)
    s = build_index(packaged_settings, [path], "squad", progress=False, embedder=emb)
    assert s.total_documents == len(qa) and s.errors == []
    idx = open_index(packaged_settings, "squad", emb)
    hits = idx.search_batch([q for q, _ in qa], 5, "hybrid")
    recall = sum(g in [h.doc_id for h in row] for (_, g), row in zip(qa, hits, strict=True))
    assert recall / len(qa) >= 0.85
    # A paragraph that fits in one chunk stays one chunk, verbatim.
    chunk = next(c for c in idx.chunks.values() if c["doc_id"] == qa[0][1])
    para0 = json.loads(path.read_text())["data"][0]["paragraphs"][0]["context"]
    assert chunk["text"] == para0 and chunk["metadata"]["title"] == "Super_Bowl_50"


def test_cli_index_and_search(packaged_settings, squad_subset, monkeypatch, capsys) -> None:
    from ragtune.cli.main import main

    path, qa = squad_subset
    monkeypatch.chdir(path.parent)
    base = ["--data-dir", str(packaged_settings.data_dir)]
    with pytest.raises(SystemExit) as e:
        main([*base, "index", str(path), "--index", "sq", "--json", "-q"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["documents"]["added"] == len(qa)
    with pytest.raises(SystemExit) as e:
        main([*base, "search", qa[0][0], "--index", "sq", "-k", "5", "--json"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert qa[0][1] in [h["doc_id"] for h in hits]
