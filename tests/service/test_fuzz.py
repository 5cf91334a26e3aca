"""Fuzz every operation from the served OpenAPI schema (schemathesis): never a 5xx.

Runs against real uvicorn with tiny models; answers are capped at a few tokens (the schema
shows the running limit, so generated requests respect it) to keep the run short.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from ragtune.core.config import Settings
from ragtune.core.models import load_embedder
from ragtune.service.app import create_app
from tests.helpers import make_lora_adapter
from tests.service.conftest import make_settings
from tests.service.helpers import live_server, write_index


@pytest.fixture
def fuzz_schema(tiny_settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    import httpx

    from tests.service.conftest import wait_ready

    s = make_settings(
        tiny_settings,
        batch_window_ms=0.0,
        max_new_tokens=4,
        max_new_tokens_limit=8,
        max_question_chars=300,
        max_loaded_adapters=2,
    )
    write_index(s, load_embedder(s))
    make_lora_adapter(s, "alpha", seed=1)
    with live_server(create_app(s)) as url:
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield schemathesis.openapi.from_url(url + "/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call(timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
