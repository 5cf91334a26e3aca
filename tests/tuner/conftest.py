"""Tuner fixtures: small data files and quick training arguments for the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.tuner.args import TuneArgs
from tests.tuner.helpers import prompt_records, write_jsonl


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "qa.jsonl", prompt_records(16))


def quick_args(data: Path | list[str], name: str = "a1", **kw: object) -> TuneArgs:
    """A few real LoRA steps on the tiny model (seconds)."""
    base = dict(
        data=[str(data)] if isinstance(data, Path) else data,
        name=name,
        max_steps=4,
        batch_size=2,
        val_fraction=0.25,
        lr=5e-3,
        r=4,
        alpha=8,
        seed=3,
    )
    base.update(kw)
    return TuneArgs(**base)  # type: ignore[arg-type]
