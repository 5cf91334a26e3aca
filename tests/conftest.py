"""Shared fixtures: tiny real models built once per session, and settings on a temp data dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ragtune.core.config import Settings, resolve_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_SQUAD = REPO.parent / "shared" / "data" / "squad" / "squaddev_v1.1.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA device: skipped where torch sees none."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch  # only when a gpu test was collected: torch is slow to import

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch sees none)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_embedder, build_tiny_generator

    root = tmp_path_factory.mktemp("tiny-models")
    build_tiny_generator(root / "generator")
    build_tiny_embedder(root / "embedder")
    return root


@pytest.fixture
def tiny_settings(tiny_models_dir: Path, tmp_path: Path) -> Settings:
    """Settings pointing at the tiny models and a fresh data dir (a copy per test)."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    settings, _ = resolve_settings(
        overrides={
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "embedder": str(models / "embedder"),
            "generator": str(models / "generator"),
            "torch_threads": 1,
            "chunk_size": 64,
            "chunk_overlap": 8,
        },
        environ={},
    )
    return settings


@pytest.fixture
def packaged_settings(tmp_path: Path) -> Settings:
    """Settings with the real packaged models (for tests marked slow)."""
    settings, _ = resolve_settings(
        overrides={"data_dir": tmp_path / "data", "torch_threads": 2}, environ={}
    )
    return settings
