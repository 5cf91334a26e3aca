"""RAFT examples from a live index: oracle probability, insertion, distractors, manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.index_store import current_version, open_index
from ragtune.core.models import load_embedder
from ragtune.tuner.api import train_adapter
from ragtune.tuner.formats import example, load_examples
from ragtune.tuner.raft import build_raft, make_target, strip_quote
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import build_index, squad_json


@pytest.fixture
def squad_index(tiny_settings: Settings, tmp_path: Path) -> tuple[Path, object]:
    sq = squad_json(tmp_path / "squad.json")
    build_index(tiny_settings, "docs", squad_path=sq)
    emb = load_embedder(tiny_settings)
    return sq, open_index(tiny_settings, "docs", emb)


def test_p_oracle_one_always_has_gold_zero_never(squad_index: tuple) -> None:
    sq, index = squad_index
    exs = load_examples(sq).examples
    always, st1 = build_raft(exs, index, k=3, p_oracle=1.0, seed=0)
    never, st0 = build_raft(exs, index, k=3, p_oracle=0.0, seed=0)
    for r in always:
        assert r.oracle and r.example.doc_id in r.doc_ids and len(r.contexts) == 3
    for r in never:
        assert not r.oracle and r.example.doc_id not in r.doc_ids and len(r.contexts) == 3
    assert st1.oracle == len(exs) and st0.oracle == 0
    assert st1.to_dict()["oracle_rate"] == 1.0


def test_missing_gold_is_inserted_at_a_shuffled_position(squad_index: tuple) -> None:
    _, index = squad_index
    # a question that retrieves nothing of its gold document: the gold is inserted
    exs = [
        example(
            f"Nile river Africa longest world {i}",
            "Guido van Rossum",
            f"x:{i}",
            gold_doc_ids=("Article_1#p1",),
            context="unused",
        )
        for i in range(30)
    ]
    built, stats = build_raft(exs, index, k=3, p_oracle=1.0, seed=5)
    assert stats.gold_inserted == sum(1 for _ in exs) - stats.gold_retrieved
    inserted = [r for r in built if r.doc_ids.count("Article_1#p1") == 1]
    positions = {r.doc_ids.index("Article_1#p1") for r in inserted}
    assert len(positions) > 1  # not always first or last
    gold_text = next(c["text"] for c in index.chunks.values() if c["doc_id"] == "Article_1#p1")
    assert all(gold_text in r.contexts for r in inserted)


def test_p_oracle_rate_and_seeded_draws(squad_index: tuple) -> None:
    sq, index = squad_index
    exs = load_examples(sq).examples * 8  # 128 draws (same questions, same sources)
    exs = [
        example(
            e.question, e.answer, f"{e.source}/{i}", gold_doc_ids=e.gold_doc_ids, context=e.context
        )
        for i, e in enumerate(exs)
    ]
    a, st = build_raft(exs, index, 3, 0.8, seed=1)
    b, _ = build_raft(exs, index, 3, 0.8, seed=1)
    assert a == b
    assert 0.65 < st.oracle / st.examples < 0.95


def test_quote_target() -> None:
    e = example("q", "Paris", "s", support="The tower is in Paris.")
    assert make_target(e, quote=False) == "Paris"
    t = make_target(e, quote=True)
    assert t == '"The tower is in Paris." Answer: Paris' and strip_quote(t) == "Paris"
    assert "\n" not in t


def test_raft_training_records_index_and_version(
    tiny_settings: Settings, squad_index: tuple
) -> None:
    sq, _ = squad_index
    info = train_adapter(
        tiny_settings,
        quick_args(sq, "raft", raft=True, index="docs", raft_k=2, p_oracle=0.5, raft_quote=True),
        progress=False,
    )
    r = info.manifest.raft
    live = current_version(tiny_settings, "docs")
    assert r and (r.index, r.index_version, r.p_oracle, r.k) == ("docs", live, 0.5, 2)
    assert r.quote is True and r.stats["train"].examples > 0
    assert info.manifest.prompt and info.manifest.prompt.example
    example = info.manifest.prompt.example
    assert "Passages:\n[1] " in example.prompt and "[2] " in example.prompt
    assert "Answer: " in example.completion
    # SQuAD data splits by article: validation questions come from unseen articles
    assert info.manifest.data and info.manifest.data.counts.val > 0


def test_raft_without_index_is_a_clear_error(tiny_settings: Settings, tmp_path: Path) -> None:
    from ragtune.core.errors import IndexNotFound

    sq = squad_json(tmp_path / "s.json")
    with pytest.raises(IndexNotFound, match="index 'nope' not found"):
        train_adapter(tiny_settings, quick_args(sq, raft=True, index="nope"), progress=False)
