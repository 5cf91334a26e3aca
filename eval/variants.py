"""What an eval run compares: variants = a mode plus (for some modes) an adapter.

A run lists modes like ``base,rag,finetune,hybrid,oracle``. A mode may name its adapter
directly (``finetune:qa-closed``, ``hybrid:raft``, ``oracle:raft``); a bare ``finetune`` or
``hybrid`` takes the adapters given by ``--finetune-adapter`` / ``--hybrid-adapter``, else
every ``--adapter``, making one variant per adapter. So one run can compare several adapters.

| variant kind | pipeline mode | passages in the prompt |
|---|---|---|
| base | base | none |
| rag | rag | retrieved top_k |
| finetune | finetune (adapter) | none |
| hybrid | hybrid (adapter) | retrieved top_k |
| oracle | rag, or hybrid with an adapter | the gold passage (upper bound of retrieval) |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragtune.core.errors import InvalidInput

KINDS = ("base", "rag", "finetune", "hybrid", "oracle")
ADAPTER_KINDS = ("finetune", "hybrid")


@dataclass(frozen=True)
class Variant:
    kind: str
    adapter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.adapter}" if self.adapter else self.kind

    @property
    def pipeline_mode(self) -> str:
        if self.kind == "oracle":
            return "hybrid" if self.adapter else "rag"
        return self.kind

    @property
    def retrieves(self) -> bool:
        return self.kind in ("rag", "hybrid")

    @property
    def sees_passages(self) -> bool:
        return self.kind in ("rag", "hybrid", "oracle")

    @classmethod
    def parse(cls, name: str) -> Variant:
        kind, _, adapter = name.partition(":")
        if kind not in KINDS:
            raise InvalidInput(
                f"unknown mode {kind!r}: use {', '.join(KINDS)} (optionally kind:ADAPTER)",
                field="modes",
            )
        if adapter and kind in ("base", "rag"):
            raise InvalidInput(f"mode {kind!r} takes no adapter", field="modes")
        return cls(kind, adapter or None)


def expand_variants(
    modes: Sequence[str],
    adapters: Sequence[str] = (),
    finetune_adapters: Sequence[str] = (),
    hybrid_adapters: Sequence[str] = (),
) -> list[Variant]:
    """Turn the mode list and adapter flags into distinct variants, in the order given."""
    out: list[Variant] = []
    for raw in modes:
        raw = raw.strip()
        if not raw:
            continue
        v = Variant.parse(raw)
        if v.kind in ADAPTER_KINDS and v.adapter is None:
            names = (finetune_adapters if v.kind == "finetune" else hybrid_adapters) or adapters
            if not names:
                raise InvalidInput(
                    f"mode {v.kind!r} needs an adapter: --adapter NAME, "
                    f"--{v.kind}-adapter NAME or {v.kind}:NAME",
                    field="adapter",
                )
            out.extend(Variant(v.kind, a) for a in names)
        else:
            out.append(v)
    if not out:
        raise InvalidInput("no modes to evaluate", field="modes")
    return list(dict.fromkeys(out))
