"""Decisions: publishing a run's winner (CLI and HTTP), serving it to requests that name no
mode or adapter, answers that say which decision chose them, and decisions that go stale or
break later (reported, never silently dropped)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from ragtune.core.config import Settings
from ragtune.core.decisions import (
    DecisionRefused,
    decision_from_run,
    decision_status,
    publish_decision,
    read_decision,
    run_folder,
)
from ragtune.core.errors import InvalidInput
from ragtune.core.index_store import current_version
from ragtune.core.models import load_embedder
from ragtune.core.registry import get_adapter
from ragtune.service.app import create_app
from tests.helpers import make_lora_adapter
from tests.service.conftest import wait_ready
from tests.service.helpers import DOCS, write_index
from tests.service.test_keys import write_run
from tests.workflows.conftest import invoke


def _adapter_run(
    settings: Settings, run: str = "r-alpha", winner: str = "hybrid:alpha", **config: object
):
    """A finished run whose winner is ``winner``, measured on the live index and adapter."""
    versions = config.pop("versions", None) or {
        "index_version": current_version(settings, "default"),
        "adapters": {"alpha": get_adapter(settings, "alpha").version},
    }
    return write_run(settings, run, winner=winner, versions=versions, **config)


def _publish(settings: Settings, run: str) -> None:
    publish_decision(settings, decision_from_run(settings, run_folder(settings, run)))


def test_cli_publish_then_requests_without_mode_get_the_winner(svc_settings):
    settings = svc_settings
    _adapter_run(settings)
    out = invoke(settings, "decisions", "publish", "r-alpha").stdout
    assert "decision for index default: hybrid:alpha (run r-alpha; test F1 0.500" in out
    d = read_decision(settings, "default")
    assert d is not None and d.mode == "hybrid" and d.adapter == "alpha"
    assert d.top_k == 2 and d.retrieval == "dense"  # the run's retrieval settings
    assert d.snapshot is not None and d.snapshot.chunks == len(DOCS)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        body = c.post("/v1/query", json={"question": "Where is the Eiffel Tower?"}).json()
        assert body["decision"] == "r-alpha"
        assert body["mode"] == "hybrid" and body["adapter"] == "alpha"
        assert len(body["sources"]) == 2  # top_k from the decision
        # a request that names its mode (or adapter) is answered as it asks
        body = c.post("/v1/query", json={"question": "Where?", "mode": "rag"}).json()
        assert body["decision"] is None and body["mode"] == "rag"
        body = c.post("/v1/query", json={"question": "Where?", "top_k": 1}).json()
        assert body["decision"] == "r-alpha" and len(body["sources"]) == 1  # a given top_k wins
        # another index has no decision: the default mode
        write_index(settings, load_embedder(settings), name="other")
        body = c.post("/v1/query", json={"question": "Where?", "index": "other"}).json()
        assert body["decision"] is None and body["mode"] == "rag"
        # streamed answers say it too
        with c.stream(
            "POST", "/v1/query", json={"question": "Where is Paris?", "stream": True}
        ) as r:
            text = "".join(r.iter_text())
        answer = json.loads(text.split("event: answer\ndata: ")[1].split("\n")[0])
        assert answer["decision"] == "r-alpha"
        # the OpenAI routes: model decision:<index>
        chat = {
            "model": "decision:default",
            "messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}],
        }
        r = c.post("/v1/chat/completions", json=chat).json()
        assert r["ragtune"]["decision"] == "r-alpha" and r["ragtune"]["adapter"] == "alpha"
        assert r["ragtune"]["mode"] == "hybrid" and r["model"] == "decision:default"
        r = c.post("/v1/completions", json={"model": "decision:default", "prompt": "Where?"})
        assert r.json()["ragtune"][0]["decision"] == "r-alpha"
        r = c.post("/v1/chat/completions", json={**chat, "model": "alpha"}).json()
        assert r["ragtune"]["decision"] is None
        bad = {**chat, "ragtune": {"retrieval": "none"}}
        r = c.post("/v1/chat/completions", json=bad)
        assert r.status_code == 400 and r.json()["field"] == "ragtune.retrieval"
        r = c.post("/v1/chat/completions", json={**chat, "model": "decision:nothing"})
        assert r.status_code == 404 and "no decision is published" in r.json()["detail"]
        # the listings
        cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        card = cards["decision:default"]["ragtune"]
        assert card["kind"] == "decision" and card["decision"]["run"] == "r-alpha"
        assert c.get("/v1/models/decision:default").json()["id"] == "decision:default"
        listed = c.get("/v1/decisions").json()["decisions"]
        assert len(listed) == 1
        one = listed[0]
        assert one["status"] == "ok" and one["winner"] == "hybrid:alpha"
        assert one["f1"] == {"mean": 0.5, "lo": 0.3, "hi": 0.7} and one["n"] == 4
        assert one["index_version"] == one["index_version_now"] and one["changes"] is None
        assert "run_path" not in one  # never a server path
        ready = c.get("/readyz").json()
        assert ready["decisions"] == {"ok": 1, "stale": 0, "broken": 0, "broken_indexes": []}


def test_http_publish_and_remove(svc_settings):
    settings = svc_settings
    write_run(settings, "r1")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/v1/decisions/default/publish", json={"run": "r1"})
        assert r.status_code == 200 and r.json()["winner"] == "rag" and r.json()["status"] == "ok"
        body = c.post("/v1/query", json={"question": "Where?"}).json()
        assert body["decision"] == "r1" and body["mode"] == "rag"
        r = c.post("/v1/decisions/default/publish", json={"run": "nope"})
        assert r.status_code == 404 and r.json()["field"] == "run"
        r = c.post("/v1/decisions/default/publish", json={"run": "../x"})
        assert r.status_code == 400
        r = c.post("/v1/decisions/other/publish", json={"run": "r1"})
        assert r.status_code == 400 and "measured on index 'default'" in r.json()["detail"]
        assert c.delete("/v1/decisions/default").json() == {
            "index": "default",
            "run": "r1",
            "removed": True,
        }
        assert c.delete("/v1/decisions/default").status_code == 404
        assert c.post("/v1/query", json={"question": "Where?"}).json()["decision"] is None


def test_publish_is_refused_when_the_winner_cannot_be_served_as_measured(svc_settings):
    settings = svc_settings
    # the adapter was retrained since the run measured it
    _adapter_run(settings, "retrained", versions={
        "index_version": current_version(settings, "default"), "adapters": {"alpha": "old"}
    })  # fmt: skip
    with pytest.raises(DecisionRefused, match="retrained since"):
        _publish(settings, "retrained")
    # the adapter is gone
    _adapter_run(settings, "gone", winner="hybrid:gone")
    with pytest.raises(DecisionRefused, match="'gone', which no longer exists"):
        _publish(settings, "gone")
    # the index version it was measured on no longer exists
    write_run(settings, "old-index")
    emb = load_embedder(settings)
    write_index(settings, emb, docs={**DOCS, "new.txt": "A new document about rivers."})
    write_index(settings, emb, docs={**DOCS, "new.txt": "Another text about mountains."})
    with pytest.raises(DecisionRefused, match="no longer exists"):
        _publish(settings, "old-index")
    # measured over HTTP: no versions recorded
    write_run(settings, "http", target={"kind": "http", "url": "http://x"})
    with pytest.raises(DecisionRefused, match="over HTTP"):
        _publish(settings, "http")
    # not a finished run
    (settings.runs_dir / "half").mkdir()
    with pytest.raises(InvalidInput, match=r"no config\.json"):
        _publish(settings, "half")
    # the CLI says it in one line, exit code 2
    res = CliRunner().invoke(
        __import__("ragtune.cli.main", fromlist=["cli"]).cli,
        ["--data-dir", str(settings.data_dir), "decisions", "publish", "retrained"],
    )
    assert res.exit_code != 0
    assert read_decision(settings, "default") is None  # nothing was published


def test_a_decision_that_breaks_later_is_reported_and_refuses_its_requests(svc_settings):
    settings = svc_settings
    _adapter_run(settings)
    _publish(settings, "r-alpha")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.post("/v1/query", json={"question": "Where?"}).json()["decision"] == "r-alpha"
        # the adapter is removed from the registry
        invoke(settings, "adapters", "rm", "alpha")
        r = c.post("/v1/query", json={"question": "Where?"})
        assert r.status_code == 409
        detail = r.json()["detail"]
        assert "decision for index 'default' (run 'r-alpha') cannot be served" in detail
        assert "adapter 'alpha' was removed" in detail
        # an explicit mode is still answered
        assert c.post("/v1/query", json={"question": "Where?", "mode": "rag"}).status_code == 200
        listed = c.get("/v1/decisions").json()["decisions"][0]
        assert (
            listed["status"] == "broken" and "adapter 'alpha' was removed" in listed["problems"][0]
        )
        ready = c.get("/readyz")
        assert ready.status_code == 200  # other requests are still served
        assert ready.json()["decisions"]["broken_indexes"] == ["default"]
        # an unreadable decision file is reported, not dropped
        (settings.data_dir / "decisions" / "default.json").write_text("{oops")
        r = c.post("/v1/query", json={"question": "Where?"})
        assert r.status_code == 409 and "cannot be read" in r.json()["detail"]
        assert c.get("/v1/decisions").json()["unreadable"] == ["default"]
        assert c.get("/readyz").json()["decisions"]["broken"] == 1


def test_a_decision_goes_stale_when_the_index_changes_and_says_by_how_much(svc_settings):
    settings = svc_settings
    _adapter_run(settings)
    _publish(settings, "r-alpha")
    docs = dict(DOCS)
    docs["eiffel.txt"] = "The Eiffel Tower, built in 1889, stands in Paris."  # updated
    del docs["nile.txt"]  # removed
    docs["rhine.txt"] = "The Rhine flows through Germany."  # added
    write_index(settings, load_embedder(settings), docs=docs)
    d = read_decision(settings, "default")
    assert d is not None
    st = decision_status(settings, d)
    assert st.status == "stale"
    ch = st.changes
    assert ch is not None
    assert (ch["added"], ch["updated"], ch["removed"]) == (1, 1, 1)
    assert ch["updated_share"] == pytest.approx(1 / len(DOCS))
    assert "changed since version" in st.notes[0] and "1 updated (20.0%)" in st.notes[0]
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        one = c.get("/v1/decisions").json()["decisions"][0]
        assert one["status"] == "stale" and one["changes"]["removed"] == 1
        assert c.get("/readyz").json()["decisions"]["stale"] == 1
        # still served: stale is not broken
        assert c.post("/v1/query", json={"question": "Where?"}).json()["decision"] == "r-alpha"
    listed = json.loads(invoke(settings, "decisions", "list", "--json").stdout)
    assert listed[0]["status"] == "stale" and listed[0]["changes"]["added"] == 1
    shown = json.loads(invoke(settings, "decisions", "show", "default").stdout)
    assert shown["status"]["status"] == "stale" and "snapshot" not in shown
    invoke(settings, "decisions", "rm", "default")
    assert "no decisions" in invoke(settings, "decisions", "list").stdout


def test_an_adapter_with_a_decision_can_be_retrained_and_the_decision_says_so(svc_settings):
    settings = svc_settings
    _adapter_run(settings)
    _publish(settings, "r-alpha")
    make_lora_adapter(settings, "alpha", seed=5)  # republished under the same name
    manifest = settings.adapters_dir / "alpha" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "version": "v2"}))
    d = read_decision(settings, "default")
    assert d is not None
    st = decision_status(settings, d)
    assert st.status == "stale" and "retrained since the decision" in st.notes[0]
