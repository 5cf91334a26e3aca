"""vLLM's runtime LoRA API: ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``,
with vLLM's request and response shapes, so tools written for vLLM (and a front ragtune
whose ``generator_backend`` is this one) can register adapters here.

- Load ``{"lora_name", "lora_path", "load_inplace"}``: the folder must be a peft LoRA
  adapter inside the registry or a ``lora_dirs`` folder (a relative path is taken inside
  the registry); it is loaded at once (as vLLM does), so a folder that does not fit the base
  model fails here and not on the first request. 200 with vLLM's text ``Success: LoRA
  adapter '<name>' added successfully.``; a name registered already is vLLM's 400 unless
  ``load_inplace``.
- Unload ``{"lora_name"}``: 200 ``Success: LoRA adapter '<name>' removed successfully.``;
  404 for a name not registered here (an adapter of the registry stays usable by name).

Errors are problem bodies with the OpenAI ``error`` member vLLM's clients read. Unlike vLLM,
a path with nothing loadable there is a 404 (vLLM answers 200, vllm-project/vllm#18372), and
a path outside the allowed folders is a 403. Registrations live as long as the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from ragtune.core.adapter_catalog import read_lora_folder
from ragtune.core.errors import InvalidInput, NotFound, RagtuneError
from ragtune.service import own_thread
from ragtune.service.auth import SCOPE, principal_of, require_json
from ragtune.service.errors import log, problem_responses
from ragtune.service.keys import MANAGE_ADAPTERS
from ragtune.service.schemas import LoadLoRABody, UnloadLoRABody
from ragtune.service.state import Services


@post(
    "/v1/load_lora_adapter",
    status_code=200,
    media_type=MediaType.TEXT,
    guards=[require_json],
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 502, 503, 504),
    tags=["openai"],
    opt={SCOPE: MANAGE_ADAPTERS},
)
async def load_lora_adapter(
    data: JSONBody[LoadLoRABody], svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> str:
    """Register a LoRA folder as model ``lora_name`` and load it (vLLM's runtime LoRA API)."""
    catalog = svc.pipeline.adapters
    name = data.lora_name
    principal_of(request).require_adapter(name)
    lora_path = data.lora_path
    if not Path(lora_path).is_absolute():  # a name or path inside the registry
        lora_path = str(svc.settings.adapters_dir.resolve() / lora_path)
    path = catalog.check_path(name, lora_path)
    if catalog.is_registered(name) and not data.load_inplace:
        raise InvalidInput(
            f"The lora adapter '{name}' has already been loaded. If you want to load the "
            "adapter in place, set 'load_inplace' to True.",
            field="lora_name",
        )
    read_lora_folder(name, path)  # its manifest (or adapter_config.json) must read

    def load() -> None:
        engine = svc.pipeline.engine
        before = catalog.runtime_path(name)
        catalog.register(name, path)
        try:
            if name in engine.loaded_adapters():
                engine.unload_adapter(name)  # another folder or version held that name: 409 if busy
            engine.load_adapter(name)
        except RagtuneError:
            catalog.restore(name, before)
            raise
        except Exception as e:  # peft: shapes that do not fit this base model, ...
            catalog.restore(name, before)
            log.warning("loading LoRA %s from %s failed", name, path, exc_info=True)
            raise InvalidInput(
                f"adapter {name!r} cannot be loaded on this server's base model "
                f"({type(e).__name__})",
                field="lora_path",
            ) from e

    await own_thread.run_sync(load)
    return f"Success: LoRA adapter '{name}' added successfully."


@post(
    "/v1/unload_lora_adapter",
    status_code=200,
    media_type=MediaType.TEXT,
    guards=[require_json],
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 502, 503, 504),
    tags=["openai"],
    opt={SCOPE: MANAGE_ADAPTERS},
)
async def unload_lora_adapter(
    data: JSONBody[UnloadLoRABody], svc: NamedDependency[Services], request: Request[Any, Any, Any]
) -> str:
    """Unregister a LoRA registered with ``/v1/load_lora_adapter`` and drop it from memory."""
    catalog = svc.pipeline.adapters
    name = data.lora_name
    principal_of(request).require_adapter(name)
    if not catalog.is_registered(name):
        raise NotFound(f"The lora adapter '{name}' cannot be found.", field="lora_name")

    def unload() -> None:
        engine = svc.pipeline.loaded_engine
        if engine is not None and name in engine.loaded_adapters():
            engine.unload_adapter(name)  # 409 while running requests use it
        catalog.unregister(name)

    await own_thread.run_sync(unload)
    return f"Success: LoRA adapter '{name}' removed successfully."


__all__ = ["load_lora_adapter", "unload_lora_adapter"]
