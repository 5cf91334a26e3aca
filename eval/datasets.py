"""Question sets for evaluation: SQuAD-format JSON and a simple JSONL format.

Both load into the same ``QAItem`` list. The gold document id of a SQuAD question is
``"{title}#p{i}"`` with ``i`` the 0-based paragraph index within its article: exactly the
id the indexer gives that paragraph, so retrieval can be scored against it.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragtune.core.errors import DataError


@dataclass(frozen=True)
class QAItem:
    """One evaluation question."""

    id: str
    question: str
    answers: tuple[str, ...]
    gold_doc_ids: tuple[str, ...] = ()
    group: str | None = None  # split unit (SQuAD: the article title)
    context: str | None = None  # the gold passage (oracle mode)

    @property
    def split_group(self) -> str:
        return self.group if self.group is not None else self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["answers"] = list(self.answers)
        d["gold_doc_ids"] = list(self.gold_doc_ids)
        return d


def squad_doc_id(title: str, paragraph_index: int) -> str:
    """The document id the indexer gives a SQuAD paragraph."""
    return f"{title}#p{paragraph_index}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_squad(path: Path) -> dict[str, Any]:
    """The raw SQuAD JSON (``{"data": [...], "version": ..., ...}``), checked for shape."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"dataset not found: {path}", field="dataset") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}", field="dataset") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f"{path} is not SQuAD format (no top-level 'data' list)", field="dataset")
    return raw


def squad_items(raw: dict[str, Any]) -> list[QAItem]:
    """Flatten SQuAD articles -> paragraphs -> questions into ``QAItem``s."""
    items: list[QAItem] = []
    for article in raw["data"]:
        title = str(article.get("title", ""))
        for i, para in enumerate(article.get("paragraphs", [])):
            for qa in para.get("qas", []):
                answers = tuple(
                    dict.fromkeys(a["text"] for a in qa.get("answers", []) if a.get("text"))
                )
                if not answers:
                    continue  # nothing to score against (a few in this copy of the dev set)
                items.append(
                    QAItem(
                        id=str(qa.get("id") or f"{title}#p{i}#q{len(items)}"),
                        question=qa["question"],
                        answers=answers,
                        gold_doc_ids=(squad_doc_id(title, i),),
                        group=title,
                        context=para.get("context"),
                    )
                )
    return items


def _str_list(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataError(f"{where}: '{name}' must be a string or a list of strings", field="dataset")


def jsonl_items(path: Path) -> list[QAItem]:
    """Read the JSONL format described in the module docstring; errors name the line."""
    items: list[QAItem] = []
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
                QAItem(
                    id=qid,
                    question=question.strip(),
                    answers=answers,
                    gold_doc_ids=gold,
                    group=None if group is None else str(group),
                    context=context if isinstance(context, str) and context.strip() else None,
                )
            )
    return items


def is_squad_file(path: Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def load_items(path: Path) -> list[QAItem]:
    """Load a dataset file: ``.json`` = SQuAD format, anything else = JSONL."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset not found: {path}", field="dataset")
    items = squad_items(read_squad(path)) if is_squad_file(path) else jsonl_items(path)
    if not items:
        raise DataError(f"{path.name} holds no questions with answers", field="dataset")
    return items


def write_jsonl(path: Path, items: Iterable[QAItem]) -> None:
    """Write items in the JSONL format (round-trips through ``jsonl_items``)."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.to_dict(), ensure_ascii=False) + "\n")


def subset_squad(raw: dict[str, Any], titles: Sequence[str]) -> dict[str, Any]:
    """The articles named in ``titles`` (whole: paragraph indices, hence doc ids, unchanged).

    Every other top-level key (``version``, BIG-bench's ``canary``) is kept as it is.
    """
    keep = set(titles)
    out = {k: v for k, v in raw.items() if k != "data"}
    out["data"] = [a for a in raw["data"] if a.get("title") in keep]
    return out
