"""The adapter registry: one self-describing folder per adapter (read side + atomic publish).

Layout::

    <data>/adapters/<name>/
        adapter_config.json           \\ a normal peft adapter:
        adapter_model.safetensors     / PeftModel.from_pretrained(base, folder) loads it as is
        manifest.json                 core.manifests.AdapterManifest: base model id +
                                      fingerprint, prompt template id, data hash and counts,
                                      hyperparameters, metrics, RAFT index version, created
                                      time, library versions

The tuner trains into a staging folder and calls ``publish`` (atomic rename) while it holds
``registry_writer`` (one writer at a time, across processes), which first deletes what killed
writes left behind (``.tmp-*`` folders); readers (service, eval) call
``get_adapter``/``list_adapters``. A folder without a manifest is never listed, so a
killed training run cannot leave an adapter that looks valid. A folder whose manifest cannot
be read (corrupt, or from an unknown schema version) is left out of ``list_adapters`` with a
logged warning, so one bad folder does not take the listing (or the service's /v1/models)
down; ``scan_adapters`` returns those problems for the CLI to show, and ``get_adapter`` raises
them (ManifestError).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ragtune.core.atomic import clean_stale, replace_dir
from ragtune.core.config import Settings
from ragtune.core.errors import AdapterMismatch, ManifestError, UnknownAdapter
from ragtune.core.index_store import validate_name
from ragtune.core.manifests import MANIFEST, AdapterManifest

T = TypeVar("T")

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
LOCK_FILE = ".lock"  # a dot name: never listed as an adapter


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    manifest: AdapterManifest

    @property
    def base_model(self) -> str:
        return self.manifest.base_model

    @property
    def base_fingerprint(self) -> str:
        return self.manifest.base_fingerprint or ""

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def created_at(self) -> str | None:
        return self.manifest.created_at

    @property
    def version(self) -> str | None:
        """Which training of this name it is (older manifests: their created_at)."""
        return self.manifest.version or self.manifest.created_at


def adapter_dir(settings: Settings, name: str) -> Path:
    return settings.adapters_dir / validate_name(name, "adapter")


def _is_complete(path: Path) -> bool:
    if not (path / MANIFEST).is_file():
        return False
    # a LoRA adapter has adapter_config.json; a --method full model has config.json
    return (path / ADAPTER_CONFIG).is_file() or (path / "config.json").is_file()


def _read(path: Path) -> AdapterInfo:
    manifest = AdapterManifest.read(
        path / MANIFEST,
        hint=f"remove the adapter with `ragtune adapters rm {path.name}` and train it again",
    )
    return AdapterInfo(path.name, path, manifest)


def scan_folders(
    root: Path, is_complete: Callable[[Path], bool], read: Callable[[Path], T]
) -> tuple[list[T], list[ManifestError]]:
    """Every complete entry of a registry folder (adapters, tuned embedders), by name, and
    the problems of those whose manifest cannot be read; hidden folders (runs, staging) are
    not entries."""
    if not root.is_dir():
        return [], []
    found: list[T] = []
    problems: list[ManifestError] = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and is_complete(p):
            try:
                found.append(read(p))
            except ManifestError as e:
                problems.append(e)
    return found, problems


def scan_adapters(settings: Settings) -> tuple[list[AdapterInfo], list[ManifestError]]:
    """Every complete adapter, and the problems of those whose manifest cannot be read."""
    return scan_folders(settings.adapters_dir, _is_complete, _read)


def list_adapters(settings: Settings) -> list[AdapterInfo]:
    """Every adapter whose manifest reads; the others are skipped with a logged warning."""
    found, problems = scan_adapters(settings)
    for e in problems:
        log.warning("skipping adapter: %s", e.message)
    return found


def get_adapter(settings: Settings, name: str) -> AdapterInfo:
    """The adapter called ``name``.

    Raises:
        UnknownAdapter: there is none (or only a partial one, e.g. of a killed run).
        ManifestError: its manifest is corrupt or of an unknown schema version.
    """
    path = adapter_dir(settings, name)
    if not _is_complete(path):
        raise UnknownAdapter(f"adapter {name!r} not found in the registry", field="adapter")
    return _read(path)


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


def remove(settings: Settings, name: str) -> int:
    """Delete an adapter folder; one with an unreadable manifest can be removed too.
    Returns how many leftovers of interrupted writes were cleaned on the way."""
    path = adapter_dir(settings, name)
    with registry_writer(settings) as cleaned:
        if not _is_complete(path):
            raise UnknownAdapter(f"adapter {name!r} not found in the registry", field="adapter")
        shutil.rmtree(path)
    return cleaned


@contextlib.contextmanager
def registry_writer(settings: Settings) -> Iterator[int]:
    """Hold the registry's write lock (waiting for another writer), after deleting the
    leftovers of killed writes (``.tmp-*``: staging folders, old copies being replaced);
    yields how many were deleted. The OS drops the lock when its process dies (kill -9),
    and no writer's own staging folder is ever deleted: it holds the lock meanwhile."""
    root = settings.adapters_dir
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            cleaned = clean_stale(root)
            if cleaned:
                log.info("cleaned %d leftover(s) of interrupted writes in %s", cleaned, root)
            yield cleaned
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clean_registry(settings: Settings) -> int:
    """Delete leftovers of interrupted writes; returns how many were removed."""
    with registry_writer(settings) as cleaned:
        return cleaned
