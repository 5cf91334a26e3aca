"""Adapter routes: list, load, unload, LRU limit, new adapters without a restart."""

from __future__ import annotations

from litestar.testing import TestClient

from ragtune.service.app import create_app
from tests.helpers import make_lora_adapter
from tests.service.conftest import make_settings, wait_ready


def test_list_load_unload(client):
    r = client.get("/v1/adapters")
    assert r.status_code == 200
    body = r.json()
    assert [a["name"] for a in body["adapters"]] == ["alpha"]
    assert body["loaded"] == [] and body["max_loaded"] == 4
    r = client.post("/v1/adapters/alpha/load")
    assert r.status_code == 200 and r.json()["loaded_adapters"] == ["alpha"]
    assert client.get("/v1/adapters").json()["adapters"][0]["loaded"] is True
    r = client.delete("/v1/adapters/alpha")
    assert r.status_code == 200 and r.json() == {
        "name": "alpha",
        "loaded": False,
        "loaded_adapters": [],
        "evicted": [],
    }
    # unloading again is fine (it is in the registry, just not in memory)
    assert client.delete("/v1/adapters/alpha").json()["loaded"] is False


def test_unknown_and_invalid_names(client):
    assert client.post("/v1/adapters/nope/load").status_code == 404
    assert client.delete("/v1/adapters/nope").status_code == 404
    for bad in ("..", ".hidden", "a%2F..%2Fb", "-x"):
        r = client.post(f"/v1/adapters/{bad}/load")
        assert r.status_code in (400, 404), (bad, r.text)
        assert "Traceback" not in r.text


def test_new_adapter_is_usable_without_restart(client, svc_settings):
    q = {"question": "paris is", "mode": "finetune", "adapter": "beta"}
    assert client.post("/v1/query", json=q).status_code == 404
    make_lora_adapter(svc_settings, "beta", seed=7)  # "published by the tuner" while running
    r = client.post("/v1/query", json=q)
    assert r.status_code == 200 and r.json()["adapter"] == "beta"
    assert "beta" in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_lru_limit_evicts_least_recently_used(svc_settings):
    settings = make_settings(svc_settings, max_loaded_adapters=2)
    for i, name in enumerate(("b1", "b2", "b3")):
        make_lora_adapter(settings, name, seed=10 + i)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        c.post("/v1/adapters/b1/load")
        c.post("/v1/adapters/b2/load")
        # a query with b1 makes b2 the least recently used
        q = {"question": "paris is", "mode": "finetune", "adapter": "b1"}
        assert c.post("/v1/query", json=q).status_code == 200
        r = c.post("/v1/adapters/b3/load").json()
        assert r["evicted"] == ["b2"] and sorted(r["loaded_adapters"]) == ["b1", "b3"]
        stats = c.get("/v1/adapters").json()["stats"]
        assert stats["evictions"] == 1 and stats["misses"] == 3 and stats["hits"] >= 1
        metrics = c.get("/metrics").text
        assert "ragtune_adapter_cache_evictions_total 1.0" in metrics
        assert "ragtune_adapters_loaded 2.0" in metrics


def test_mixed_adapters_in_one_batch(svc_settings):
    """Concurrent requests for different adapters are generated in one batch, and each
    gets the answer its own adapter gives alone."""
    import concurrent.futures as cf

    make_lora_adapter(svc_settings, "beta", seed=5)
    settings = make_settings(svc_settings, batch_window_ms=400.0)
    qs = [
        {"question": "paris is", "mode": "base"},
        {"question": "paris is", "mode": "finetune", "adapter": "alpha"},
        {"question": "paris is", "mode": "finetune", "adapter": "beta"},
    ]
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        alone = [c.post("/v1/query", json=q).json()["answer"] for q in qs]
        with cf.ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda q: c.post("/v1/query", json=q).json(), qs))
        assert [t["answer"] for t in together] == alone
        assert [t["adapter"] for t in together] == [None, "alpha", "beta"]
        metrics = c.get("/metrics").text
    # rows per decode step: the three lone requests ran alone, the concurrent ones together
    steps = float(metrics.split("ragtune_batch_size_count ")[1].split()[0])
    lone = float(metrics.split('ragtune_batch_size_bucket{le="1.0"} ')[1].split()[0])
    rows = float(metrics.split("ragtune_batch_size_sum ")[1].split()[0])
    assert lone < steps and rows > steps
