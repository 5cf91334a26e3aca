"""Question sets for evaluation: SQuAD-format JSON and a simple JSONL format.

Both load into a list of ``core.qa.QARecord``. SQuAD is read by ``core.qa.read_squad``, the
reader the indexer and the tuner use: a question's gold document id is its paragraph's
``core.qa.squad_doc_id`` (``"{title}#p{i}"``, ``i`` the 0-based paragraph index within its
article; ``article<n>`` stands in for a missing title), exactly the id the indexer gives that
paragraph, so retrieval can be scored against it. SQuAD questions without any answer text
are skipped (nothing to score them against); any other unusable question is an error naming it.

JSONL: one object a line::

    {"question": "...", "answers": ["...", "..."], "gold_doc_ids": ["doc#p0"],
     "id": "q1", "group": "article or source", "context": "the gold passage"}

Only ``question`` and ``answers`` (or a single ``answer``) are required. ``group`` is the
unit the train/test split keeps together (default: the item itself); ``context`` enables the
oracle mode (the gold passage given to the model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ragtune.core.errors import DataError
from ragtune.core.qa import NO_ANSWER, QARecord, read_squad, squad_title


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def squad_items(path: Path) -> list[QARecord]:
    """The questions of a SQuAD file that have an answer; other bad questions are an error."""
    found = read_squad(path, field="dataset")
    bad = [b for b in found.bad if b.reason != NO_ANSWER]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}", field="dataset")
    return found.records


def _str_list(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataError(f"{where}: '{name}' must be a string or a list of strings", field="dataset")


def jsonl_items(path: Path) -> list[QARecord]:
    """Read the JSONL format described in the module docstring; errors name the line."""
    items: list[QARecord] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{Path(path).name} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})", field="dataset") from e
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object", field="dataset")
            question = obj.get("question")
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"{where}: 'question' must be a non-empty string", field="dataset")
            answers = _str_list(obj.get("answers", obj.get("answer")), "answers", where)
            answers = tuple(a for a in answers if a.strip())
            if not answers:
                raise DataError(f"{where}: needs at least one answer", field="dataset")
            gold = _str_list(obj.get("gold_doc_ids", obj.get("gold_doc_id")), "gold_doc_ids", where)
            qid = str(obj.get("id") or f"line{n}")
            if qid in seen:
                raise DataError(f"{where}: duplicate id {qid!r}", field="dataset")
            seen.add(qid)
            group = obj.get("group")
            context = obj.get("context")
            items.append(
                QARecord(
                    id=qid,
                    question=question.strip(),
                    answers=answers,
                    gold_doc_ids=gold,
                    group=None if group is None else str(group),
                    context=context if isinstance(context, str) and context.strip() else None,
                    source=f"{Path(path).name}:{n}",
                )
            )
    return items


def is_squad_file(path: Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def load_items(path: Path) -> list[QARecord]:
    """Load a dataset file: ``.json`` = SQuAD format, anything else = JSONL."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset not found: {path}", field="dataset")
    items = squad_items(path) if is_squad_file(path) else jsonl_items(path)
    if not items:
        raise DataError(f"{path.name} holds no questions with answers", field="dataset")
    return items


def write_jsonl(path: Path, items: Iterable[QARecord]) -> None:
    """Write items in the JSONL format (round-trips through ``jsonl_items``)."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            rec = {
                "id": it.id,
                "question": it.question,
                "answers": list(it.answers),
                "gold_doc_ids": list(it.gold_doc_ids),
                "group": it.group,
                "context": it.context,
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def subset_squad(raw: dict[str, Any], titles: Sequence[str]) -> dict[str, Any]:
    """The articles named in ``titles`` (``core.qa.squad_titles``), whole.

    Paragraph indices stay, and an article without a title gets the ``article<n>`` it had in
    ``raw`` written in, so every document id is the same in the subset as in ``raw``. Every
    other top-level key (``version``, BIG-bench's ``canary``) is kept as it is.
    """
    keep = set(titles)
    out = {k: v for k, v in raw.items() if k != "data"}
    out["data"] = [
        {**a, "title": squad_title(a, i)}
        for i, a in enumerate(raw["data"])
        if isinstance(a, dict) and squad_title(a, i) in keep
    ]
    return out
