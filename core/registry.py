"""The adapter registry: one self-describing folder per adapter (read side + atomic publish).

Layout::

    <data>/adapters/<name>/
        adapter_config.json           \\ a normal peft adapter:
        adapter_model.safetensors     / PeftModel.from_pretrained(base, folder) loads it as is
        manifest.json                 base model id + fingerprint, prompt template id, data hash
                                      and counts, hyperparameters, metrics, RAFT index version,
                                      created time, library versions

The tuner trains into a staging folder and calls ``publish`` (atomic rename); readers (service,
eval) call ``get_adapter``/``list_adapters``. A folder without a manifest is never listed, so a
killed training run cannot leave an adapter that looks valid.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.core.atomic import clean_stale, replace_dir
from ragtune.core.config import Settings
from ragtune.core.errors import AdapterMismatch, UnknownAdapter
from ragtune.core.index_store import validate_name

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def base_model(self) -> str:
        return str(self.manifest.get("base_model", ""))

    @property
    def base_fingerprint(self) -> str:
        return str(self.manifest.get("base_fingerprint", ""))

    @property
    def method(self) -> str:
        return str(self.manifest.get("method", "lora"))


def adapter_dir(settings: Settings, name: str) -> Path:
    return settings.adapters_dir / validate_name(name, "adapter")


def _is_complete(path: Path) -> bool:
    if not (path / MANIFEST).is_file():
        return False
    # a LoRA adapter has adapter_config.json; a --method full model has config.json
    return (path / ADAPTER_CONFIG).is_file() or (path / "config.json").is_file()


def list_adapters(settings: Settings) -> list[AdapterInfo]:
    root = settings.adapters_dir
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and _is_complete(p):
            out.append(AdapterInfo(p.name, p, json.loads((p / MANIFEST).read_text())))
    return out


def get_adapter(settings: Settings, name: str) -> AdapterInfo:
    """The adapter called ``name``; UnknownAdapter if there is none (or only a partial one)."""
    path = adapter_dir(settings, name)
    if not _is_complete(path):
        raise UnknownAdapter(f"adapter {name!r} not found in the registry", field="adapter")
    return AdapterInfo(name, path, json.loads((path / MANIFEST).read_text()))


def check_base(info: AdapterInfo, base_model_id: str, base_fingerprint: str) -> None:
    """Refuse an adapter trained on another base model."""
    if info.base_fingerprint and info.base_fingerprint != base_fingerprint:
        raise AdapterMismatch(
            f"adapter {info.name!r} was trained on base model {info.base_model!r} "
            f"(weights {info.base_fingerprint[:12]}), but the configured generator is "
            f"{base_model_id!r} (weights {base_fingerprint[:12]})",
            field="adapter",
        )


def publish(settings: Settings, staged: Path, name: str) -> AdapterInfo:
    """Move a finished adapter folder (with manifest.json written last) into the registry."""
    if not _is_complete(staged):
        raise ValueError(f"refusing to publish incomplete adapter folder {staged}")
    dest = adapter_dir(settings, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staged, dest)
    return get_adapter(settings, name)


def remove(settings: Settings, name: str) -> None:
    info = get_adapter(settings, name)
    shutil.rmtree(info.path)


def clean_registry(settings: Settings) -> int:
    """Delete leftovers of interrupted writes; returns how many were removed."""
    return clean_stale(settings.adapters_dir)
