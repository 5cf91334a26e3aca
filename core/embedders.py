"""The tuned-embedder registry: one self-describing folder per tuned embedder.

Layout::

    <data>/embedders/<name>/
        modules.json, config.json,        a normal sentence-transformers folder:
        model.safetensors, tokenizer...   SentenceTransformer(folder) loads it as is
        manifest.json                     core.manifests.EmbedderManifest: base model + hash,
                                          data hash and counts, mining index version,
                                          validation recall (base vs tuned), version id
    <data>/embedders/.runs/<name>/        an unfinished training (checkpoints), never listed

The setting ``embedder = "tuned:NAME"`` (or ``--embedder tuned:NAME``) loads one; its model id
is ``NAME@VERSION`` (``EmbedderInfo.model_id``), which an index built with it records, so an
index is refused by any other embedder, another training of the same name included.

The tuner trains into a staging folder, writes manifest.json last and calls ``publish``
(an atomic rename): a killed training leaves no folder that looks complete, and the previous
embedder of that name stays whole until the rename.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ragtune.core.atomic import clean_stale, replace_dir
from ragtune.core.config import TUNED_EMBEDDER_PREFIX, Settings
from ragtune.core.errors import ManifestError, ModelNotFound
from ragtune.core.index_store import validate_name
from ragtune.core.manifests import MANIFEST, EmbedderManifest
from ragtune.core.registry import scan_folders

log = logging.getLogger(__name__)

RUNS_DIR = ".runs"
ST_MODULES = "modules.json"  # written by SentenceTransformer.save


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    path: Path
    manifest: EmbedderManifest

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model_id(self) -> str:
        """``name@version``: what an index built with it records."""
        return self.manifest.model_id

    @property
    def spec(self) -> str:
        """The embedder setting that loads it."""
        return tuned_spec(self.name)


def tuned_spec(name: str) -> str:
    return TUNED_EMBEDDER_PREFIX + name


def tuned_name(spec: str) -> str | None:
    """NAME of a ``tuned:NAME`` spec; None for any other spec."""
    if not spec.startswith(TUNED_EMBEDDER_PREFIX):
        return None
    return validate_name(spec[len(TUNED_EMBEDDER_PREFIX) :], "embedder")


def model_id(name: str, version: str) -> str:
    return f"{name}@{version}"


def embedder_dir(settings: Settings, name: str) -> Path:
    return settings.embedders_dir / validate_name(name, "embedder")


def run_dir(settings: Settings, name: str) -> Path:
    """Work folder of a training (checkpoints for resume)."""
    return settings.embedders_dir / RUNS_DIR / validate_name(name, "embedder")


def _is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file() and (path / ST_MODULES).is_file()


def _read(path: Path) -> EmbedderInfo:
    manifest = EmbedderManifest.read(
        path / MANIFEST,
        hint=f"remove it with `ragtune embedders rm {path.name}` and train it again",
    )
    return EmbedderInfo(path.name, path, manifest)


def get_tuned_embedder(settings: Settings, name: str) -> EmbedderInfo:
    """The tuned embedder called ``name``.

    Raises:
        ModelNotFound: there is none (or only a partial one, e.g. of a killed run).
        ManifestError: its manifest is corrupt or of an unknown schema version.
    """
    path = embedder_dir(settings, name)
    if not _is_complete(path):
        raise ModelNotFound(
            f"tuned embedder {name!r} not found (train it with: "
            f"ragtune tune-embedder --data FILE --name {name})"
        )
    return _read(path)


def scan_tuned_embedders(settings: Settings) -> tuple[list[EmbedderInfo], list[ManifestError]]:
    """Every complete tuned embedder, and the problems of those whose manifest cannot be read."""
    return scan_folders(settings.embedders_dir, _is_complete, _read)


def publish(settings: Settings, staged: Path, name: str) -> EmbedderInfo:
    """Move a finished folder (manifest.json written last) into the registry, atomically."""
    if not _is_complete(staged):
        raise ValueError(f"refusing to publish incomplete embedder folder {staged}")
    dest = embedder_dir(settings, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staged, dest)
    return get_tuned_embedder(settings, name)


def remove(settings: Settings, name: str) -> None:
    """Delete a tuned embedder (one with an unreadable manifest too) and its unfinished run."""
    path = embedder_dir(settings, name)
    if not _is_complete(path):
        raise ModelNotFound(f"tuned embedder {name!r} not found")
    shutil.rmtree(path)
    shutil.rmtree(run_dir(settings, name), ignore_errors=True)


def clean_registry(settings: Settings) -> int:
    """Delete leftovers of interrupted writes; returns how many were removed."""
    return clean_stale(settings.embedders_dir)
