"""Indexer fixtures: the tiny embedder loaded once, and a small corpus on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.core.config import resolve_settings
from ragtune.core.models import Embedder, load_embedder

CORPUS = {
    "paris.txt": "The Eiffel Tower is in Paris. Paris is the capital of France.",
    "everest.md": "# Everest\n\nMount Everest is the highest mountain on Earth, in the Himalayas.",
    "nile.html": (
        "<html><head><title>Nile</title><style>p {color: red}</style></head>"
        "<body><p>The Nile is a river in Africa.</p><script>var x = 1;</script>"
        "<p>It is one of the longest rivers in the world.</p></body></html>"
    ),
    "people.jsonl": (
        '{"id": "curie", "text": "Marie Curie won Nobel Prizes in physics and in chemistry.",'
        ' "metadata": {"topic": "science"}}\n'
        '{"id": "python", "text": "Python is a programming language created by Guido van Rossum."}\n'
    ),
}


def write_corpus(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or CORPUS).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_embedder(tiny_models_dir: Path) -> Embedder:
    """Loaded once: it has the same model id ("embedder") as the per-test copy in tiny_settings."""
    settings, _ = resolve_settings(
        overrides={"embedder": str(tiny_models_dir / "embedder"), "torch_threads": 1}, environ={}
    )
    return load_embedder(settings)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


def minimal_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` (built by hand: no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
