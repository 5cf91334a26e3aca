"""Real LoRA training on the tiny model: registry entry, masking, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ragtune.core.config import Settings
from ragtune.core.registry import get_adapter, list_adapters
from ragtune.tuner.api import run_dir, train_adapter
from ragtune.tuner.train import Encoded, collate, epoch_order, loss_sum
from tests.tuner.conftest import quick_args
from tests.tuner.helpers import prompt_records, write_jsonl


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_trains_a_registry_adapter_that_peft_loads_as_is(
    tiny_settings: Settings, qa_file: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    info = train_adapter(tiny_settings, quick_args(qa_file), progress=False)
    assert info.path == tiny_settings.adapters_dir / "a1"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in info.path.iterdir()
    }
    assert [a.name for a in list_adapters(tiny_settings)] == ["a1"]
    assert not run_dir(tiny_settings, "a1").exists()  # the work folder is cleaned up

    m = info.manifest
    assert m.method == "lora" and m.base_model == "generator"
    assert (
        m.base_fingerprint and m.prompt_template and m.prompt_template.startswith("ragtune-qa-v1:")
    )
    assert m.data and m.data.counts.train == 12 and m.data.counts.val == 4
    assert m.data.files[0].format == "prompt" and len(m.data.hash) == 64
    assert m.hyperparameters["r"] == 4 and m.hyperparameters["lr"] == 5e-3
    met = m.metrics
    assert met and met.steps == 4 and met.val_loss and met.train_loss
    assert met.val_loss > 0 and met.train_loss > 0
    assert met.peak_rss_mb > 0 and met.tokens_per_s > 0
    assert met.perplexity and met.perplexity.base > 0 and met.perplexity.tuned > 0
    assert m.raft is None and m.created_at and m.versions["peft"]
    assert m.schema_version == 1 and m.prompt and m.prompt.example

    base = AutoModelForCausalLM.from_pretrained(tiny_settings.generator)
    model = PeftModel.from_pretrained(base, str(info.path))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_loss_is_only_on_response_tokens() -> None:
    a = Encoded([5, 6, 7, 8, 9], n_prompt=3)
    b = Encoded([5, 6, 10], n_prompt=2)
    batch = collate([a, b], pad_id=0)
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, -100, -100, -100, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch["position_ids"].tolist()[1] == [0, 0, 0, 1, 2]
    assert batch["keep"] == 3 and batch["n_target"] == 3


def test_trimmed_logits_and_padding_do_not_change_the_loss(tiny_settings: Settings) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_settings.generator).eval()
    a = Encoded([5, 6, 7, 8, 9, 11, 12], n_prompt=4)
    b = Encoded([5, 6, 10, 13], n_prompt=3)
    with torch.no_grad():
        trimmed = float(loss_sum(model, collate([a, b], 0), "cpu"))
        full = float(loss_sum(model, collate([a, b], 0, full_logits=True), "cpu"))
        alone = sum(float(loss_sum(model, collate([e], 0, True), "cpu")) for e in (a, b))
    assert trimmed == pytest.approx(full, rel=1e-5)
    assert trimmed == pytest.approx(alone, rel=1e-4)


def test_same_seed_same_weights_other_seed_other_weights(
    tiny_settings: Settings, qa_file: Path
) -> None:
    w = []
    for name, seed in (("s1", 7), ("s2", 7), ("s3", 8)):
        info = train_adapter(tiny_settings, quick_args(qa_file, name, seed=seed), progress=False)
        w.append(_weights(info.path))
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert any(not torch.equal(w[0][k], w[2][k]) for k in w[0])


def test_interrupted_run_resumes_to_the_same_weights(
    tiny_settings: Settings, qa_file: Path
) -> None:
    ref = train_adapter(
        tiny_settings,
        quick_args(qa_file, "ref", max_steps=6, save_every=1, eval_every=2),
        progress=False,
    )

    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    args = quick_args(qa_file, "res", max_steps=6, save_every=1, eval_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_settings, args, progress=False, on_step=interrupt)
    assert "res" not in [a.name for a in list_adapters(tiny_settings)]
    assert (run_dir(tiny_settings, "res") / "last" / "state.json").is_file()

    info = train_adapter(tiny_settings, args, progress=False)
    assert info.manifest.metrics.resumed_from_step == 3
    a, b = _weights(ref.path), _weights(info.path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert info.manifest.metrics.val_loss == pytest.approx(ref.manifest.metrics.val_loss, abs=1e-4)


def test_changed_args_start_over_instead_of_resuming(
    tiny_settings: Settings, qa_file: Path
) -> None:
    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(
            tiny_settings, quick_args(qa_file, "x", save_every=1), progress=False, on_step=interrupt
        )
    info = train_adapter(tiny_settings, quick_args(qa_file, "x", lr=1e-3), progress=False)
    assert info.manifest.metrics.resumed_from_step is None


def test_continue_from_an_existing_adapter(tiny_settings: Settings, qa_file: Path) -> None:
    first = train_adapter(tiny_settings, quick_args(qa_file, "first"), progress=False)
    second = train_adapter(
        tiny_settings, quick_args(qa_file, "second", init_from="first", r=8), progress=False
    )
    assert second.manifest.init_from.name == "first"
    assert second.manifest.hyperparameters["r"] == 4  # the adapter's own shape is kept
    a, b = _weights(first.path), _weights(second.path)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_mixing_weights_scale_each_dataset(tiny_settings: Settings, tmp_path: Path) -> None:
    order = epoch_order([0] * 10 + [1] * 4, {0: 0.5, 1: 2.0}, seed=1, epoch=0)
    assert sum(i < 10 for i in order) == 5 and sum(i >= 10 for i in order) == 8
    assert len(set(i for i in order if i < 10)) == 5
    assert epoch_order([0] * 10 + [1] * 4, {0: 0.5, 1: 2.0}, seed=1, epoch=1) != order

    a = write_jsonl(tmp_path / "a.jsonl", prompt_records(12))
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"instruction": f"Say {w}", "output": w} for w in ("paris", "nile", "python", "curie")],
    )
    info = train_adapter(
        tiny_settings,
        quick_args([f"{a}:0.5", f"{b}:2"], "mix", val_fraction=0.0, epochs=1, max_steps=None),
        progress=False,
    )
    files = info.manifest.data.files
    assert [(f.format, f.weight) for f in files] == [("prompt", 0.5), ("alpaca", 2.0)]
    # 12 x 0.5 + 4 x 2 = 14 examples per epoch, batch 2 -> 7 steps
    assert info.manifest.metrics.steps == 7


def test_full_fine_tuning_writes_a_full_model_folder(
    tiny_settings: Settings, qa_file: Path
) -> None:
    from transformers import AutoModelForCausalLM

    info = train_adapter(tiny_settings, quick_args(qa_file, "full", method="full"), progress=False)
    assert (info.path / "config.json").is_file() and (info.path / "manifest.json").is_file()
    assert info.method == "full" and get_adapter(tiny_settings, "full").method == "full"
    model = AutoModelForCausalLM.from_pretrained(str(info.path))
    base = AutoModelForCausalLM.from_pretrained(tiny_settings.generator)
    assert not torch.equal(
        model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )
    assert info.manifest.metrics.trainable_params == sum(p.numel() for p in base.parameters())


def test_keeps_best_weights_and_stops_early(tiny_settings: Settings, qa_file: Path) -> None:
    info = train_adapter(
        tiny_settings,
        quick_args(
            qa_file,
            "es",
            lr=1.0,
            max_steps=30,
            eval_every=1,
            patience=2,
            warmup_ratio=0.0,
            schedule="constant",
        ),
        progress=False,
    )
    met = info.manifest.metrics
    assert met.stopped_early and met.steps < 30
    vals = [h.val_loss for h in met.history]
    assert met.val_loss == pytest.approx(min(vals), abs=1e-4)
    assert met.best_step == met.history[vals.index(min(vals))].step


def test_manifest_is_written_last_and_is_json(tiny_settings: Settings, qa_file: Path) -> None:
    info = train_adapter(tiny_settings, quick_args(qa_file, "m"), progress=False)
    files = sorted(info.path.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert files[-1].name == "manifest.json"
    assert json.loads((info.path / "manifest.json").read_text())["name"] == "m"


def test_gradient_checkpointing_trains_the_same_weights(
    tiny_settings: Settings, qa_file: Path
) -> None:
    a = train_adapter(tiny_settings, quick_args(qa_file, "plain"), progress=False)
    b = train_adapter(
        tiny_settings, quick_args(qa_file, "gc", gradient_checkpointing=True), progress=False
    )
    wa, wb = _weights(a.path), _weights(b.path)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
