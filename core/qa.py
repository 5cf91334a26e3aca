"""Question/answer records and the one SQuAD reader, shared by the indexer, the tuner and eval.

SQuAD v1.1 JSON is ``{"data": [article, ...]}``, an article ``{"title", "paragraphs"}``, a
paragraph ``{"context", "qas"}`` and a question ``{"id", "question", "answers"}``. The indexer
makes one document per paragraph; the tuner and eval make one :class:`QARecord` per question.
Both name a paragraph with :func:`squad_doc_id` of its article's :func:`squad_title`, so a
question's gold document id is exactly the id of the indexed paragraph, also for an article
without a title (``article<i>``, ``i`` its 0-based position in the file).

A record that cannot be used is reported as a :class:`BadRecord` (``where: reason``), never
dropped silently; what a reader does with the bad ones is the caller's choice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.errors import DataError

NO_ANSWER = "no answer"  # the reason of a question without any answer text


@dataclass(frozen=True)
class QARecord:
    """One question with its answers: a training example (tuner) or an eval question.

    ``id`` is the record's stable key (SQuAD: the question id; other formats: its
    ``source``); ``source`` says where to look when it is wrong (``file:line``, or
    ``file:title#pN:qid`` for SQuAD). Neither ``source`` nor ``meta`` takes part in equality.
    """

    id: str
    question: str
    answers: tuple[str, ...]  # the first is the training target
    gold_doc_ids: tuple[str, ...] = ()  # ids of the passages that hold the answer, in the index
    group: str | None = None  # split unit (SQuAD: the article title), kept on one side
    context: str | None = None  # the gold passage text (oracle mode, RAFT)
    support: str | None = None  # the sentence of the context that holds the answer
    source: str = field(default="", compare=False)
    dataset: int = 0  # which of several data files it came from (tuner mixing weights)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # raw scalar fields

    def __post_init__(self) -> None:
        if not self.answers:  # every reader drops (and reports) a question without one
            raise ValueError(f"QA record {self.id!r} has no answer")

    @property
    def answer(self) -> str:
        """The first answer: the one a model is trained to give."""
        return self.answers[0]

    @property
    def doc_id(self) -> str | None:
        """The first gold document id, if the data knows one."""
        return self.gold_doc_ids[0] if self.gold_doc_ids else None

    @property
    def split_group(self) -> str:
        """What a group split keeps together: the group, else the record itself."""
        return self.group or self.id


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be used: where it is and why."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


# --- SQuAD -----------------------------------------------------------------------------------


def squad_title(article: Any, article_index: int) -> str:
    """An article's title, or ``article<i>`` (``i`` its 0-based position) when it has none."""
    title = article.get("title") if isinstance(article, dict) else None
    return str(title or f"article{article_index}")


def squad_doc_id(title: str, paragraph_index: int) -> str:
    """The document id of one SQuAD paragraph: ``"{title}#p{i}"``, ``i`` 0-based in its article.

    ``title`` is :func:`squad_title`'s, so an article without a title gets ids too.
    """
    return f"{title}#p{paragraph_index}"


@dataclass(frozen=True)
class SquadParagraph:
    """One paragraph of a SQuAD file, with the title and index its document id is made of."""

    title: str
    index: int  # 0-based within its article
    context: str  # verbatim (answer offsets point into it); "" when the file has none
    qas: list[Any]  # the raw question objects

    @property
    def doc_id(self) -> str:
        return squad_doc_id(self.title, self.index)


def load_squad_json(path: Path, field: str | None = None) -> dict[str, Any]:
    """The raw SQuAD JSON (``{"data": [...], "version": ..., ...}``), checked for shape.

    Raises:
        DataError: the file is missing, not JSON, or has no top-level ``data`` list.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"data file not found: {path}", field=field) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path.name} is not valid JSON: {e}", field=field) from e
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f"{path.name}: not SQuAD JSON (no top-level 'data' list)", field=field)
    return raw


def squad_titles(raw: dict[str, Any]) -> list[str]:
    """The :func:`squad_title` of every article, in file order."""
    return [squad_title(a, i) for i, a in enumerate(raw["data"])]


def squad_paragraphs(
    articles: list[Any], problem: Callable[[str], None]
) -> Iterator[SquadParagraph]:
    """Every paragraph in file order; an article or paragraph of the wrong shape is reported
    through ``problem`` (a message naming it) and skipped."""
    for a_i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            problem(f"article {a_i} has no 'paragraphs' list")
            continue
        title = squad_title(article, a_i)
        for p_i, para in enumerate(paragraphs):
            if not isinstance(para, dict):
                problem(f"article {title!r} paragraph {p_i} is not an object")
                continue
            ctx = para.get("context")
            qas = para.get("qas")
            yield SquadParagraph(
                title,
                p_i,
                ctx if isinstance(ctx, str) else "",
                qas if isinstance(qas, list) else [],
            )


@dataclass
class SquadRecords:
    """What :func:`squad_records` found."""

    records: list[QARecord]
    bad: list[BadRecord]
    seen: int  # questions looked at, plus articles and paragraphs that could not be read


def sentence_with(context: str, start: int) -> str:
    """The sentence of ``context`` that contains character offset ``start``."""
    begin = 0
    for m in re.finditer(r"(?<=[.!?])\s+", context):
        if m.end() > start:
            return context[begin : m.start()].strip()
        begin = m.end()
    return context[begin:].strip()


def _answers(qa: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """The distinct non-empty answer texts, and the raw answer the first one came from."""
    raw = qa.get("answers")
    texts: dict[str, None] = {}
    first = None
    for a in raw if isinstance(raw, list) else []:
        text = str(a.get("text") or "").strip() if isinstance(a, dict) else ""
        if text:
            texts.setdefault(text)
            first = first or a
    return tuple(texts), first


def _answer_start(answer: dict[str, Any], text: str, context: str) -> int:
    """Where the answer starts in the context: its offset, else where its text first occurs."""
    try:
        return int(answer["answer_start"])
    except (KeyError, TypeError, ValueError):
        return max(context.find(text), 0)


def squad_records(raw: dict[str, Any], name: str) -> SquadRecords:
    """One :class:`QARecord` per question of a SQuAD JSON (see :func:`load_squad_json`).

    Each record's gold document is its paragraph (:func:`squad_doc_id`), its group the
    article title, its first answer the first non-empty answer text. ``name`` (the file name)
    prefixes every ``source``. A question without a question text, or without any answer
    text (reason :data:`NO_ANSWER`), is a bad record.
    """
    records: list[QARecord] = []
    bad: list[BadRecord] = []
    seen = 0

    def problem(msg: str) -> None:
        nonlocal seen
        seen += 1
        bad.append(BadRecord(name, msg))

    for para in squad_paragraphs(raw["data"], problem):
        doc_id = para.doc_id
        for q_i, qa in enumerate(para.qas):
            seen += 1
            if not isinstance(qa, dict):
                bad.append(BadRecord(f"{name}:{doc_id}:{q_i}", "question is not an object"))
                continue
            src = f"{name}:{doc_id}:{qa.get('id', q_i)}"
            question = str(qa.get("question") or "").strip()
            if not question:
                bad.append(BadRecord(src, "empty question"))
                continue
            answers, first = _answers(qa)
            if first is None:
                bad.append(BadRecord(src, NO_ANSWER))
                continue
            ctx = para.context
            records.append(
                QARecord(
                    id=str(qa.get("id") or f"{doc_id}#q{len(records)}"),
                    question=question,
                    answers=answers,
                    gold_doc_ids=(doc_id,),
                    group=para.title,
                    context=ctx if ctx.strip() else None,
                    support=sentence_with(ctx, _answer_start(first, answers[0], ctx))
                    if ctx
                    else None,
                    source=src,
                    meta={"title": para.title, "id": qa.get("id")},
                )
            )
    return SquadRecords(records, bad, seen)


def read_squad(path: Path, field: str | None = None) -> SquadRecords:
    """:func:`squad_records` of a SQuAD file; ``DataError`` if it is not one."""
    path = Path(path)
    return squad_records(load_squad_json(path, field), path.name)
