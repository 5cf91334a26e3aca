"""Derive the shipped SQuAD subsets from the SQuAD v1.1 dev set (the BIG-bench copy).

    python examples/squad-mini/make_subset.py PATH/TO/squaddev_v1.1.json

Rules (deterministic, no randomness): per article keep the first ``PARAS`` paragraphs of at
most ``MAX_WORDS`` words (short passages keep prompts cheap on a CPU), and per paragraph its
first ``QAS`` questions. Paragraph indices in the output are positions in the output file,
so the gold document id of a question is ``"{title}#p{i}"`` of *this* file, exactly what the
indexer assigns when it indexes it. Every other top-level key, BIG-bench's canary included,
is copied unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_TITLES = [
    "Apollo_program",
    "Amazon_rainforest",
    "Black_Death",
    "Doctor_Who",
    "Genghis_Khan",
    "Harvard_University",
    "Kenya",
    "Oxygen",
    "Packet_switching",
    "Prime_number",
    "Rhine",
    "Steam_engine",
]
SUBSETS = {
    # name: (titles or None for all, paragraphs per article, max words, questions per paragraph)
    "demo.json": (DEMO_TITLES, 12, 120, 5),
    "large.json": (None, 12, 130, 5),
}


def subset(raw: dict, titles: list[str] | None, paras: int, max_words: int, qas: int) -> dict:
    out = {k: v for k, v in raw.items() if k != "data"}
    out["data"] = []
    for article in raw["data"]:
        if titles is not None and article["title"] not in titles:
            continue
        kept = [
            {"context": p["context"], "qas": p["qas"][:qas]}
            for p in article["paragraphs"]
            if len(p["context"].split()) <= max_words
        ][:paras]
        out["data"].append({"title": article["title"], "paragraphs": kept})
    return out


def main(src: str) -> None:
    raw = json.loads(Path(src).read_text(encoding="utf-8"))
    for name, (titles, paras, words, qas) in SUBSETS.items():
        sub = subset(raw, titles, paras, words, qas)
        n_p = sum(len(a["paragraphs"]) for a in sub["data"])
        n_q = sum(len(p["qas"]) for a in sub["data"] for p in a["paragraphs"])
        (HERE / name).write_text(json.dumps(sub, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{name}: {len(sub['data'])} articles, {n_p} paragraphs, {n_q} questions")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/squad/squaddev_v1.1.json")
