"""The adapters one serving process knows: the registry, plus adapters registered at run time
from a folder (vLLM's ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``).

A runtime registration names a peft LoRA folder anywhere under the registry or the
``lora_dirs`` setting; it lives as long as the process (as in vLLM) and, for its name, takes
precedence over the registry. A folder with a ragtune ``manifest.json`` is read through it
(so the base model check applies); a plain peft folder gets a manifest made from its
``adapter_config.json``, and a version id from its files' sizes and times, so that a
republished folder is seen as new.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput, NotFound, RagtuneError
from ragtune.core.index_store import validate_name
from ragtune.core.manifests import MANIFEST, AdapterManifest
from ragtune.core.registry import ADAPTER_CONFIG, AdapterInfo, get_adapter, list_adapters

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class LoRANotFound(NotFound):
    """No LoRA adapter at the path given (vLLM's LoRAAdapterNotFoundError, also a 404)."""

    title = "LoRA adapter not found"


class PathNotAllowed(RagtuneError):
    """A registration names a folder outside those this server loads adapters from."""

    status = 403
    title = "Forbidden"


def lora_folder_problem(path: Path) -> str | None:
    """Why ``path`` is not a loadable peft LoRA folder, or None when it is (the check vLLM
    skips: it answers 200 for a path that does not exist, vllm-project/vllm#18372)."""
    try:
        if not path.is_dir():
            return "no such folder"
        if not (path / ADAPTER_CONFIG).is_file():
            return f"no {ADAPTER_CONFIG} in it"
        if not any((path / w).is_file() for w in WEIGHT_FILES):
            return f"no adapter weights ({' or '.join(WEIGHT_FILES)}) in it"
    except OSError as e:  # a name too long, no permission, ...
        return f"a path that cannot be read ({e.strerror or type(e).__name__})"
    except ValueError:  # a NUL byte in it
        return "a path that cannot be read"
    return None


def read_lora_folder(name: str, path: Path) -> AdapterInfo:
    """An AdapterInfo for a LoRA folder: its ragtune manifest, or one made from peft's
    ``adapter_config.json`` (the base model then is the config's ``base_model_name_or_path``;
    no fingerprint, so only loading it tells whether it fits)."""
    if (path / MANIFEST).is_file():
        manifest = AdapterManifest.read(path / MANIFEST)
        return AdapterInfo(name, path, manifest)
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"adapter {name!r}: {ADAPTER_CONFIG} is not readable JSON") from e
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise InvalidInput(f"adapter {name!r} is not a LoRA adapter", field="lora_path")
    stamp = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        stamp.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    manifest = AdapterManifest(
        name=name,
        base_model=str(config.get("base_model_name_or_path") or "unknown"),
        version="files-" + stamp.hexdigest()[:16],
    )
    return AdapterInfo(name, path, manifest)


class AdapterCatalog:
    """Name -> adapter: runtime registrations first, then the registry (read on every call,
    so adapters published while the process runs are found at once). Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: dict[str, Path] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> AdapterInfo:
        """The adapter called ``name`` (UnknownAdapter, 404, when there is none)."""
        with self._lock:
            path = self._runtime.get(name)
        if path is not None:
            problem = lora_folder_problem(path)
            if problem is not None:  # its folder went away since it was registered
                raise LoRANotFound(
                    f"adapter {name!r} was registered from a folder that is gone ({problem})",
                    field="adapter",
                )
            return read_lora_folder(name, path)
        return get_adapter(self.settings, name)

    def all(self) -> list[AdapterInfo]:
        """Every adapter: the runtime registrations (whose folders still load), then the
        registry's adapters of other names."""
        with self._lock:
            runtime = dict(self._runtime)
        out = []
        for name, path in sorted(runtime.items()):
            if lora_folder_problem(path) is None:
                out.append(read_lora_folder(name, path))
        return out + [a for a in list_adapters(self.settings) if a.name not in runtime]

    def runtime_names(self) -> list[str]:
        with self._lock:
            return sorted(self._runtime)

    def allowed_roots(self) -> list[Path]:
        """The folders runtime registrations may load from (resolved)."""
        roots = [self.settings.adapters_dir, *self.settings.lora_dirs]
        return [Path(r).expanduser().resolve() for r in roots]

    def check_path(self, name: str, lora_path: str) -> Path:
        """The resolved folder of a registration request, or an error: 400 for a bad name or
        a path outside the allowed folders, 404 (vLLM's wording) for no adapter there."""
        validate_name(name, "adapter")
        if not lora_path.strip():
            raise InvalidInput("Both 'lora_name' and 'lora_path' must be provided.")
        path = Path(lora_path)
        try:
            real = path.resolve() if path.is_absolute() else None
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
            real = None
        if real is None or not any(real == r or r in real.parents for r in self.allowed_roots()):
            raise PathNotAllowed(
                "lora_path is outside the folders this server loads adapters from (the "
                "registry and the lora_dirs setting)",
                field="lora_path",
            )
        problem = lora_folder_problem(real)
        if problem is not None:
            raise LoRANotFound(
                f"Loading lora {name} failed: No adapter found for {lora_path[:200]} ({problem})",
                field="lora_path",
            )
        return real

    def register(self, name: str, path: Path) -> None:
        with self._lock:
            self._runtime[name] = path

    def runtime_path(self, name: str) -> Path | None:
        """The folder ``name`` is registered from at run time (None: not registered)."""
        with self._lock:
            return self._runtime.get(name)

    def restore(self, name: str, path: Path | None) -> None:
        """Put back a registration as ``runtime_path`` returned it (after a failed load)."""
        with self._lock:
            if path is None:
                self._runtime.pop(name, None)
            else:
                self._runtime[name] = path

    def unregister(self, name: str) -> bool:
        with self._lock:
            return self._runtime.pop(name, None) is not None

    def is_registered(self, name: str) -> bool:
        with self._lock:
            return name in self._runtime


__all__ = [
    "AdapterCatalog",
    "LoRANotFound",
    "PathNotAllowed",
    "lora_folder_problem",
    "read_lora_folder",
]
