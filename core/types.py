"""Plain data types that cross package boundaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["base", "rag", "finetune", "hybrid"]
RetrievalMethod = Literal["dense", "bm25", "hybrid"]
MODES: tuple[Mode, ...] = ("base", "rag", "finetune", "hybrid")
RETRIEVAL_METHODS: tuple[RetrievalMethod, ...] = ("dense", "bm25", "hybrid")
FinishReason = Literal["stop", "length"]  # the answer ended / it ran into max_new_tokens


@dataclass(frozen=True)
class Document:
    """One source document as loaded from disk, before chunking."""

    id: str  # stable key: source path (+ line/paragraph) or the record's own id
    source: str  # the file it came from
    text: str
    sha256: str  # of the text: the incremental reindex compares this
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to embed and to put into a prompt."""

    id: str  # "<doc_id>#<n>"
    doc_id: str
    text: str
    span: tuple[int, int]  # character offsets in the document text
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its score (higher is better)."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Timings:
    retrieve_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class Answer:
    """What the pipeline returns for one question."""

    answer: str
    mode: Mode
    adapter: str | None
    index: str | None
    index_version: str | None
    sources: list[Hit]
    usage: Usage
    timings: Timings
    prompt: str = ""
    finish_reason: FinishReason = "stop"
    decision: str | None = None  # the published decision (run id) that chose mode and adapter

    def to_dict(self, *, include_prompt: bool = False) -> dict[str, Any]:
        out = {
            "answer": self.answer,
            "mode": self.mode,
            "adapter": self.adapter,
            "index": self.index,
            "index_version": self.index_version,
            "sources": [
                {"chunk_id": h.chunk_id, "document": h.doc_id, "score": h.score, "text": h.text}
                for h in self.sources
            ],
            "usage": asdict(self.usage),
            "timings": asdict(self.timings),
            "finish_reason": self.finish_reason,
            "decision": self.decision,
        }
        if include_prompt:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True)
class GenRequest:
    """One generation: a rendered prompt, the adapter for its row (None = base model)."""

    prompt: str
    adapter: str | None = None
    max_new_tokens: int = 32
    temperature: float = 0.0
    # Stop as soon as the answer's first line has ended (after leading whitespace): the
    # pipeline keeps only that line, so generating past it is wasted work.
    stop_at_newline: bool = False
    # The prompt's token ids when the caller has them (a client that sent token ids): they
    # are used as they are, not re-tokenized from ``prompt``.
    prompt_ids: tuple[int, ...] | None = None


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int  # every token generated, the one that ended the answer included
    generate_ms: float
    finish_reason: FinishReason = "stop"
