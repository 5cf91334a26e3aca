"""Service fixtures: tiny real models, a real index and adapter, the app, a live server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from ragtune.core.config import Settings
from ragtune.core.models import load_embedder
from ragtune.service.app import create_app
from tests.helpers import make_lora_adapter
from tests.service.helpers import live_server, write_index


def make_settings(base: Settings, **update: object) -> Settings:
    """Service-friendly defaults for tests: short answers, a short batch window."""
    defaults: dict[str, object] = {"max_new_tokens": 6, "batch_window_ms": 5.0}
    return base.model_copy(update=defaults | update)


@pytest.fixture
def svc_settings(tiny_settings: Settings) -> Settings:
    settings = make_settings(tiny_settings)
    write_index(settings, load_embedder(settings))
    make_lora_adapter(settings, "alpha", seed=1)
    return settings


def wait_ready(client: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")  # type: ignore[attr-defined]
        if r.status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {r.text}")


@pytest.fixture
def client(svc_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(svc_settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def server(svc_settings: Settings) -> Iterator[str]:
    """The app under real uvicorn on 127.0.0.1; yields the base URL once ready."""
    import httpx

    with live_server(create_app(svc_settings)) as url:
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield url
