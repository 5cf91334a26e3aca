"""Fixtures of the eval tests: a tiny SQuAD file the tiny models' vocabulary covers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARTICLES = {
    "Paris": [
        (
            "The Eiffel Tower is in Paris, the capital of France.",
            [("Where is the Eiffel Tower?", "Paris")],
        ),
        (
            "Paris hosted the Olympic Games in 1900, 1924 and 2024.",
            [("When was Paris the host of the Olympic Games?", "1924")],
        ),
    ],
    "Nature": [
        (
            "Mount Everest is the highest mountain on Earth, in the Himalayas.",
            [("What is the highest mountain on Earth?", "Mount Everest")],
        ),
        (
            "The Nile is a river in Africa and one of the longest rivers in the world.",
            [("Where is the Nile?", "Africa"), ("What is the Nile?", "a river")],
        ),
    ],
    "Science": [
        (
            "Python is a programming language created by Guido van Rossum.",
            [("Who created Python?", "Guido van Rossum")],
        ),
        (
            "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
            [("What does photosynthesis turn light into?", "sugar and oxygen")],
        ),
    ],
    "History": [
        (
            "The Great Wall of China was built over many centuries.",
            [("How long was the Great Wall of China built over?", "many centuries")],
        ),
        (
            "Marie Curie won Nobel Prizes in physics and in chemistry.",
            [("Who won Nobel Prizes in physics and in chemistry?", "Marie Curie")],
        ),
    ],
}


def tiny_squad() -> dict:
    data = []
    for title, paras in ARTICLES.items():
        ps = []
        for i, (ctx, qas) in enumerate(paras):
            ps.append(
                {
                    "context": ctx,
                    "qas": [
                        {
                            "id": f"{title}-{i}-{j}",
                            "question": q,
                            "answers": [{"answer_start": ctx.find(a), "text": a}],
                        }
                        for j, (q, a) in enumerate(qas)
                    ],
                }
            )
        data.append({"title": title, "paragraphs": ps})
    return {"version": "1.1", "canary": "TEST CANARY", "data": data}


@pytest.fixture
def tiny_squad_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(tiny_squad()), encoding="utf-8")
    return path


@pytest.fixture
def tiny_env(tiny_settings, tiny_squad_file):
    """tiny_settings with the tiny SQuAD indexed as 'squad' and a LoRA adapter 'qa'."""
    from ragtune.indexer.api import build_index
    from tests.helpers import make_lora_adapter

    build_index(tiny_settings, [tiny_squad_file], "squad", progress=False)
    make_lora_adapter(tiny_settings, "qa", seed=1)
    return tiny_settings, tiny_squad_file
