"""bf16 weight copies for CPU prefill (core/prefill_weights.py): the same logits as plain
autocast, the fp32 weights back afterwards, copies made once and remade when a weight
changes; on the tiny Llama with a real LoRA adapter."""

from __future__ import annotations

import pytest

from ragtune.core.config import Settings
from ragtune.core.models import load_generator
from ragtune.core.prefill_weights import bf16_linears


def _logits(model: object, batch: dict, copies: bool) -> object:
    import contextlib

    import torch

    swap = bf16_linears(model) if copies else contextlib.nullcontext()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), swap:
        return model(**batch).logits  # type: ignore[operator]


def test_copies_give_autocast_logits_and_restore_fp32(tiny_settings: Settings) -> None:
    import torch

    gen = load_generator(tiny_settings)
    model = gen.model
    batch = gen.tokenizer(["where is the eiffel tower ?"], return_tensors="pt")
    weights = {n: p for n, p in model.named_parameters()}
    plain = _logits(model, batch, copies=False)
    copied = _logits(model, batch, copies=True)
    # the same rounding of the same weights, up to the LM head, which stays fp32
    assert copied.dtype == torch.float32
    assert torch.allclose(plain.float(), copied, atol=0.05, rtol=0.02)
    assert torch.equal(plain.float().argmax(-1), copied.argmax(-1))
    # every parameter is the fp32 one again, the same objects
    assert {n: p for n, p in model.named_parameters()} == weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # a changed weight is cast again, not served stale
    lm = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        lm.weight.mul_(2.0)
    with bf16_linears(model):
        assert torch.equal(lm.weight, (weights["model.layers.0.mlp.up_proj.weight"]).bfloat16())
    assert not torch.allclose(_logits(model, batch, copies=True), copied)
    assert "forward" not in vars(model.lm_head)  # the head's own forward is back


def test_weights_restored_after_an_error(tiny_settings: Settings) -> None:
    import torch

    model = load_generator(tiny_settings).model
    with pytest.raises(RuntimeError, match="boom"), bf16_linears(model):
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert model.lm_head.weight.dtype == torch.float32  # the head stays fp32
        raise RuntimeError("boom")
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert "forward" not in vars(model.lm_head)
