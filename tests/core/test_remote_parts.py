"""Small parts of the remote backend that need no server: error bodies as vLLM, ragtune and
proxies write them; the first-line cut of raw completions and of their streams."""

from __future__ import annotations

import json

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import BackendError, BackendTimeout, BackendUnavailable
from ragtune.core.openai_client import BackendConfig, error_for, server_message
from ragtune.core.pipeline import first_line
from ragtune.service.sse import VisibleText


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"error": {"message": "The model `x` does not exist.", "code": 404}},
            "The model `x` does not exist.",
        ),
        ({"object": "error", "message": "old vLLM", "code": 400}, "old vLLM"),
        ({"status": 400, "detail": "prompt: too long"}, "prompt: too long"),
        ({"error": "plain string"}, "plain string"),
    ],
)
def test_server_message_reads_each_error_shape(body, message):
    assert server_message(400, json.dumps(body).encode()) == message


def test_server_message_of_text_and_of_nothing():
    assert server_message(502, b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert server_message(500, b"") == "HTTP 500 with an empty body"
    assert server_message(500, b"x" * 2000).endswith(" ...")


def test_statuses_map_to_the_clients_status():
    assert isinstance(error_for(503, "m", "w", "9"), BackendUnavailable)
    assert error_for(503, "m", "w", "9").retry_after == 9  # type: ignore[attr-defined]
    assert isinstance(error_for(429, "m", "w"), BackendUnavailable)
    assert isinstance(error_for(504, "m", "w"), BackendTimeout)
    for status in (400, 401, 404, 422, 500, 502):
        err = error_for(status, "its words", "a completion")
        assert isinstance(err, BackendError) and err.status == 502
        assert err.message == f"the generation backend answered {status} to a completion: its words"


def test_backend_url_takes_an_optional_v1():
    for url in (
        "http://vllm:8000",
        "http://vllm:8000/",
        "http://vllm:8000/v1",
        "http://vllm:8000/v1/",
    ):
        s = Settings(generator_backend="openai", generator_url=url)
        assert BackendConfig.of(s).url == "http://vllm:8000"


def test_openai_backend_needs_a_url():
    with pytest.raises(ValueError, match="needs generator_url"):
        Settings(generator_backend="openai")


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("Paris\nmore", "Paris"),
        ("\n\n  Paris\nmore", "\n\n  Paris"),
        ("Paris", "Paris"),
        ("", ""),
        ("  \n ", "  \n "),
    ],
)
def test_first_line_keeps_leading_blank_lines(text, cut):
    assert first_line(text) == cut
    stream = VisibleText(first_line=True, keep_leading=True)
    assert "".join(stream.feed(ch) for ch in text) == cut


def test_config_show_never_prints_the_backend_key():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = os.environ | {"PYTHONPATH": str(repo), "RAGTUNE_GENERATOR_API_KEY": "s3cret"}
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "ragtune", "config", "show", *extra],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "s3cret" not in out and "***set***" in out
    shown = json.loads(out)["generator_api_key"]
    assert shown == {"value": "***set***", "source": "env RAGTUNE_GENERATOR_API_KEY"}
