"""Documents to Chunks, sized in the embedder's own tokens.

A chunk holds at most ``chunk_size`` tokens (and never more than the embedder reads, so nothing
is silently truncated at embedding time). Chunks end on a sentence boundary where they can and on
a paragraph boundary where that costs at most half a chunk; only a single sentence longer than a
chunk is cut mid-sentence, on token boundaries. Consecutive chunks share up to ``chunk_overlap``
tokens of whole sentences, so a fact split across the cut is still found whole in one of them.
A document that fits in one chunk is exactly one chunk: its whole text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

from ragtune.core.manifests import ChunkerConfig
from ragtune.core.types import Chunk, Document

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) and white space,
# or at a line break. Paragraphs end at a blank line.
_SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*\s+|\n+""")
_PARAGRAPH_END = re.compile(r"\n\s*\n")

# Special tokens ([CLS], [SEP]) the embedder adds around every text.
_SPECIAL_TOKEN_ROOM = 2


# Recorded in the index manifest: a change of algorithm means re-chunking every document.
CHUNK_METHOD = "sentence-pack-v1"


class Chunker:
    """Split documents into token-bounded chunks with the embedder's tokenizer."""

    def __init__(
        self, tokenizer: Any, chunk_size: int, chunk_overlap: int, max_seq_length: int | None = None
    ) -> None:
        limit = (max_seq_length - _SPECIAL_TOKEN_ROOM) if max_seq_length else chunk_size
        self.tokenizer = tokenizer
        self.size = max(8, min(chunk_size, limit))
        # An overlap of half a chunk or more would make every chunk start nearly where the last did.
        self.overlap = max(0, min(chunk_overlap, self.size // 2))

    def config(self, tokenizer_id: str) -> ChunkerConfig:
        """What decides the chunks (for the manifest); ``tokenizer_id`` is the embedder's id."""
        return ChunkerConfig(
            chunk_size=self.size,
            chunk_overlap=self.overlap,
            tokenizer=tokenizer_id,
            method=CHUNK_METHOD,
        )

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Character (start, end) of every token of each text, without special tokens."""
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [[(int(s), int(e)) for s, e in offs] for offs in enc["offset_mapping"]]

    def chunk_documents(self, docs: Iterable[Document], batch: int = 256) -> list[Chunk]:
        """Chunk many documents (the tokenizer runs on batches of them)."""
        docs = list(docs)
        out: list[Chunk] = []
        for i in range(0, len(docs), batch):
            part = docs[i : i + batch]
            for doc, offsets in zip(part, self.token_offsets([d.text for d in part]), strict=True):
                out.extend(self._chunk(doc, offsets))
        return out

    def chunk_document(self, doc: Document) -> list[Chunk]:
        return self._chunk(doc, self.token_offsets([doc.text])[0])

    def spans(self, text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Character spans of the chunks of ``text`` given its token offsets."""
        # Drop empty-width tokens: they carry no text and would confuse the counting.
        offsets = [(s, e) for s, e in offsets if e > s]
        if len(offsets) <= self.size:
            return [(0, len(text))] if text.strip() else []
        starts = [s for s, _ in offsets]

        def tok_at(char: int) -> int:
            """Index of the first token that starts at or after ``char``."""
            return bisect.bisect_left(starts, char)

        # Candidate cut points as token indices; paragraph cuts are preferred.
        sent_cuts = sorted({tok_at(m.end()) for m in _SENTENCE_END.finditer(text)})
        para_cuts = {tok_at(m.end()) for m in _PARAGRAPH_END.finditer(text)}
        n = len(offsets)
        spans_tok: list[tuple[int, int]] = []
        start = 0
        while start < n:
            limit = start + self.size
            if limit >= n:
                spans_tok.append((start, n))
                break
            lo = bisect.bisect_right(sent_cuts, start)
            hi = bisect.bisect_right(sent_cuts, limit)
            inside = sent_cuts[lo:hi]  # sentence cuts c with start < c <= limit
            half = start + self.size // 2
            para = [c for c in inside if c in para_cuts and c >= half]
            if para:
                end = para[-1]
            elif inside:
                end = inside[-1]
            else:
                end = limit  # one sentence longer than a chunk: cut it on a token boundary
            spans_tok.append((start, end))
            start = self._next_start(start, end, inside)
        return [(offsets[a][0], offsets[b - 1][1]) for a, b in spans_tok]

    def _next_start(self, start: int, end: int, cuts: list[int]) -> int:
        """Start of the next chunk: the earliest sentence start within ``overlap`` tokens of end."""
        if self.overlap:
            for c in cuts:
                if start < c < end and end - c <= self.overlap:
                    return c
            if not any(start < c < end for c in cuts):
                # A long sentence cut mid-way: overlap by tokens instead.
                return max(start + 1, end - self.overlap)
        return end

    def _chunk(self, doc: Document, offsets: list[tuple[int, int]]) -> list[Chunk]:
        chunks = []
        for n, (a, b) in enumerate(self.spans(doc.text, offsets)):
            chunks.append(Chunk(f"{doc.id}#{n}", doc.id, doc.text[a:b], (a, b), doc.metadata))
        return chunks
