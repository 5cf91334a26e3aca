"""Chunking with the embedder's tokenizer: size bounds, boundaries, overlap, one-chunk docs."""

from __future__ import annotations

import itertools

import pytest

from ragtune.core.models import Embedder
from ragtune.core.types import Document
from ragtune.indexer.chunking import Chunker
from ragtune.indexer.loaders import content_hash

SENTENCES = [
    "The Eiffel Tower is in Paris.",
    "Paris is the capital of France.",
    "Mount Everest is the highest mountain on Earth.",
    "The Nile is a river in Africa.",
    "Python is a programming language.",
    "Marie Curie won Nobel Prizes in physics and in chemistry.",
]


def doc(text: str, doc_id: str = "d") -> Document:
    return Document(doc_id, "src", text, content_hash(text), {"title": "T"})


def n_tokens(chunker: Chunker, text: str) -> int:
    return len(chunker.token_offsets([text])[0])


@pytest.fixture
def chunker(tiny_embedder: Embedder) -> Chunker:
    return Chunker(tiny_embedder.tokenizer, chunk_size=20, chunk_overlap=8)


def test_a_short_document_is_one_chunk_with_its_whole_text(chunker: Chunker) -> None:
    text = " ".join(SENTENCES[:2])
    chunks = chunker.chunk_document(doc(text))
    assert len(chunks) == 1
    assert chunks[0].text == text and chunks[0].span == (0, len(text))
    assert chunks[0].id == "d#0" and chunks[0].metadata == {"title": "T"}


def test_long_documents_split_on_sentences_within_the_size(chunker: Chunker) -> None:
    text = " ".join(SENTENCES * 3)
    chunks = chunker.chunk_document(doc(text))
    assert len(chunks) > 3
    for ch in chunks:
        assert n_tokens(chunker, ch.text) <= 20
        assert text[ch.span[0] : ch.span[1]] == ch.text
        assert ch.text.endswith(".")  # every cut is at a sentence end
        assert ch.text[0].isupper()  # and every chunk starts a sentence
    # Together the chunks cover the whole text, in order, with overlaps.
    assert chunks[0].span[0] == 0 and chunks[-1].span[1] == len(text)
    for a, b in itertools.pairwise(chunks):
        assert b.span[0] > a.span[0]
        assert not text[a.span[1] : b.span[0]].strip()  # no text lost between chunks
    assert any(b.span[0] < a.span[1] for a, b in itertools.pairwise(chunks))


def test_paragraph_boundaries_are_preferred(tiny_embedder: Embedder) -> None:
    chunker = Chunker(tiny_embedder.tokenizer, chunk_size=26, chunk_overlap=0)
    para1 = " ".join(SENTENCES[:2])  # ~14 tokens: more than half a chunk
    para2 = " ".join(SENTENCES[2:5])
    text = para1 + "\n\n" + para2
    chunks = chunker.chunk_document(doc(text))
    assert chunks[0].text == para1  # cut at the paragraph, although a sentence more would fit


def test_a_sentence_longer_than_a_chunk_is_cut_on_tokens(chunker: Chunker) -> None:
    text = " ".join(["paris france river mountain"] * 20)  # 80 tokens, no punctuation
    chunks = chunker.chunk_document(doc(text))
    assert len(chunks) >= 4
    assert all(n_tokens(chunker, c.text) <= 20 for c in chunks)
    assert chunks[-1].span[1] == len(text)


def test_size_is_capped_by_what_the_embedder_reads(tiny_embedder: Embedder) -> None:
    chunker = Chunker(tiny_embedder.tokenizer, 4096, 32, max_seq_length=128)
    assert chunker.size == 126  # room for [CLS] and [SEP]
    assert Chunker(tiny_embedder.tokenizer, 20, 50).overlap == 10  # at most half a chunk


def test_many_documents_in_one_call(chunker: Chunker) -> None:
    docs = [doc(s, f"d{i}") for i, s in enumerate(SENTENCES)]
    chunks = chunker.chunk_documents(docs, batch=4)
    assert [c.doc_id for c in chunks] == [d.id for d in docs]
