"""Readers for instruction data: every format becomes a list of ``core.qa.QARecord``.

Supported formats (``fmt``):

- ``prompt``: JSONL ``{"prompt": ..., "response": ...}`` (optional ``context``, ``doc_id``);
- ``alpaca``: JSONL or a JSON list of ``{"instruction", "input", "output"}``;
- ``chat``: JSONL ``{"messages": [{"role", "content"}, ...]}``; the last user turn and the
  final assistant turn become the example (the prompt module adds its own system prompt);
- ``squad``: SQuAD v1.1 JSON, closed book (question -> first answer), read by
  ``core.qa.read_squad``; each example remembers its gold paragraph by the indexer's
  document id (``core.qa.squad_doc_id``) for RAFT;
- ``template``: CSV/JSONL records turned into examples by a template file (``templates.py``);
- ``auto``: guessed from the suffix and the first record.

A bad record is never dropped silently: it is reported as ``file:line: reason`` and counted.
A file that is empty, or whose every record is bad, is a ``DataError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.qa import BadRecord, QARecord, read_squad

FORMATS = ("auto", "prompt", "alpaca", "chat", "squad", "template")
MAX_REPORTED = 20  # bad records listed by name; the rest are only counted


@dataclass
class LoadResult:
    """What a reader found in one file."""

    path: Path
    fmt: str
    examples: list[QARecord]
    bad: list[BadRecord]
    records: int  # records seen (good + bad)

    def summary(self) -> str:
        s = f"{self.path.name}: {len(self.examples)} examples from {self.records} records ({self.fmt})"
        if self.bad:
            s += f", {len(self.bad)} bad"
        return s


class _Bad(Exception):
    """A record-level problem; becomes a BadRecord with the record's location."""


def _text(rec: dict[str, Any], key: str) -> str:
    if key not in rec:
        raise _Bad(f"missing field {key!r}")
    val = rec[key]
    if not isinstance(val, str | int | float) or isinstance(val, bool):
        raise _Bad(f"field {key!r} must be a string, got {type(val).__name__}")
    val = str(val).strip()
    if not val:
        raise _Bad(f"field {key!r} is empty")
    return val


def _scalars(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if isinstance(v, str | int | float | bool)}


def example(question: str, answer: str, source: str, **fields: Any) -> QARecord:
    """A tuner example: one answer, keyed (and split, without a group) by its location."""
    return QARecord(id=source, question=question, answers=(answer,), source=source, **fields)


def _from_prompt(rec: dict[str, Any], src: str) -> QARecord:
    ctx = rec.get("context")
    return example(
        _text(rec, "prompt"),
        _text(rec, "response"),
        src,
        context=ctx.strip() if isinstance(ctx, str) and ctx.strip() else None,
        gold_doc_ids=(str(rec["doc_id"]),) if rec.get("doc_id") is not None else (),
        meta=_scalars(rec),
    )


def _from_alpaca(rec: dict[str, Any], src: str) -> QARecord:
    instruction = _text(rec, "instruction")
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        raise _Bad("field 'input' must be a string")
    question = f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction
    return example(question, _text(rec, "output"), src, meta=_scalars(rec))


def _from_chat(rec: dict[str, Any], src: str) -> QARecord:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _Bad("field 'messages' must be a non-empty list")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise _Bad("each message needs 'role' and string 'content'")
    if msgs[-1]["role"] != "assistant":
        raise _Bad("the last message must be from the assistant")
    users = [m for m in msgs[:-1] if m["role"] == "user"]
    if not users:
        raise _Bad("no user message before the assistant's answer")
    q, a = users[-1]["content"].strip(), msgs[-1]["content"].strip()
    if not q or not a:
        raise _Bad("empty user question or assistant answer")
    return example(q, a, src, meta=_scalars(rec))


_RECORD_READERS = {"prompt": _from_prompt, "alpaca": _from_alpaca, "chat": _from_chat}


def detect_record_format(rec: Any) -> str | None:
    """Which JSONL format a record looks like (None if none)."""
    if not isinstance(rec, dict):
        return None
    if "messages" in rec:
        return "chat"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "response" in rec:
        return "prompt"
    return None


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) for a JSONL file (one per non-blank line) or a JSON list.

    A line that is not JSON yields ``(location, _Bad)`` so that the caller counts it.
    """
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path.name} is not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise DataError(f"{path.name}: expected a JSON list of records (or SQuAD JSON)")
        for i, rec in enumerate(data):
            yield f"{path.name}:#{i}", rec
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path.name}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path.name}:{lineno}", _Bad(f"not valid JSON ({e.msg})")


def _read_records(path: Path, fmt: str) -> LoadResult:
    examples: list[QARecord] = []
    bad: list[BadRecord] = []
    n = 0
    for src, rec in iter_records(path):
        n += 1
        if isinstance(rec, _Bad):
            bad.append(BadRecord(src, str(rec)))
            continue
        if fmt == "auto":
            fmt = detect_record_format(rec) or "auto"
            if fmt == "auto":
                bad.append(
                    BadRecord(
                        src,
                        "unrecognized record (expected prompt/response, "
                        "instruction/output or messages)",
                    )
                )
                continue
        if not isinstance(rec, dict):
            bad.append(BadRecord(src, f"expected a JSON object, got {type(rec).__name__}"))
            continue
        try:
            examples.append(_RECORD_READERS[fmt](rec, src))
        except _Bad as e:
            bad.append(BadRecord(src, str(e)))
    return LoadResult(path, fmt, examples, bad, n)


def _is_squad(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("{") and '"data"' in head


def load_examples(
    path: str | Path, fmt: str = "auto", template: str | Path | None = None, dataset: int = 0
) -> LoadResult:
    """Read one data file into examples.

    Args:
        path: a JSONL/JSON/CSV file.
        fmt: one of ``FORMATS``; ``auto`` guesses from the suffix and the first record.
        template: a template file (``templates.py``), required for ``fmt="template"`` and
            for CSV files; giving one with ``fmt="auto"`` selects ``template``.
        dataset: index stamped on each example (which ``--data`` it came from).

    Raises:
        DataError: the file is missing, empty, or every record in it is bad.
        InvalidInput: an unknown format, or a template format without a template.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InvalidInput(
            f"unknown data format {fmt!r} (use one of {', '.join(FORMATS)})", field="format"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {path}", field="data")
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        raise DataError(f"data file {path.name} is empty", field="data")
    if fmt == "auto" and template is not None:
        fmt = "template"
    if fmt == "auto" and path.suffix.lower() == ".csv":
        raise InvalidInput(f"{path.name}: CSV data needs --template FILE", field="template")
    if fmt == "template":
        if template is None:
            raise InvalidInput("--format template needs --template FILE", field="template")
        from ragtune.tuner.templates import load_template

        result = load_template(template).apply_file(path)
    elif fmt == "squad" or (fmt == "auto" and _is_squad(path)):
        found = read_squad(path, field="data")
        result = LoadResult(path, "squad", found.records, found.bad, found.seen)
    else:
        result = _read_records(path, fmt)
    if result.records == 0:
        raise DataError(f"data file {path.name} has no records", field="data")
    if not result.examples:
        first = "; ".join(str(b) for b in result.bad[:3])
        raise DataError(
            f"{path.name}: all {result.records} records are invalid ({first})", field="data"
        )
    if dataset:
        result.examples = [replace(e, dataset=dataset) for e in result.examples]
    return result
