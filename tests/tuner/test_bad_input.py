"""Bad input is a clear error before any training starts (no work folder, no adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.errors import (
    AdapterMismatch,
    DataError,
    InsufficientResources,
    InvalidInput,
    ModelNotFound,
    UnknownAdapter,
)
from ragtune.tuner.api import load_tuned, run_dir, train_adapter
from tests.tiny_models import build_tiny_generator
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import write_jsonl


def _nothing_started(settings: Settings, name: str = "a1") -> bool:
    return not run_dir(settings, name).exists() and not (settings.adapters_dir / name).exists()


def test_empty_data(tiny_settings: Settings, tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        train_adapter(tiny_settings, quick_args(p), progress=False)
    assert _nothing_started(tiny_settings)


def test_all_lines_invalid_reports_counts_and_lines(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    p = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q"}, {"prompt": "r"}, {"x": 1}])
    with pytest.raises(DataError, match=r"all 3 records are invalid \(bad.jsonl:1: "):
        train_adapter(tiny_settings, quick_args(p, format="prompt"), progress=False)
    assert _nothing_started(tiny_settings)


def test_validation_split_larger_than_data(tiny_settings: Settings, tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(DataError, match="validation split larger than the data"):
        train_adapter(tiny_settings, quick_args(p, val_fraction=0.5), progress=False)
    assert _nothing_started(tiny_settings)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x" * 80])
def test_unsafe_name(tiny_settings: Settings, qa_file: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid adapter name"):
        train_adapter(tiny_settings, quick_args(qa_file, name), progress=False)
    assert not tiny_settings.adapters_dir.exists()


def test_unknown_base_model(tiny_settings: Settings, qa_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        train_adapter(
            tiny_settings, quick_args(qa_file, base=str(tmp_path / "no-model")), progress=False
        )
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelNotFound):
        train_adapter(tiny_settings, quick_args(qa_file, base=str(empty)), progress=False)
    assert _nothing_started(tiny_settings)


def test_too_little_disk(tiny_settings: Settings, qa_file: Path) -> None:
    with pytest.raises(InsufficientResources, match="not enough disk"):
        train_adapter(tiny_settings, quick_args(qa_file, min_free_disk_mb=10**12), progress=False)
    assert _nothing_started(tiny_settings)


def test_existing_name_needs_overwrite(tiny_settings: Settings, qa_file: Path) -> None:
    train_adapter(tiny_settings, quick_args(qa_file), progress=False)
    with pytest.raises(InvalidInput, match="already exists"):
        train_adapter(tiny_settings, quick_args(qa_file), progress=False)
    train_adapter(tiny_settings, quick_args(qa_file, overwrite=True), progress=False)


def test_all_examples_too_long(tiny_settings: Settings, qa_file: Path) -> None:
    with pytest.raises(DataError, match="longer than --max-length 16"):
        train_adapter(tiny_settings, quick_args(qa_file, max_length=16), progress=False)


def test_unknown_init_from(tiny_settings: Settings, qa_file: Path) -> None:
    with pytest.raises(UnknownAdapter):
        train_adapter(tiny_settings, quick_args(qa_file, init_from="nope"), progress=False)


def test_adapter_for_another_base_is_refused(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path
) -> None:
    train_adapter(tiny_settings, quick_args(qa_file), progress=False)
    other = build_tiny_generator(tmp_path / "other-gen", seed=1)
    other_settings = tiny_settings.model_copy(update={"generator": str(other)})
    with pytest.raises(AdapterMismatch, match="was trained on base model 'generator'"):
        load_tuned(other_settings, "a1")
    with pytest.raises(AdapterMismatch):
        train_adapter(other_settings, quick_args(qa_file, "a2", init_from="a1"), progress=False)
