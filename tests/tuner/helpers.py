"""Test helpers: small data files and a small index written in the documented format
(core/index_store.py docstring), so tuner tests do not depend on the indexer package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.core.config import Settings
from tests.helpers import index_docs

# Facts the tiny tokenizer knows the words of (tests/tiny_models.py CORPUS).
FACTS = [
    ("Where is the Eiffel Tower?", "Paris", "The Eiffel Tower is in Paris, the capital of France."),
    (
        "Which mountain is the highest on Earth?",
        "Mount Everest",
        "Mount Everest is the highest mountain on Earth, in the Himalayas.",
    ),
    (
        "Which river is in Africa?",
        "The Nile",
        "The Nile is a river in Africa and one of the longest rivers in the world.",
    ),
    (
        "Who created Python?",
        "Guido van Rossum",
        "Python is a programming language created by Guido van Rossum.",
    ),
    (
        "What does photosynthesis turn light into?",
        "sugar and oxygen",
        "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    ),
    (
        "Who won Nobel Prizes in physics and chemistry?",
        "Marie Curie",
        "Marie Curie won Nobel Prizes in physics and in chemistry.",
    ),
    (
        "When did Paris host the Olympic Games?",
        "1900, 1924 and 2024",
        "Paris hosted the Olympic Games in 1900, 1924 and 2024.",
    ),
    (
        "What was built over many centuries?",
        "The Great Wall of China",
        "The Great Wall of China was built over many centuries.",
    ),
]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prompt_records(n: int = 16) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        q, a, _ = FACTS[i % len(FACTS)]
        out.append({"prompt": q if i < len(FACTS) else f"{q} ({i})", "response": a})
    return out


def squad_json(path: Path, per_article: int = 2) -> Path:
    """A SQuAD-format file: one article per fact group, paragraphs = the facts."""
    data = []
    for a in range(4):
        paras = []
        for p in range(2):
            q, ans, ctx = FACTS[(2 * a + p) % len(FACTS)]
            qas = [
                {
                    "id": f"q{a}-{p}-{j}",
                    "question": q if j == 0 else f"{q} ({j})",
                    "answers": [{"text": ans, "answer_start": ctx.find(ans.split()[-1])}],
                }
                for j in range(per_article)
            ]
            paras.append({"context": ctx, "qas": qas})
        data.append({"title": f"Article_{a}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def build_index(settings: Settings, name: str = "default", squad_path: Path | None = None) -> str:
    """Index the SQuAD-style paragraphs (doc id "{title}#p{i}") plus distractors with the real
    indexer; returns the live version."""
    docs: list[tuple[str, str]] = []
    if squad_path is not None:
        for art in json.loads(squad_path.read_text())["data"]:
            for i, para in enumerate(art["paragraphs"]):
                docs.append((f"{art['title']}#p{i}", para["context"]))
    else:
        docs = [(f"doc{i}", ctx) for i, (_, _, ctx) in enumerate(FACTS)]
    docs += [
        ("distractor#p0", "The Nile and the Great Wall are old."),
        ("distractor#p1", "What is the answer to the question in the passages?"),
    ]
    return index_docs(settings, name, docs)
