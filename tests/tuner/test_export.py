"""Merged export: a plain model folder whose greedy output equals the unmerged adapter's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ragtune.core.config import Settings
from ragtune.core.errors import InvalidInput
from ragtune.core.prompts import render_prompt
from ragtune.tuner.api import load_tuned, train_adapter
from ragtune.tuner.export import export_merged, export_plain
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import FACTS


def _greedy(model, tok, prompts: list[str], n: int = 8) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False)
            gen = model.generate(
                **ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
            )
            out.append(gen[0, ids["input_ids"].shape[1] :].tolist())
    return out


def _parity(settings: Settings, name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ragtune.core.models import load_generator

    export_merged(settings, name, out)
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "ragtune_export.json").read_text())["adapter"] == name
    tuned, tok, _ = load_tuned(settings, name)
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    prompts = [render_prompt(tok, q) for q, _, _ in FACTS[:4]]
    prompts += [render_prompt(tok, FACTS[0][0], [FACTS[0][2], FACTS[1][2]])]
    assert _greedy(merged, tok, prompts) == _greedy(tuned, tok, prompts)
    base = load_generator(settings)
    ids = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():  # the adapter really changed the model, so the check means something
        assert not torch.allclose(base.model(**ids).logits, merged(**ids).logits, atol=1e-4)
        assert torch.allclose(tuned(**ids).logits, merged(**ids).logits, atol=1e-4)


def test_merged_export_matches_unmerged_adapter(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path
) -> None:
    train_adapter(tiny_settings, quick_args(qa_file, lr=3e-2, max_steps=8), progress=False)
    _parity(tiny_settings, "a1", tmp_path / "merged")
    with pytest.raises(InvalidInput, match="not empty"):
        export_merged(tiny_settings, "a1", tmp_path / "merged")


def test_plain_export_copies_the_adapter(
    tiny_settings: Settings, qa_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train_adapter(tiny_settings, quick_args(qa_file), progress=False)
    out = export_plain(tiny_settings, "a1", tmp_path / "plain")
    assert (out / "manifest.json").is_file() and (out / "adapter_config.json").is_file()
    PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_settings.generator), str(out)
    )


@pytest.mark.slow
def test_merge_parity_smollm2(packaged_settings: Settings, tmp_path: Path) -> None:
    from tests.tuner.helpers import prompt_records, write_jsonl

    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(8))
    train_adapter(
        packaged_settings,
        quick_args(data, "smol", max_steps=2, lr=1e-3, val_fraction=0.0, forgetting=False),
        progress=False,
    )
    _parity(packaged_settings, "smol", tmp_path / "merged")
