"""The string the model is trained on starts with exactly the string it is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.models import generator_folder, load_tokenizer
from ragtune.core.prompts import render_prompt
from ragtune.tuner.api import prepare_data
from ragtune.tuner.formats import load_examples
from ragtune.tuner.raft import build_raft
from ragtune.tuner.split import split
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import build_index, squad_json


def _check_parity(settings: Settings, tok, data: Path, raft: bool) -> int:
    """Every prepared training example's prompt tokens == the served prompt's tokens."""
    args = quick_args(
        data, raft=raft, index="default" if raft else None, val_fraction=0.25, max_length=4096
    )
    prepared = prepare_data(settings, args, tok)
    train_ex, _ = split(load_examples(data).examples, 0.25, args.seed)
    if raft:
        from ragtune.core.index_store import open_index
        from ragtune.core.models import load_embedder

        emb = load_embedder(settings)
        index = open_index(settings, "default", emb)
        built, _ = build_raft(
            train_ex, index, settings.top_k, args.p_oracle, args.seed, settings.retrieval
        )
        served = [(r.example.question, r.contexts) for r in built]
    else:
        served = [(e.question, None) for e in train_ex]
    assert len(served) == len(prepared.train)
    for enc, (q, ctx) in zip(prepared.train, served, strict=True):
        prompt = render_prompt(tok, q, ctx, settings.max_context_chars)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert enc.input_ids[: enc.n_prompt] == ids
        assert tok.decode(enc.input_ids[: enc.n_prompt]) == tok.decode(ids)
        assert enc.n_target > 0
    q, ctx = served[0]
    assert prepared.example is not None
    assert prepared.example.prompt == render_prompt(tok, q, ctx, settings.max_context_chars)
    return len(served)


def test_closed_book_and_raft_parity_tiny(tiny_settings: Settings, tmp_path: Path) -> None:
    tok = load_tokenizer(generator_folder(tiny_settings))
    assert tok.chat_template
    sq = squad_json(tmp_path / "s.json")
    build_index(tiny_settings, squad_path=sq)
    assert _check_parity(tiny_settings, tok, sq, raft=False) > 0
    assert _check_parity(tiny_settings, tok, sq, raft=True) > 0


@pytest.mark.slow
def test_closed_book_and_raft_parity_smollm2(tiny_settings: Settings, tmp_path: Path) -> None:
    """The real SmolLM2 chat template and BPE tokenizer (retrieval still uses the tiny index)."""
    from ragtune.core.config import resolve_settings

    real, _ = resolve_settings(environ={})
    tok = load_tokenizer(generator_folder(real))
    sq = squad_json(tmp_path / "s.json")
    build_index(tiny_settings, squad_path=sq)
    assert _check_parity(tiny_settings, tok, sq, raft=False) > 0
    assert _check_parity(tiny_settings, tok, sq, raft=True) > 0
