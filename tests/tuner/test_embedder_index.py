"""Indexes built with a tuned embedder: they record its NAME@VERSION, never mix vectors of two
embedders, and searching them with any other embedder (another training of the same name
included) is refused with a clear error; the pipeline can search a tuned index beside a base
one when told which embedder each index takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import IndexMismatch
from ragtune.core.index_store import current_version, open_index, read_manifest
from ragtune.core.models import load_embedder
from ragtune.core.pipeline import Pipeline
from ragtune.indexer.api import build_index
from ragtune.tuner.embed_api import train_embedder
from ragtune.tuner.embed_args import EmbedTuneArgs
from tests.eval.conftest import tiny_squad_file  # noqa: F401 (a fixture, used by name)


@pytest.fixture
def tuned(tiny_settings: Settings, tiny_squad_file: Path) -> tuple[Settings, Settings, Path]:  # noqa: F811
    """(base settings, tuned settings, squad): 'kb' built by the base embedder, 'kb-tuned' by
    the tuned one (trained from 'kb')."""
    build_index(tiny_settings, [tiny_squad_file], "kb", progress=False)
    args = EmbedTuneArgs(
        data=[str(tiny_squad_file)], name="e", index="kb", batch_size=4, max_steps=2, lr=1e-3
    )
    train_embedder(tiny_settings, args, progress=False)
    tuned_settings = tiny_settings.model_copy(update={"embedder": "tuned:e"})
    build_index(tuned_settings, [tiny_squad_file], "kb-tuned", progress=False)
    return tiny_settings, tuned_settings, tiny_squad_file


def test_the_index_records_the_tuned_model_id(tuned) -> None:
    base, tuned_s, _ = tuned
    emb = load_embedder(tuned_s)
    assert emb.model_id.startswith("e@")
    assert read_manifest(tuned_s, "kb-tuned").embedding_model == emb.model_id
    assert read_manifest(base, "kb").embedding_model == "embedder"
    hits = open_index(tuned_s, "kb-tuned", emb).search("Where is the Nile?", 2, "dense")
    assert len(hits) == 2


def test_search_refuses_a_query_embedder_that_did_not_build_the_index(tuned) -> None:
    base, tuned_s, _ = tuned
    with pytest.raises(IndexMismatch, match=r"index 'kb-tuned' was built with embedder 'e@"):
        open_index(base, "kb-tuned", load_embedder(base))
    with pytest.raises(IndexMismatch, match=r"configured embedder is 'e@"):
        open_index(tuned_s, "kb", load_embedder(tuned_s))


def test_indexing_never_mixes_two_embedders(tuned) -> None:
    base, tuned_s, squad = tuned
    before = current_version(base, "kb")
    with pytest.raises(IndexMismatch):
        build_index(tuned_s, [squad], "kb", progress=False)
    assert current_version(base, "kb") == before  # the base index is untouched


def test_another_training_of_the_same_name_is_refused_too(tuned) -> None:
    base, tuned_s, squad = tuned
    old_id = read_manifest(tuned_s, "kb-tuned").embedding_model
    args = EmbedTuneArgs(
        data=[str(squad)], name="e", index="kb", batch_size=4, max_steps=1, overwrite=True
    )
    new = train_embedder(base, args, progress=False)
    assert new.model_id != old_id
    with pytest.raises(IndexMismatch, match=f"built with embedder '{old_id}'"):
        open_index(tuned_s, "kb-tuned", load_embedder(tuned_s))


def test_cli_search_refusal_is_one_clean_line(tuned, monkeypatch, capsys) -> None:
    from ragtune.cli.main import main

    base, _, _ = tuned
    monkeypatch.delenv("RAGTUNE_CONFIG", raising=False)
    g = ["--data-dir", str(base.data_dir), "--embedder", base.embedder, "--threads", "1"]
    with pytest.raises(SystemExit) as e:
        main([*g, "search", "Where is the Nile?", "--index", "kb-tuned", "--method", "dense"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: index 'kb-tuned' was built with embedder 'e@")
    # BM25 needs no embedder: it still searches the tuned index
    with pytest.raises(SystemExit) as e:
        main([*g, "search", "Nile", "--index", "kb-tuned", "--method", "bm25"])
    assert e.value.code == 0


def test_pipeline_searches_each_index_with_its_own_embedder(tuned) -> None:
    base, _, _ = tuned
    plain = Pipeline(base)
    with pytest.raises(IndexMismatch):
        plain.retrieve("Where is the Nile?", "kb-tuned", 2, "dense")
    both = Pipeline(base, index_embedders={"kb-tuned": "tuned:e"})
    a = both.retrieve("Where is the Nile?", "kb", 2, "dense")
    b = both.retrieve("Where is the Nile?", "kb-tuned", 2, "dense")
    assert len(a) == len(b) == 2
    assert both.index("kb-tuned").manifest.embedding_model.startswith("e@")
