"""bfloat16 copies of the generator's linear weights, made once, for CPU prefill.

Under CPU autocast every ``linear`` casts its fp32 weight to bf16 on every call: for a
~500-token prompt on SmolLM2 that cast costs about as much as the bf16 matmul saves (the LM
head alone went from 10 to 98 ms). Here each linear layer keeps a bf16 copy of its weight
(cast once, cast again only if the weight changes) and a prefill swaps the copies in for its
duration; autocast then only casts the activations. The values are those autocast would
compute (the same rounding of the same weights), at the price of a bf16 copy of the linear
weights in memory (~270 MB for a 135M model). LoRA's own small matrices are left to autocast.

The LM head is the exception: it runs in fp32 outside autocast, so the first token is picked
from fp32 logits, for 9.9 ms on SmolLM2's 49,152 x 576 head (one position per row). In bf16
it would take 4.0 ms, but only with its input re-viewed first: the last position's slice
keeps the prompt's batch stride, and on that stride torch's CPU bf16 matmul takes a slow
path (60 ms; bench/results/ttft.txt).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

# linear layer -> (the fp32 weight it was cast from, that weight's version, the bf16 copy)
_COPIES: weakref.WeakKeyDictionary[Any, tuple[Any, int, Any]] = weakref.WeakKeyDictionary()


def _linears(model: Any) -> Iterator[Any]:
    """The model's own linear layers (not LoRA's A/B matrices)."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            yield module


def _copy_of(module: Any) -> Any:
    import torch

    weight = module.weight
    held = _COPIES.get(module)
    if held is None or held[0] is not weight or held[1] != weight._version:
        copy = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        held = (weight, weight._version, copy)
        _COPIES[module] = held
    return held[2]


@contextlib.contextmanager
def bf16_linears(model: Any) -> Iterator[None]:
    """Run the block with every linear layer of ``model`` holding its bf16 copy (under the
    caller's autocast; the fp32 weights are back afterwards, even after an error)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    swapped = [
        (m, m.weight) for m in _linears(base) if m is not head and m.weight.dtype != torch.bfloat16
    ]
    try:
        for module, _ in swapped:
            module._parameters["weight"] = _copy_of(module)
        if isinstance(head, torch.nn.Linear):
            setattr(head, "forward", _fp32_forward(head))  # noqa: B010 (instance attr, deleted below)
        yield
    finally:
        for module, weight in swapped:
            module._parameters["weight"] = weight
        if isinstance(head, torch.nn.Linear):
            del head.forward


def _fp32_forward(head: Any) -> Any:
    """The LM head's forward in its own precision, outside autocast."""
    import torch
    import torch.nn.functional as F

    def forward(x: Any) -> Any:
        with torch.autocast("cpu", enabled=False):
            return F.linear(x.to(head.weight.dtype), head.weight, head.bias)

    return forward


__all__ = ["bf16_linears"]
