"""Merged export: fold a LoRA adapter into its base weights and save a plain model folder.

The result loads with ``AutoModelForCausalLM.from_pretrained`` alone (no peft), e.g. for a
server without adapter support. ``W' = W + (alpha / r) * B @ A`` for every adapted matrix;
greedy outputs equal the unmerged adapter's up to float rounding (tests/tuner proves it on
fixed prompts). The folder is written atomically and carries the adapter's manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.core.atomic import replace_dir, staging_dir
from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput

EXPORT_INFO = "ragtune_export.json"


def export_merged(
    settings: Settings, name: str, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``name`` merged into the configured base model to folder ``out``.

    Raises:
        UnknownAdapter: no such adapter. AdapterMismatch: trained on another base model.
        InvalidInput: ``out`` exists and is not empty (without ``overwrite``).
    """
    from ragtune.tuner.api import load_tuned

    out = _check_out(out, overwrite)
    model, tokenizer, info = load_tuned(settings, name)
    if info.method == "lora":
        model = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, f"export-{out.name}-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info_out = {
            "adapter": info.name,
            "merged": info.method == "lora",
            "manifest": info.manifest.to_json(),
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info_out, indent=2))
        replace_dir(tmp, out)
    return out


def export_plain(
    settings: Settings, name: str, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Copy the adapter folder as is (a peft adapter + manifest) to ``out``."""
    import shutil

    from ragtune.core.registry import get_adapter

    out = _check_out(out, overwrite)
    info = get_adapter(settings, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, f"export-{out.name}-") as tmp:
        shutil.copytree(info.path, tmp, dirs_exist_ok=True)
        replace_dir(tmp, out)
    return out


def _check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InvalidInput(f"--out {out}: exists and is not empty (pass --overwrite)", field="out")
    return out
