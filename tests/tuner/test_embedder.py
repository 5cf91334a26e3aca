"""Embedder tuning on the tiny sentence-transformer: the training loop, the registry entry and
its manifest, hard-negative mining, the batches, resume after SIGKILL, and bad input.

Every training here is a few real steps of MultipleNegativesRankingLoss on a 1-layer BERT
over the tiny SQuAD file (4 articles, 8 paragraphs): seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ragtune.core import embedders
from ragtune.core.config import Settings
from ragtune.core.errors import (
    DataError,
    IndexMismatch,
    IndexNotFound,
    InvalidInput,
    ManifestError,
    ModelNotFound,
)
from ragtune.core.index_store import current_version
from ragtune.core.manifests import MANIFEST, EmbedderManifest
from ragtune.core.models import load_embedder, locate_embedder
from ragtune.tuner.embed_api import train_embedder
from ragtune.tuner.embed_args import EmbedTuneArgs
from ragtune.tuner.embed_data import Pair, Passage, ValQuestion, prepare_pairs, similarities
from ragtune.tuner.embed_train import (
    Schedule,
    epoch_batches,
    retrieval_figures,
    train_embedder_loop,
)
from tests.conftest import REPO
from tests.eval.conftest import tiny_squad_file  # noqa: F401 (a fixture, used by name)
from tests.tuner.helpers import write_jsonl


@pytest.fixture
def indexed(tiny_settings: Settings, tiny_squad_file: Path) -> tuple[Settings, Path]:  # noqa: F811
    """tiny_settings with the tiny SQuAD indexed as the default index."""
    from ragtune.indexer.api import build_index

    build_index(tiny_settings, [tiny_squad_file], "default", progress=False)
    return tiny_settings, tiny_squad_file


def quick(data: Path, name: str = "emb", **kw: object) -> EmbedTuneArgs:
    base: dict[str, object] = dict(
        data=[str(data)], name=name, batch_size=4, epochs=3, lr=1e-3, val_fraction=0.3, seed=1
    )
    base.update(kw)
    return EmbedTuneArgs(**base)  # type: ignore[arg-type]


def test_training_publishes_a_registry_entry_with_provenance(indexed) -> None:
    settings, squad = indexed
    info = train_embedder(settings, quick(squad, evals_per_epoch=1), progress=False)
    m = info.manifest
    assert info.path == settings.embedders_dir / "emb"
    assert m.model_id == f"emb@{m.version}" == info.model_id
    assert m.base_spec == settings.embedder and m.base_model == "embedder"
    assert len(m.base_fingerprint) == 64 and m.dim == 32
    assert m.data.files[0].file == squad.name and len(m.data.hash) == 64
    c = m.data.counts
    assert c.loaded == 9 and c.no_passage == 0 and c.train + c.val == 9 and c.val_groups == 2
    assert m.mining is not None
    assert m.mining.index == "default"
    assert m.mining.index_version == current_version(settings, "default")
    assert m.mining.embedding_model == "embedder" and m.mining.per_pair == 2  # the default
    met = m.metrics
    assert met.k == settings.top_k and met.val_questions == c.val and met.val_corpus == 8
    assert met.base is not None and met.base.step == 0 and met.history[0] == met.base
    # the kept checkpoint is the best one on validation recall@k, then MRR
    k = str(met.k)
    best = max(met.history, key=lambda h: (h.recall[k], h.mrr))
    assert met.best is not None and (met.best.recall[k], met.best.mrr) == (best.recall[k], best.mrr)
    assert met.improved == (met.best.step != 0)
    assert met.steps == met.total_steps == 3 * met.steps_per_epoch
    assert [h.step for h in met.history] == [
        0,
        *range(met.steps_per_epoch, met.steps + 1, met.steps_per_epoch),
    ]
    # the folder is a plain sentence-transformers model plus the manifest (written last)
    assert (info.path / "modules.json").is_file() and (info.path / MANIFEST).is_file()
    assert EmbedderManifest.read(info.path / MANIFEST) == m
    assert not embedders.run_dir(settings, "emb").exists()  # checkpoints cleaned up


def test_tuned_spec_loads_the_kept_weights(indexed) -> None:
    settings, squad = indexed
    info = train_embedder(settings, quick(squad, epochs=4, lr=3e-3), progress=False)
    tuned = load_embedder(settings.model_copy(update={"embedder": "tuned:emb"}))
    base = load_embedder(settings)
    assert tuned.model_id == info.model_id and tuned.dim == base.dim
    loc = locate_embedder("tuned:emb", settings)
    assert loc.kind == "tuned" and loc.path == info.path
    # the folder given by path is the same embedder (same model id)
    assert locate_embedder(str(info.path)).model_id == info.model_id
    texts = ["Where is the Eiffel Tower?", "The Nile is a river in Africa."]
    same = np.allclose(tuned.encode(texts), base.encode(texts), atol=1e-6)
    assert same == (info.manifest.metrics.best.step == 0)  # type: ignore[union-attr]


def test_without_validation_the_last_weights_are_published(indexed) -> None:
    settings, squad = indexed
    moved = train_embedder(settings, quick(squad, val_fraction=0.0, max_steps=3), progress=False)
    assert moved.manifest.metrics.base is None and moved.manifest.metrics.best is None
    e1 = load_embedder(settings.model_copy(update={"embedder": "tuned:emb"}))
    e0 = load_embedder(settings)
    assert not np.allclose(e1.encode(["Who created Python?"]), e0.encode(["Who created Python?"]))


def test_retraining_needs_overwrite_and_changes_the_model_id(indexed) -> None:
    settings, squad = indexed
    first = train_embedder(settings, quick(squad, max_steps=1), progress=False)
    with pytest.raises(InvalidInput, match=r"already exists.*--overwrite"):
        train_embedder(settings, quick(squad, max_steps=1), progress=False)
    second = train_embedder(settings, quick(squad, max_steps=1, overwrite=True), progress=False)
    assert second.model_id != first.model_id and second.name == first.name


def test_mined_negatives_are_never_the_gold_passage_nor_hold_the_answer(indexed) -> None:
    from ragtune.core.index_store import open_index

    settings, squad = indexed
    index = open_index(settings, "default", load_embedder(settings))
    args = quick(squad, hard_negatives=2, mine_depth=8, val_fraction=0.0).validate()
    data = prepare_pairs(args, index, "dense")
    assert len(data.train) == 9 and data.mining is not None
    by_q = {p.question: p for p in data.train}
    nile = by_q["Where is the Nile?"]
    assert nile.positive.startswith("The Nile is a river")
    for p in data.train:
        assert len(p.negatives) == 2 and p.positive not in p.negatives
        assert len(set(p.negatives)) == 2
    # "Africa" is the answer: no negative may contain it (it would answer the question too)
    assert all("africa" not in n.lower() for n in nile.negatives)
    assert data.mining.mined + data.mining.filled == 18
    assert data.mining.gold_in_depth == 1.0  # depth 8 = every passage: the gold is among them
    bm25 = prepare_pairs(args, index, "bm25")
    assert bm25.mining is not None and bm25.mining.retrieval == "bm25"


def test_the_similarity_filter_keeps_near_gold_hits_out(indexed) -> None:
    """--max-negative-ratio: no negative (mined or filled) scores above that share of the gold
    passage's similarity to the question; without answer text to go by."""
    from ragtune.core.index_store import open_index

    settings, squad = indexed
    index = open_index(settings, "default", load_embedder(settings))
    plain = quick(squad, mine_depth=8, val_fraction=0.0, skip_answer_negatives=False)
    ratio = 0.96  # the tiny random model scores every passage within ~10% of the gold
    args = quick(
        squad, mine_depth=8, val_fraction=0.0, skip_answer_negatives=False, max_negative_ratio=ratio
    )
    before = prepare_pairs(plain.validate(), index, "dense")
    data = prepare_pairs(args.validate(), index, "dense")
    assert data.mining is not None and before.mining is not None
    assert before.mining.skipped_similar == 0 and data.mining.skipped_similar > 0
    assert data.mining.skipped_answer == 0
    for p in data.train:
        gold, *negs = similarities(
            index, [(p.question, p.positive)] + [(p.question, n) for n in p.negatives]
        )
        assert all(n <= ratio * gold + 1e-6 for n in negs), (p.question, gold, negs)
    # the filter changed some pair's negative: a hit too close to its gold was the hardest
    assert [p.negatives for p in data.train] != [p.negatives for p in before.train]
    # hybrid hits carry fused scores, not similarities: those are computed for the filter
    hybrid = prepare_pairs(args.validate(), index, "hybrid")
    assert hybrid.mining is not None and hybrid.mining.skipped_similar > 0


def test_validation_is_spread_over_each_epoch() -> None:
    sched = Schedule(batches=[[0, 1]] * 16, epochs=[0] * 8 + [1] * 8, steps_per_epoch=8)
    due = [s for s in range(1, 17) if sched.validates_at(s, 0, 4)]
    assert due == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [s for s in range(1, 17) if sched.validates_at(s, 0, 3)] == [3, 6, 8, 11, 14, 16]
    assert [s for s in range(1, 17) if sched.validates_at(s, 0, 1)] == [8, 16]  # epoch ends
    assert [s for s in range(1, 17) if sched.validates_at(s, 0, 20)] == list(range(1, 17))
    # --eval-every counts steps (and still validates at each epoch's end)
    assert [s for s in range(1, 17) if sched.validates_at(s, 5, 4)] == [5, 8, 10, 15, 16]
    # a run cut short (--max-steps) validates at its last step
    short = Schedule(batches=[[0, 1]] * 5, epochs=[0] * 5, steps_per_epoch=8)
    assert [s for s in range(1, 6) if short.validates_at(s, 0, 2)] == [4, 5]


def test_a_mid_epoch_checkpoint_is_kept_when_training_goes_past_it(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    """Validated twice per epoch, the loop keeps the mid-epoch weights when the epoch's end
    is worse (here: made worse on purpose at the last step, as an overshoot would)."""
    import torch

    model = load_embedder(tiny_settings).model
    topics = ["river", "mountain", "tower", "python", "desert", "ocean", "forest", "island"]
    corpus = [
        Passage(f"d{i}", f"The {t} passage number {i} tells about the {t}.")
        for i, t in enumerate(topics)
    ]
    forms = ["What about the {}?", "Tell me of the {}.", "Where is the {}?", "Which {} is it?"]
    qs = [(f.format(t), i) for f in forms for i, t in enumerate(topics)]
    train = [Pair(q, corpus[i].text, ()) for q, i in qs]
    val = [ValQuestion(q, (f"d{i}",)) for q, i in qs]
    args = EmbedTuneArgs(
        data=["unused"],
        name="mid",
        batch_size=8,  # 32 pairs: 4 steps, validated after steps 2 and 4
        lr=1e-3,
        schedule="constant",
        warmup_ratio=0.0,
        evals_per_epoch=2,
        hard_negatives=0,
        seed=0,
    )
    words = model[0].auto_model.embeddings.word_embeddings.weight

    def overshoot(step: int, loss: float) -> None:
        if step == 4:  # every token the same vector: retrieval falls to chance
            with torch.no_grad():
                words.copy_(words[:1].expand_as(words))

    res = train_embedder_loop(
        model, train, val, corpus, args, 2, tmp_path / "run", progress=False, on_step=overshoot
    )
    hist = res.state.history
    assert [h["step"] for h in hist] == [0, 2, 4]
    assert [h["epoch"] for h in hist] == [0.0, 0.5, 1.0]
    assert (hist[1]["recall"]["2"], hist[1]["mrr"]) > (hist[0]["recall"]["2"], hist[0]["mrr"])
    assert hist[2]["recall"]["2"] < hist[1]["recall"]["2"]
    assert res.state.best_step == 2
    # the model now holds the step-2 weights: it scores exactly as step 2 did
    recall, mrr = retrieval_figures(model, val, corpus, res.ks)
    assert recall == hist[1]["recall"] and mrr == hist[1]["mrr"]
    assert not torch.equal(words[0], words[1])


def test_batches_never_hold_a_text_twice() -> None:
    pairs = [Pair(f"q{i}", f"passage {i % 3}", (f"passage {(i + 1) % 3}",)) for i in range(12)]
    for epoch in range(3):
        batches = epoch_batches(pairs, 4, seed=7, epoch=epoch)
        assert batches == epoch_batches(pairs, 4, seed=7, epoch=epoch)  # seeded
        for b in batches:
            texts = [
                t for i in b for t in (pairs[i].question, pairs[i].positive, *pairs[i].negatives)
            ]
            assert len(texts) == len(set(texts)) and len(b) >= 2
    # with 3 distinct passages, a pair and its negative use 2: one pair per batch -> dropped
    assert epoch_batches(pairs, 4, seed=7, epoch=0) == []
    solo = [Pair(f"q{i}", f"p{i}", ()) for i in range(10)]
    sizes = [len(b) for b in epoch_batches(solo, 4, seed=0, epoch=0)]
    assert sizes == [4, 4, 2]


def test_in_batch_only_training_needs_no_index(tiny_settings: Settings, tmp_path: Path) -> None:
    rows = [
        {"prompt": q, "response": a, "context": c, "group": g}
        for g, (q, a, c) in enumerate(
            [
                ("Where is the Eiffel Tower?", "Paris", "The Eiffel Tower is in Paris."),
                (
                    "Who created Python?",
                    "Guido van Rossum",
                    "Python was created by Guido van Rossum.",
                ),
                ("Where is the Nile?", "Africa", "The Nile is a river in Africa."),
                (
                    "What is the highest mountain?",
                    "Everest",
                    "Mount Everest is the highest mountain.",
                ),
            ]
        )
    ]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(IndexNotFound, match="--hard-negatives 0"):
        train_embedder(tiny_settings, quick(data), progress=False)
    info = train_embedder(
        tiny_settings,
        quick(data, hard_negatives=0, group_by="group", val_fraction=0.25, batch_size=2),
        progress=False,
    )
    assert info.manifest.mining is None
    assert info.manifest.metrics.val_corpus == 4  # every gold passage of the data


def test_bad_input_is_refused_before_training(indexed, tmp_path: Path) -> None:
    settings, squad = indexed
    with pytest.raises(InvalidInput, match="--hard-negatives: cannot exceed --mine-depth"):
        train_embedder(settings, quick(squad, hard_negatives=4, mine_depth=3), progress=False)
    with pytest.raises(InvalidInput, match="--batch-size"):
        train_embedder(settings, quick(squad, batch_size=1), progress=False)
    with pytest.raises(InvalidInput, match="--schedule: must be one of linear, cosine, constant"):
        train_embedder(settings, quick(squad, schedule="step"), progress=False)
    with pytest.raises(InvalidInput, match="--evals-per-epoch: must be at least 1"):
        train_embedder(settings, quick(squad, evals_per_epoch=0), progress=False)
    with pytest.raises(InvalidInput, match=r"--max-negative-ratio: must be in \[0, 1\]"):
        train_embedder(settings, quick(squad, max_negative_ratio=1.5), progress=False)
    with pytest.raises(InvalidInput, match="invalid embedder name"):
        train_embedder(settings, quick(squad, name="../x"), progress=False)
    with pytest.raises(ModelNotFound):
        train_embedder(settings, quick(squad, base=str(tmp_path / "nope")), progress=False)
    no_gold = write_jsonl(tmp_path / "closed.jsonl", [{"prompt": "Hi?", "response": "Yes"}] * 3)
    with pytest.raises(DataError, match="gold passage"):
        train_embedder(settings, quick(no_gold), progress=False)
    # the index was built by another embedder: mining would search it with the wrong one
    other = settings.model_copy(update={"embedder": "tuned:emb"})
    train_embedder(settings, quick(squad, max_steps=1), progress=False)
    with pytest.raises(IndexMismatch, match="built with embedder 'embedder'"):
        train_embedder(other, quick(squad, name="emb2", max_steps=1), progress=False)
    assert [e.name for e in embedders.scan_tuned_embedders(settings)[0]] == ["emb"]


def test_corrupt_manifest_is_named_and_the_entry_can_be_removed(indexed) -> None:
    settings, squad = indexed
    info = train_embedder(settings, quick(squad, max_steps=1), progress=False)
    (info.path / MANIFEST).write_text("{not json")
    with pytest.raises(
        ManifestError, match=r"embedder manifest .*manifest\.json is not valid JSON"
    ):
        load_embedder(settings.model_copy(update={"embedder": "tuned:emb"}))
    found, problems = embedders.scan_tuned_embedders(settings)
    assert found == [] and len(problems) == 1
    embedders.remove(settings, "emb")
    with pytest.raises(ModelNotFound, match="tuned embedder 'emb' not found"):
        load_embedder(settings.model_copy(update={"embedder": "tuned:emb"}))


SCRIPT = """
import json, sys
from ragtune.core.config import Settings
from ragtune.tuner.embed_api import train_embedder
from ragtune.tuner.embed_args import EmbedTuneArgs
settings = Settings.model_validate(json.loads(sys.argv[1]))
train_embedder(settings, EmbedTuneArgs(**json.loads(sys.argv[2])), progress=False)
"""


def test_sigkill_leaves_no_embedder_and_a_rerun_resumes(indexed) -> None:
    settings, squad = indexed
    args = quick(squad, "killed", max_steps=100_000, save_every=1, val_fraction=0.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, settings.model_dump_json(), json.dumps(args.to_dict())],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = embedders.run_dir(settings, "killed") / "last" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ModelNotFound):
        embedders.get_tuned_embedder(settings, "killed")
    assert embedders.scan_tuned_embedders(settings) == ([], [])
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at >= 3

    # the same command resumes from the checkpoint and finishes (here: 2 more steps)
    args.max_steps = killed_at + 2
    info = train_embedder(settings, args, progress=False)
    # a changed max_steps is another run: it starts over (the key covers every argument)
    assert info.manifest.metrics.resumed_from_step is None
    assert info.manifest.metrics.steps == killed_at + 2


def test_resume_continues_from_the_last_checkpoint(indexed) -> None:
    """An interrupted run (here: an exception from on_step) continues where it stopped and
    reaches the step count of an uninterrupted run."""
    settings, squad = indexed
    args = quick(squad, "r", max_steps=6, save_every=1, val_fraction=0.0)

    def boom(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_embedder(settings, args, progress=False, on_step=boom)
    info = train_embedder(settings, args, progress=False)
    assert info.manifest.metrics.resumed_from_step == 3  # the step-4 checkpoint never landed
    assert info.manifest.metrics.steps == 6


def test_cli_tune_embedder_and_embedders_commands(indexed, tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from ragtune.cli.main import cli

    settings, squad = indexed
    g = ["--data-dir", str(settings.data_dir), "--embedder", settings.embedder, "--threads", "1"]
    cfg = tmp_path / "emb.toml"
    cfg.write_text("[tune-embedder]\nbatch_size = 4\nmax_steps = 2\nval_fraction = 0.3\n")
    run = CliRunner().invoke
    res = run(
        cli,
        [
            *g,
            "tune-embedder",
            "--config",
            str(cfg),
            "--data",
            str(squad),
            "--name",
            "c1",
            "--print-args",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["max_steps"] == 2 and json.loads(res.output)["batch_size"] == 4
    res = run(
        cli,
        [
            *g,
            "tune-embedder",
            "--config",
            str(cfg),
            "--data",
            str(squad),
            "--name",
            "c1",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "embedder 'c1' ready as tuned:c1 (c1@" in res.output
    res = run(cli, [*g, "embedders", "list", "--json"])
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == ["c1"] and rows[0]["model_id"].startswith("c1@")
    res = run(cli, [*g, "embedders", "show", "c1"])
    assert json.loads(res.output)["mining"]["index"] == "default"
    res = run(cli, [*g, "--embedder", "tuned:c1", "models", "--json"])
    assert json.loads(res.output)[0]["model_id"] == rows[0]["model_id"]
    res = run(cli, [*g, "embedders", "rm", "c1"])
    assert res.exit_code == 0 and "removed tuned embedder c1" in res.output
