"""The CLI shell: fast --help (no torch), config show with sources, models, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ragtune.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from click.testing import CliRunner; from ragtune.cli.main import cli;"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'faiss', 'peft')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_show_reports_sources(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text("top_k = 7\n")
    r = _run("--config", str(cfg), "config", "show", "--json", env={"RAGTUNE_PORT": "8123"})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["top_k"] == {"value": 7, "source": f"file {cfg}"}
    assert data["port"] == {"value": 8123, "source": "env RAGTUNE_PORT"}
    assert data["host"]["source"] == "default"


def test_bad_setting_is_one_clean_line():
    r = _run("config", "show", env={"RAGTUNE_TOP_K": "zero"})
    assert r.returncode != 0
    assert "top_k" in r.stderr and "Traceback" not in r.stderr


def test_models_lists_configured_models(tmp_path):
    r = _run("--generator", str(tmp_path / "missing.gguf"), "models")
    assert r.returncode != 0 and "GGUF file not found" in r.stderr
    r = _run("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["role"] for row in rows] == ["embedder", "generator"]


def test_unexpected_errors_are_one_line(tmp_path):
    # A generator folder that exists but holds no model: a clean message, no traceback.
    (tmp_path / "empty").mkdir()
    r = _run("--generator", str(tmp_path / "empty"), "models", "prepare")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and r.stderr.startswith("error:")
