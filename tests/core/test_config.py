"""Settings layering: defaults < TOML file < RAGTUNE_* env < flags, with sources."""

from __future__ import annotations

import pytest

from ragtune.core.config import resolve_settings
from ragtune.core.errors import InvalidInput


def test_layers_and_sources(tmp_path):
    cfg = tmp_path / "ragtune.toml"
    cfg.write_text("top_k = 4\nport = 7000\nchunk_size = 128\n")
    settings, sources = resolve_settings(
        cfg, overrides={"port": 9000, "host": None}, environ={"RAGTUNE_CHUNK_SIZE": "96"}
    )
    assert settings.top_k == 4 and sources["top_k"] == f"file {cfg}"
    assert settings.chunk_size == 96 and sources["chunk_size"] == "env RAGTUNE_CHUNK_SIZE"
    assert settings.port == 9000 and sources["port"] == "flag"
    assert settings.host == "127.0.0.1" and sources["host"] == "default"


def test_ragtune_table_and_env_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[ragtune]\nretrieval = 'bm25'\n")
    settings, _ = resolve_settings(environ={"RAGTUNE_CONFIG": str(cfg)})
    assert settings.retrieval == "bm25"


def test_api_keys_from_env_are_split():
    settings, _ = resolve_settings(environ={"RAGTUNE_API_KEYS": "k1, k2"})
    assert settings.api_keys == ["k1", "k2"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("top_k = 0\n", "top_k"),
        ("nonsense = 1\n", "unknown setting"),
        ("top_k = [\n", "not valid TOML"),
        ("index_type = 'hnsw'\n", "index_type"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(InvalidInput, match=needle):
        resolve_settings(cfg, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        resolve_settings(tmp_path / "nope.toml", environ={})
