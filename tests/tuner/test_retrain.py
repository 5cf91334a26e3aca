"""Adapters bound to their index: the RAFT snapshot in the adapter folder, staleness after the
documents change (CLI and HTTP), and `ragtune tune --retrain NAME` on the live index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from litestar.testing import TestClient

from ragtune.core.adapter_binding import binding_of
from ragtune.core.config import Settings
from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.index_changes import (
    SNAPSHOT_FILE,
    IndexSnapshot,
    compare,
    decode_ranges,
    encode_ranges,
    index_changes,
    make_snapshot,
)
from ragtune.core.index_store import current_version
from ragtune.core.registry import get_adapter
from ragtune.tuner.api import train_adapter
from ragtune.tuner.retrain import retrain_args
from tests.helpers import index_docs, make_lora_adapter
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import squad_json
from tests.workflows.conftest import invoke


def _docs(squad: Path) -> dict[str, str]:
    return {
        f"{a['title']}#p{i}": p["context"]
        for a in json.loads(squad.read_text())["data"]
        for i, p in enumerate(a["paragraphs"])
    }


@pytest.fixture
def raft_adapter(tiny_settings: Settings, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    squad = squad_json(tmp_path / "squad.json")
    docs = _docs(squad)
    index_docs(tiny_settings, "docs", docs)
    args = quick_args(squad, name="kb-raft", raft=True, index="docs", raft_k=2, max_steps=2)
    train_adapter(tiny_settings, args, progress=False)
    return squad, docs


def test_ranges_round_trip_and_the_comparison_counts_chunks():
    assert encode_ranges([9, 1, 2, 3, 7, 10]) == "1-3,7,9-10"
    assert decode_ranges("1-3,7,9-10") == [1, 2, 3, 7, 9, 10]
    assert encode_ranges([]) == "" and decode_ranges("") == []
    then = make_snapshot("kb", "v1", {"a": [0, 1], "b": [2], "c": [3, 4, 5]})
    assert then.chunks == 6 and then.documents == 3 and then.ranges["c"] == "3-5"
    same = make_snapshot("kb", "v9", {"c": [5, 4, 3], "a": [0, 1], "b": [2]})
    assert same.digest == then.digest  # the digest is of the chunks, not of the order
    ch = compare(then, {"a": [0, 1], "b": [6, 7], "d": [8]}, "v2")
    assert (ch.added, ch.updated, ch.removed) == (1, 1, 3)
    assert (ch.documents_added, ch.documents_updated, ch.documents_removed) == (1, 1, 1)
    assert ch.share(ch.removed) == 0.5 and ch.changed
    assert "1 updated (16.7%), 1 added (16.7%), 3 removed (50.0%)" in ch.text()
    assert not compare(then, {"a": [0, 1], "b": [2], "c": [3, 4, 5]}, "v1").changed
    gone = compare(then, None, None)
    assert gone.changed and "no longer exists" in gone.text()


def test_a_raft_adapter_records_the_index_it_came_from(tiny_settings, raft_adapter):
    squad, docs = raft_adapter
    info = get_adapter(tiny_settings, "kb-raft")
    raft = info.manifest.raft
    assert raft is not None and raft.index_version == current_version(tiny_settings, "docs")
    assert raft.snapshot is not None and raft.snapshot.chunks == len(docs)
    snap = IndexSnapshot.read(info.path / SNAPSHOT_FILE)
    assert snap is not None and snap.ref() == raft.snapshot and set(snap.ranges) == set(docs)
    data = info.manifest.data
    assert data is not None and data.files[0].path == str(squad.resolve())
    b = binding_of(tiny_settings, info)
    assert b is not None and not b.stale and "live version" in b.text()


def test_documents_change_then_the_adapter_is_stale_everywhere(tiny_settings, raft_adapter):
    from ragtune.service.app import create_app
    from tests.service.conftest import make_settings, wait_ready

    _, docs = raft_adapter
    changed = dict(docs)
    first = sorted(changed)[0]
    changed[first] = changed[first] + " It changed."  # updated
    del changed[sorted(changed)[-1]]  # removed
    changed["new#p0"] = "Marie Curie won Nobel Prizes."  # added
    index_docs(tiny_settings, "docs", changed)
    info = get_adapter(tiny_settings, "kb-raft")
    b = binding_of(tiny_settings, info)
    assert b is not None and b.stale and b.changes is not None
    assert (b.changes.added, b.changes.updated, b.changes.removed) == (1, 1, 1)
    # the CLI
    listed = json.loads(invoke(tiny_settings, "adapters", "list", "--json").stdout)
    assert (
        listed[0]["index_binding"]["stale"] and listed[0]["index_binding"]["changes"]["added"] == 1
    )
    text = invoke(tiny_settings, "adapters", "list").stdout
    assert "[stale]" in text and "ragtune tune --retrain kb-raft" in text
    shown = json.loads(invoke(tiny_settings, "adapters", "show", "kb-raft").stdout)
    assert shown["index_binding"]["changes"]["updated_share"] == pytest.approx(1 / len(docs))
    # the service
    settings = make_settings(tiny_settings, default_index="docs")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        card = c.get("/v1/models/kb-raft").json()["ragtune"]
        assert card["kind"] == "adapter" and card["index"]["stale"]
        assert card["index"]["changes"]["removed"] == 1
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["kb-raft"]["ragtune"]["index"]["live_version"] == current_version(
            tiny_settings, "docs"
        )
        adapters = c.get("/v1/adapters").json()["adapters"]
        assert adapters[0]["index"]["stale"] and adapters[0]["version"] == info.version


def test_retrain_trains_again_with_the_same_options_on_the_live_index(tiny_settings, raft_adapter):
    squad, docs = raft_adapter
    before = get_adapter(tiny_settings, "kb-raft")
    index_docs(tiny_settings, "docs", {**docs, "new#p0": "Marie Curie won Nobel Prizes."})
    plan = retrain_args(tiny_settings, "kb-raft")
    assert plan.args.raft and plan.args.index == "docs" and plan.args.raft_k == 2
    assert plan.args.data == [str(squad.resolve())] and plan.args.max_steps == 2
    assert any("changed since version" in n for n in plan.notes)
    out = invoke(tiny_settings, "tune", "--retrain", "kb-raft", "--quiet")
    assert "retraining kb-raft" in out.stdout and "1 added" in out.stdout
    after = get_adapter(tiny_settings, "kb-raft")
    assert after.version != before.version
    assert after.manifest.hyperparameters == before.manifest.hyperparameters
    raft = after.manifest.raft
    assert raft is not None and raft.index_version == current_version(tiny_settings, "docs")
    assert raft.snapshot is not None and raft.snapshot.chunks == len(docs) + 1
    b = binding_of(tiny_settings, after)
    assert b is not None and not b.stale
    # flags given with --retrain win
    out = invoke(tiny_settings, "tune", "--retrain", "kb-raft", "--max-steps", "1", "--print-args")
    assert json.loads(out.stdout)["max_steps"] == 1


def test_retrain_needs_to_know_where_the_data_is(tiny_settings, raft_adapter, tmp_path):
    squad, _ = raft_adapter
    make_lora_adapter(tiny_settings, "handmade")  # a manifest with no data record
    with pytest.raises(InvalidInput, match="records no training data: give --data"):
        retrain_args(tiny_settings, "handmade")
    plan = retrain_args(tiny_settings, "handmade", {"data": [str(squad)]})
    assert plan.args.data == [str(squad)]
    moved = tmp_path / "moved.json"
    squad.rename(moved)
    with pytest.raises(DataError, match="no longer exists: give --data"):
        retrain_args(tiny_settings, "kb-raft")
    moved.rename(squad)
    squad.write_text(squad.read_text().replace("Paris", "Lyon"))
    assert "changed since the last training" in retrain_args(tiny_settings, "kb-raft").notes[0]


def test_index_changes_after_the_old_version_is_gone(tiny_settings, raft_adapter):
    """The snapshot is enough: the index versions in between may be deleted."""
    _, docs = raft_adapter
    info = get_adapter(tiny_settings, "kb-raft")
    first = info.manifest.raft.index_version  # type: ignore[union-attr]
    index_docs(tiny_settings, "docs", {**docs, "x#p0": "one"})
    index_docs(tiny_settings, "docs", {**docs, "x#p0": "one", "y#p0": "two"})
    from ragtune.core.index_changes import version_exists

    assert not version_exists(tiny_settings, "docs", first)
    snap = IndexSnapshot.read(info.path / SNAPSHOT_FILE)
    assert snap is not None
    ch = index_changes(tiny_settings, "docs", snap)
    assert (ch.added, ch.updated, ch.removed) == (2, 0, 0) and ch.since_version == first
