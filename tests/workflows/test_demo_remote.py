"""`ragtune demo` unchanged on a generation server: the experiment's evaluation, run again
with ``generator_backend = "openai"`` against a ragtune back, gives the local run's answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.helpers import back_server
from tests.workflows.conftest import invoke


def answers(folder: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(ln) for ln in (folder / "results.jsonl").read_text().splitlines()]
    return sorted((r["qid"], r["variant"], r["prediction"]) for r in rows if r["kind"] == "answer")


@pytest.mark.slow
def test_the_demo_evaluates_on_a_generation_server(tiny_settings, tmp_path, monkeypatch):
    invoke(tiny_settings, "demo", "-q")
    folder = tiny_settings.data_dir / "runs" / "demo"
    local = answers(folder)
    for name in ("results.jsonl", "summary.json", "config.json"):  # evaluate again
        (folder / name).unlink()
    back = tiny_settings.model_copy(
        update={"data_dir": tmp_path / "back", "lora_dirs": [tiny_settings.adapters_dir]}
    )
    with back_server(back) as url:
        monkeypatch.setenv("RAGTUNE_GENERATOR_BACKEND", "openai")
        monkeypatch.setenv("RAGTUNE_GENERATOR_URL", url)
        res = invoke(tiny_settings, "demo", "-q")  # same split, index and adapters: eval only
        assert "Winner on token F1" in res.output
    assert answers(folder) == local and len(local) > 100
    config = json.loads((folder / "config.json").read_text())
    assert config["target"]["generator_backend"] == "openai"
