"""What an eval run compares: variants = a mode plus (for some modes) an adapter.

A run lists modes like ``base,rag,finetune,hybrid,oracle``. A mode may name its adapter
directly (``finetune:qa-closed``, ``hybrid:raft``, ``oracle:raft``); a bare ``finetune`` or
``hybrid`` takes the adapters given by ``--finetune-adapter`` / ``--hybrid-adapter``, else
every ``--adapter``, making one variant per adapter. So one run can compare several adapters.

A retrieving mode may name a retriever declared in the run (``rag@tuned``,
``hybrid:raft@tuned``: another index, searched with its own embedder); with retrievers
declared, every rag and hybrid variant also runs with each of them, side by side. A hybrid
variant with adapter A brings ``oracle:A`` along (the same adapter given the gold passage),
which splits its F1 gap into retrieval loss and reading loss (``eval.summary``).

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
    retriever: str | None = None  # a declared retriever's label; None: the run's index

    @property
    def name(self) -> str:
        name = f"{self.kind}:{self.adapter}" if self.adapter else self.kind
        return f"{name}@{self.retriever}" if self.retriever else name

    @property
    def without_retriever(self) -> Variant:
        return Variant(self.kind, self.adapter)

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
        head, _, retriever = name.partition("@")
        kind, _, adapter = head.partition(":")
        if kind not in KINDS:
            raise InvalidInput(
                f"unknown mode {kind!r}: use {', '.join(KINDS)} (optionally kind:ADAPTER)",
                field="modes",
            )
        if adapter and kind in ("base", "rag"):
            raise InvalidInput(f"mode {kind!r} takes no adapter", field="modes")
        if retriever and kind not in ("rag", "hybrid"):
            raise InvalidInput(f"mode {kind!r} retrieves nothing: @{retriever}", field="modes")
        return cls(kind, adapter or None, retriever or None)


def expand_variants(
    modes: Sequence[str],
    adapters: Sequence[str] = (),
    finetune_adapters: Sequence[str] = (),
    hybrid_adapters: Sequence[str] = (),
    *,
    retrievers: Sequence[str] = (),
    oracle_with_hybrid: bool = False,
) -> list[Variant]:
    """Turn the mode list and adapter flags into distinct variants, in the order given.

    Args:
        retrievers: the labels of the run's extra retrievers: every rag / hybrid variant
            gets a twin per label right after it.
        oracle_with_hybrid: add ``oracle:A`` (at the end) for every hybrid adapter A.
    """
    out: list[Variant] = []
    for raw in modes:
        raw = raw.strip()
        if not raw:
            continue
        v = Variant.parse(raw)
        if v.retriever is not None and v.retriever not in retrievers:
            known = ", ".join(retrievers) or "none declared"
            raise InvalidInput(
                f"mode {raw!r}: unknown retriever {v.retriever!r} ({known})", field="modes"
            )
        if v.kind in ADAPTER_KINDS and v.adapter is None:
            names = (finetune_adapters if v.kind == "finetune" else hybrid_adapters) or adapters
            if not names:
                raise InvalidInput(
                    f"mode {v.kind!r} needs an adapter: --adapter NAME, "
                    f"--{v.kind}-adapter NAME or {v.kind}:NAME",
                    field="adapter",
                )
            found = [Variant(v.kind, a, v.retriever) for a in names]
        else:
            found = [v]
        for f in found:
            out.append(f)
            if f.retrieves and f.retriever is None:
                out.extend(Variant(f.kind, f.adapter, r) for r in retrievers)
    if oracle_with_hybrid:
        out += [Variant("oracle", v.adapter) for v in out if v.kind == "hybrid" and v.adapter]
    if not out:
        raise InvalidInput("no modes to evaluate", field="modes")
    return list(dict.fromkeys(out))
