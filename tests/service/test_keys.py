"""Scoped API keys: the key file (hashed at rest), the CLI, and EVERY route of the app with no
key, a wrong key, an out-of-scope key and a right key. The route table below is checked
against the app's own routes, so a new route without a case here fails."""

from __future__ import annotations

import hmac
import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput, NotFound
from ragtune.core.index_store import current_version
from ragtune.service import keys as keys_mod
from ragtune.service.app import create_app
from ragtune.service.keys import SCOPES, KeyRing, add_key, key_file, list_keys, remove_key
from tests.service.conftest import wait_ready
from tests.workflows.conftest import invoke

PUBLIC = "public"
QUESTION = {"question": "Where is the Eiffel Tower?", "mode": "base"}
CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "Where is Paris?"}]}


@dataclass(frozen=True)
class Case:
    scope: str  # PUBLIC, or the scope a key needs
    path: str  # a concrete path for the route
    ok: int  # the status a right key gets
    body: dict[str, Any] | None = None


# (route path, method) -> how to call it. OPTIONS and /schema need "read" (the default of a
# route that names no scope).
ROUTES: dict[tuple[str, str], Case] = {
    ("/healthz", "GET"): Case(PUBLIC, "/healthz", 200),
    ("/readyz", "GET"): Case(PUBLIC, "/readyz", 200),
    ("/metrics", "GET"): Case("metrics", "/metrics", 200),
    ("/v1/query", "POST"): Case("query", "/v1/query", 200, QUESTION),
    ("/v1/models", "GET"): Case("read", "/v1/models", 200),
    ("/v1/models/{model:path}", "GET"): Case("read", "/v1/models/alpha", 200),
    ("/v1/chat/completions", "POST"): Case("query", "/v1/chat/completions", 200, CHAT),
    ("/v1/completions", "POST"): Case(
        "query", "/v1/completions", 200, {"model": "alpha", "prompt": "Where is Paris?"}
    ),
    ("/v1/adapters", "GET"): Case("read", "/v1/adapters", 200),
    ("/v1/adapters/{name:str}/load", "POST"): Case(
        "adapters:manage", "/v1/adapters/alpha/load", 200
    ),
    ("/v1/adapters/{name:str}", "DELETE"): Case("adapters:manage", "/v1/adapters/alpha", 200),
    ("/v1/load_lora_adapter", "POST"): Case(
        "adapters:manage",
        "/v1/load_lora_adapter",
        200,
        {"lora_name": "alpha", "lora_path": "alpha", "load_inplace": True},
    ),
    ("/v1/unload_lora_adapter", "POST"): Case(
        "adapters:manage", "/v1/unload_lora_adapter", 200, {"lora_name": "alpha"}
    ),
    ("/v1/decisions", "GET"): Case("read", "/v1/decisions", 200),
    ("/v1/decisions/{index:str}/publish", "POST"): Case(
        "decisions:manage", "/v1/decisions/default/publish", 200, {"run": "r1"}
    ),
    ("/v1/decisions/{index:str}", "DELETE"): Case("decisions:manage", "/v1/decisions/default", 200),
    ("/schema", "GET"): Case("read", "/schema", 200),
    ("/schema/openapi.json", "GET"): Case("read", "/schema/openapi.json", 200),
    ("/schema/openapi.yaml", "GET"): Case("read", "/schema/openapi.yaml", 200),
    ("/schema/openapi.yml", "GET"): Case("read", "/schema/openapi.yml", 200),
    ("/schema/redoc", "GET"): Case("read", "/schema/redoc", 200),
    ("/schema/swagger", "GET"): Case("read", "/schema/swagger", 200),
    ("/schema/elements", "GET"): Case("read", "/schema/elements", 200),
    ("/schema/rapidoc", "GET"): Case("read", "/schema/rapidoc", 200),
    ("/schema/oauth2-redirect.html", "GET"): Case("read", "/schema/oauth2-redirect.html", 200),
    ("/schema/{path:str}", "GET"): Case("read", "/schema/nothing-here", 404),
}


def write_run(settings: Settings, run: str = "r1", winner: str = "rag", **config: Any) -> Path:
    """A finished eval run folder (what `ragtune eval run` writes, the keys a decision reads)."""
    folder = settings.runs_dir / run
    folder.mkdir(parents=True, exist_ok=True)
    conf = {
        "index": "default",
        "top_k": 2,
        "retrieval": "dense",
        "versions": {"index_version": current_version(settings, "default"), "adapters": {}},
        "target": {"kind": "pipeline", "top_k": 3, "retrieval": "hybrid"},
        **config,
    }
    f1 = {"mean": 0.5, "lo": 0.3, "hi": 0.7, "n": 4}
    summary = {
        "n_questions": 4,
        "variants": {winner: {"kind": winner.split(":")[0], "f1": f1, "em": f1, "n": 4}},
        "verdict": {"winner": winner, "runner_up": None, "margin": None, "text": "it won"},
    }
    (folder / "config.json").write_text(json.dumps(conf))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def keyed(svc_settings: Settings) -> tuple[Settings, dict[str, str]]:
    """A key with every scope, one lacking each scope, and the settings' env key."""
    settings = svc_settings.model_copy(update={"api_keys": ["env-key-0123456789"]})
    tokens = {"all": add_key(settings, "all", SCOPES)[0]}
    for scope in SCOPES:
        name = "no-" + scope.replace(":", "-")
        tokens[scope] = add_key(settings, name, [s for s in SCOPES if s != scope])[0]
    write_run(settings)
    return settings, tokens


def _routes(app: Any) -> set[tuple[str, str]]:
    return {(r.path, m) for r in app.routes for m in r.methods}


def test_every_route_has_an_auth_case_and_answers_each_kind_of_key(keyed, caplog):
    settings, tokens = keyed
    app = create_app(settings)
    routes = _routes(app)
    missing = sorted(r for r in routes if r not in ROUTES and r[1] != "OPTIONS")
    assert not missing, f"routes without an auth test case: {missing}"
    assert not set(ROUTES) - routes, "cases for routes the app no longer has"
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with TestClient(app) as c:
        wait_ready(c)
        for (_route, method), case in ROUTES.items():
            call = lambda h, m=method, cs=case: c.request(m, cs.path, json=cs.body, headers=h)  # noqa: E731
            if case.scope == PUBLIC:
                for h in ({}, {"Authorization": "Bearer wrong"}):
                    assert call(h).status_code == case.ok, case.path
                continue
            r = call({})
            assert r.status_code == 401, (method, case.path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = call({"Authorization": "Bearer rt-not-a-key"})
            assert r.status_code == 401, (method, case.path)
            r = call({"Authorization": f"Bearer {tokens[case.scope]}"})
            assert r.status_code == 403, (method, case.path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["scope"] == case.scope and case.scope in r.json()["detail"]
            seen.append(r.text)
            r = call({"Authorization": f"Bearer {tokens['all']}"})
            assert r.status_code == case.ok, (method, case.path, r.text)
            seen.append(r.text)
        # OPTIONS on every path: a key with "read"
        for path, method in routes:
            if method != "OPTIONS":
                continue
            concrete = next(cs.path for (p, _), cs in ROUTES.items() if p == path)
            assert c.options(concrete).status_code == 401
            no_read = {"Authorization": f"Bearer {tokens['read']}"}
            assert c.options(concrete, headers=no_read).status_code == 403
            ok = {"Authorization": f"Bearer {tokens['all']}"}
            assert c.options(concrete, headers=ok).status_code == 204
        # the settings' key has every scope
        env = {"Authorization": "Bearer env-key-0123456789"}
        assert c.post("/v1/adapters/alpha/load", headers=env).status_code == 200
    # keys never reach a log or a response (only their names do)
    for token in tokens.values():
        assert token not in caplog.text
        assert not any(token in text for text in seen)


def _client_with(settings: Settings, **key: Any) -> tuple[TestClient, dict[str, str]]:
    token, _ = add_key(settings, "scoped", **key)
    return TestClient(create_app(settings)), {"Authorization": f"Bearer {token}"}


def test_index_and_adapter_scopes_are_enforced_and_listings_filtered(svc_settings):
    from tests.helpers import make_lora_adapter
    from tests.service.helpers import write_index

    settings = svc_settings
    from ragtune.core.models import load_embedder

    write_index(settings, load_embedder(settings), name="other")
    make_lora_adapter(settings, "beta", seed=2)
    write_run(settings)
    add_key(settings, "admin", SCOPES)
    c, h = _client_with(
        settings,
        scopes=[*SCOPES],
        indexes=["other"],
        adapters=["alpha"],
    )
    with c:
        wait_ready(c)

        def problem(r: Any, scope: str) -> None:
            assert r.status_code == 403, r.text
            assert r.json()["scope"] == scope

        # questions: the default index is out of scope; "other" and "alpha" are in
        problem(c.post("/v1/query", json={"question": "where?"}, headers=h), "index:default")
        q = {"question": "where?", "index": "other"}
        assert c.post("/v1/query", json=q, headers=h).status_code == 200
        problem(
            c.post("/v1/query", json={**q, "mode": "hybrid", "adapter": "beta"}, headers=h),
            "adapter:beta",
        )
        assert (
            c.post("/v1/query", json={**q, "mode": "hybrid", "adapter": "alpha"}, headers=h)
        ).status_code == 200
        # an out-of-scope adapter is refused before it is looked up: no 404 leaks
        problem(
            c.post("/v1/query", json={**q, "mode": "hybrid", "adapter": "nope"}, headers=h),
            "adapter:nope",
        )
        # given passages need no index
        ctx = {"question": "where?", "contexts": ["Paris."]}
        assert c.post("/v1/query", json=ctx, headers=h).status_code == 200
        # OpenAI routes
        chat = {**CHAT, "model": "beta"}
        problem(c.post("/v1/chat/completions", json=chat, headers=h), "adapter:beta")
        chat = {**CHAT, "ragtune": {"index": "default"}}
        problem(c.post("/v1/chat/completions", json=chat, headers=h), "index:default")
        chat = {**CHAT, "ragtune": {"index": "other"}}
        assert c.post("/v1/chat/completions", json=chat, headers=h).status_code == 200
        # listings show only what the key may use
        models = {m["id"] for m in c.get("/v1/models", headers=h).json()["data"]}
        assert "alpha" in models and "beta" not in models
        problem(c.get("/v1/models/beta", headers=h), "adapter:beta")
        names = {a["name"] for a in c.get("/v1/adapters", headers=h).json()["adapters"]}
        assert names == {"alpha"}
        problem(c.post("/v1/adapters/beta/load", headers=h), "adapter:beta")
        problem(c.delete("/v1/adapters/beta", headers=h), "adapter:beta")
        # decisions: publishing for "default" is out of scope, and so is its listing
        problem(
            c.post("/v1/decisions/default/publish", json={"run": "r1"}, headers=h),
            "index:default",
        )
        admin_token, _ = add_key(settings, "admin2", SCOPES)
        admin = {"Authorization": f"Bearer {admin_token}"}
        r = c.post("/v1/decisions/default/publish", json={"run": "r1"}, headers=admin)
        assert r.status_code == 200, r.text
        assert c.get("/v1/decisions", headers=h).json()["decisions"] == []
        assert len(c.get("/v1/decisions", headers=admin).json()["decisions"]) == 1
        assert "decision:default" not in {
            m["id"] for m in c.get("/v1/models", headers=h).json()["data"]
        }
        problem(c.delete("/v1/decisions/default", headers=h), "index:default")


def test_a_removed_key_stops_working_and_a_broken_key_file_fails_closed(svc_settings):
    settings = svc_settings
    token, _ = add_key(settings, "temp")
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.get("/v1/models", headers=h).status_code == 200
        remove_key(settings, "temp")
        assert c.get("/v1/models", headers=h).status_code == 401
        new, _ = add_key(settings, "later")  # added while serving: works at once
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        key_file(settings).write_text("{not json")
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {new}"})
        assert r.status_code == 401  # nothing is accepted from an unreadable key file
        assert c.get("/v1/models").status_code == 401  # and the service is not left open


def test_the_key_file_holds_hashes_only_and_is_private(tiny_settings):
    token, rec = add_key(tiny_settings, "team-a", ["query"], ["kb"], ["kb-raft"])
    path = key_file(tiny_settings)
    text = path.read_text()
    assert token.startswith("rt-") and len(token) > 40 and token not in text
    assert rec.sha256 in text and rec.scopes == ["query"] and rec.indexes == ["kb"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(InvalidInput, match="exists"):
        add_key(tiny_settings, "team-a")
    with pytest.raises(InvalidInput, match="unknown scope"):
        add_key(tiny_settings, "b", ["everything"])
    with pytest.raises(InvalidInput, match="invalid index name"):
        add_key(tiny_settings, "c", ["query"], ["../etc"])
    assert [k.name for k in list_keys(tiny_settings)] == ["team-a"]
    remove_key(tiny_settings, "team-a")
    with pytest.raises(NotFound):
        remove_key(tiny_settings, "team-a")


def test_every_key_is_compared_whichever_matches(tiny_settings, monkeypatch):
    """A match on the first key still compares all the others (constant time)."""
    tokens = [add_key(tiny_settings, f"k{i}")[0] for i in range(5)]
    ring = KeyRing(tiny_settings.model_copy(update={"api_keys": ["e1", "e2"]}))
    calls = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(keys_mod.hmac, "compare_digest", counting)
    assert ring.authenticate("e1") is not None and len(calls) == 7
    calls.clear()
    assert ring.authenticate(tokens[-1]).name == "k4" and len(calls) == 7  # type: ignore[union-attr]
    calls.clear()
    assert ring.authenticate("nope") is None and len(calls) == 7


def test_keys_cli_adds_lists_and_removes(tiny_settings):
    res = invoke(tiny_settings, "keys", "add", "ops", "--scope", "metrics", "--index", "kb")
    token = res.stdout.strip().splitlines()[0]
    assert token.startswith("rt-")
    listed = json.loads(invoke(tiny_settings, "keys", "list", "--json").stdout)
    assert listed == [
        {
            "name": "ops",
            "scopes": ["metrics"],
            "indexes": ["kb"],
            "adapters": ["*"],
            "created_at": listed[0]["created_at"],
        }
    ]
    assert token not in invoke(tiny_settings, "keys", "list").stdout
    invoke(tiny_settings, "keys", "rm", "ops")
    assert "no keys" in invoke(tiny_settings, "keys", "list").stdout
