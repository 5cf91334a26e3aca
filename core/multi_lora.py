"""Batched multi-LoRA: every row's LoRA in one gathered matmul pair per layer (Punica's SGMV,
with plain torch ops).

peft loads the adapters (its format, its ``load_adapter`` / ``delete_adapter``) and injects
its LoRA layers into the base model. Its mixed-batch path (``adapter_names``) then runs, in
every layer, one sub-batch per distinct adapter: gather the rows, two small matmuls, scatter
back. Here each LoRA layer instead keeps its adapters' weights stacked, slot 0 being zeros
(no adapter)::

    A: [slots, in, r_max]   B: [slots, r_max, out] (times the scaling)

and a batch carries one slot index per row, so a layer adds ``bmm(bmm(x, A[idx]), B[idx])``
to the base output (``baddbmm``: the add is fused into the second matmul): the same two
matmuls whatever the mix of adapters. When every row has the same adapter, the plain
``x @ A @ B`` on that slot runs instead (no gather); rows without any adapter skip LoRA.

Only vanilla LoRA on linear layers is stacked; an adapter with anything else (DoRA and other
variants, LoRA on embeddings or convolutions, LoRA bias) makes ``supported`` False and the
engine falls back to peft's own path. Used only for inference (under the engine's lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BASE_SLOT = 0


@dataclass(frozen=True)
class _Plan:
    """Which LoRA each row of the running forward pass gets."""

    single: int | None  # every row uses this slot (None: a mix)
    index: Any  # [rows] slot per row (a mix only)


@dataclass
class _Stack:
    """One LoRA layer's adapters, stacked by slot."""

    A: Any  # [slots, in, r_max]
    B: Any  # [slots, r_max, out], times the adapter's scaling
    each: dict[int, tuple[Any, Any]]  # slot -> (A [in, r], B [r, out] x scaling), unpadded


class GatheredLora:
    """The stacked LoRA weights of every adapter a ``PeftModel`` holds, and the model view
    that runs a batch with one adapter per row."""

    def __init__(self, peft_model: Any) -> None:
        self.peft = peft_model
        self.base = peft_model.get_base_model()
        self.slots: dict[str, int] = {}
        self.supported = False
        self._stacks: dict[int, _Stack] = {}  # id(layer) -> its stack
        self._plan: _Plan | None = None  # set for the duration of one forward pass
        self.rebuild()

    def rebuild(self) -> None:
        """Re-stack after an adapter was loaded or deleted (and patch new LoRA layers)."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer

        names = sorted(self.peft.peft_config)
        self.slots = {n: i + 1 for i, n in enumerate(names)}
        self._stacks = {}
        self.supported = True
        layers: list[Any] = list(self.base.modules())  # peft's layers: untyped attributes
        for module in layers:
            if not isinstance(module, BaseTunerLayer):
                continue
            if not isinstance(module, LoraLinear) or _has_extras(module):
                if _holds_adapters(module):
                    self.supported = False
                continue
            stack = _stack_of(module, names, self.slots)
            if stack is None:
                continue
            self._stacks[id(module)] = stack
            if not getattr(module, "_ragtune_gathered", False):
                _patch(module, self)

    def model(self, adapters: Sequence[str | None]) -> RowLoraModel:
        """The base model with LoRA per row: ``adapters[i]`` (None = none) for row i."""
        import torch

        idx = [self.slots[a] if a else BASE_SLOT for a in adapters]
        if len(set(idx)) == 1:
            return RowLoraModel(self, _Plan(idx[0], None))
        return RowLoraModel(self, _Plan(None, torch.tensor(idx, device=self.base.device)))

    def add_lora(self, layer: Any, x: Any, result: Any) -> Any:
        """The layer's output ``result`` plus each row's LoRA of ``x``."""
        import torch

        plan, stack = self._plan, self._stacks.get(id(layer))
        assert plan is not None
        if stack is None or plan.single == BASE_SLOT:
            return result
        # B is stored pre-multiplied by the scaling, so the add is fused into the last
        # matmul (addmm / baddbmm): two ops per layer whatever the mix
        dtype, n_out = stack.A.dtype, result.shape[-1]
        if plan.single is not None:
            one = stack.each.get(plan.single)
            if one is None:  # this adapter has no LoRA on this layer
                return result
            a, b = one
            x2 = x.to(dtype).reshape(-1, x.shape[-1])
            out = torch.addmm(result.to(dtype).reshape(-1, n_out), x2 @ a, b)
        else:
            rows = x.shape[0]
            x3 = x.to(dtype).reshape(rows, -1, x.shape[-1])
            xa = torch.bmm(x3, stack.A.index_select(0, plan.index))
            out = torch.baddbmm(
                result.to(dtype).reshape(rows, -1, n_out), xa, stack.B.index_select(0, plan.index)
            )
        return out.reshape(result.shape).to(result.dtype)


class RowLoraModel:
    """What ``core.decode`` calls as a model: the base model, run with a LoRA per row."""

    def __init__(self, lora: GatheredLora, plan: _Plan) -> None:
        self._lora, self._plan = lora, plan

    @property
    def device(self) -> Any:
        return self._lora.base.device

    def get_base_model(self) -> Any:
        return self._lora.base

    def __call__(self, **kwargs: Any) -> Any:
        self._lora._plan = self._plan
        try:
            return self._lora.base(**kwargs)
        finally:
            self._lora._plan = None


def _stack_of(module: Any, names: list[str], slots: dict[str, int]) -> _Stack | None:
    """A LoRA linear layer's adapters stacked by slot (None: it holds none of them)."""
    import torch

    present = [n for n in names if n in module.lora_A]
    if not present:
        return None
    weight = module.lora_A[present[0]].weight
    r_max = max(module.lora_A[n].weight.shape[0] for n in present)
    n_in, n_out = module.in_features, module.out_features
    kw = {"dtype": weight.dtype, "device": weight.device}
    A = torch.zeros((len(names) + 1, n_in, r_max), **kw)
    B = torch.zeros((len(names) + 1, r_max, n_out), **kw)
    each = {}
    for n in present:
        s, a_w, b_w = slots[n], module.lora_A[n].weight, module.lora_B[n].weight
        r = a_w.shape[0]
        a = a_w.detach().T.contiguous()
        b = (b_w.detach() * float(module.scaling[n])).T.contiguous()
        A[s, :, :r], B[s, :r, :] = a, b
        each[s] = (a, b)
    return _Stack(A, B, each)


def _has_extras(module: Any) -> bool:
    """A LoRA linear layer with more than vanilla LoRA in it (a variant such as DoRA, or a
    LoRA bias): peft's own forward handles those."""
    if getattr(module, "lora_variant", None):
        return True
    return any(getattr(b, "bias", None) is not None for b in module.lora_B.values())


def _holds_adapters(module: Any) -> bool:
    """A tuner layer still holding an adapter (peft leaves emptied layers in place)."""
    held = ("lora_A", "lora_embedding_A", "lora_variant", "lora_magnitude_vector")
    return any(len(getattr(module, name, None) or {}) for name in held)


def _patch(module: Any, lora: GatheredLora) -> None:
    """Route the layer through ``lora`` while a gathered forward runs; peft's own forward
    otherwise (training, merging, peft's ``adapter_names``)."""
    peft_forward = module.forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        if lora._plan is None:
            return peft_forward(x, *args, **kwargs)
        return lora.add_lora(module, x, module.base_layer(x, *args, **kwargs))

    module.forward = forward
    module._ragtune_gathered = True
