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
    assert torch.equal(plain, copied)  # the same rounding of the same weights
    # every parameter is the fp32 one again, the same objects
    assert {n: p for n, p in model.named_parameters()} == weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # a changed weight is cast again, not served stale
    lm = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        lm.weight.mul_(2.0)
    changed = _logits(model, batch, copies=True)
    assert torch.equal(changed, _logits(model, batch, copies=False))
    assert not torch.equal(changed, copied)


def test_weights_restored_after_an_error(tiny_settings: Settings) -> None:
    import torch

    model = load_generator(tiny_settings).model
    with pytest.raises(RuntimeError, match="boom"), bf16_linears(model):
        assert model.lm_head.weight.dtype == torch.bfloat16
        raise RuntimeError("boom")
    assert model.lm_head.weight.dtype == torch.float32
