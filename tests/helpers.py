"""Test helpers that create real artifacts (adapters) without running the tuner."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.core.config import Settings
from ragtune.core.models import folder_fingerprint, generator_folder
from ragtune.core.registry import AdapterInfo, publish


def make_lora_adapter(
    settings: Settings,
    name: str,
    seed: int = 0,
    r: int = 4,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    alpha: float | None = None,
    version: str | None = None,
) -> AdapterInfo:
    """Publish a LoRA adapter with random (non-zero) weights for the configured generator.

    ``init_lora_weights=False`` makes B non-zero, so the adapter really changes the output.
    The manifest is the minimal hand-made form on purpose (no schema_version, only what
    serving needs): core.manifests reads it as schema version 1. ``version``: the training's
    id, for tests of a republished adapter.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = generator_folder(settings)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    cfg = LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        target_modules=list(target_modules),
        init_lora_weights=False,
    )
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(20.0)  # make the tiny random adapter change greedy outputs visibly
    staged = settings.adapters_dir / f".tmp-test-{name}"
    model.save_pretrained(staged)
    manifest = {
        "name": name,
        "method": "lora",
        "base_model": Path(folder).name,
        "base_fingerprint": folder_fingerprint(folder),
        "created_at": "test",
    }
    if version is not None:  # a training's id (the tuner always writes one)
        manifest["version"] = version
    (staged / "manifest.json").write_text(json.dumps(manifest))
    return publish(settings, staged, name)


def index_docs(
    settings: Settings,
    name: str,
    docs: dict[str, str] | list[tuple[str, str]],
    embedder: object | None = None,
) -> str:
    """Index ``{doc_id: text}`` with the real indexer; returns the new live version.

    The documents go through a JSONL file (``{"id", "text"}`` per line), so doc ids are kept
    as given; indexing the same ``name`` again with other docs replaces them (prune).
    """
    from ragtune.indexer.api import build_index

    items = list(docs.items()) if isinstance(docs, dict) else list(docs)
    path = settings.data_dir / "docs" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc_id, text in items:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    summary = build_index(settings, [path], name, progress=False, embedder=embedder)  # type: ignore[arg-type]
    return summary.version
