"""Templates: turn arbitrary CSV/JSONL records (raw business data) into QA examples.

A template is a small TOML file whose values are Jinja expressions over a record's fields::

    description = "Product review -> star rating"
    question = '''Review of {{ product }}: "{{ review }}"
    How many stars (1-5) did the reviewer give?'''
    answer = "{{ rating }}"
    group = "{{ product }}"        # optional: split unit, so validation products are unseen
    context = "{{ manual }}"       # optional: a gold passage (for RAFT)

Rendering is sandboxed and strict: a field the record lacks is a bad record reported as
``file:line: template: 'rating' is undefined``, never an empty string. A record whose
question or answer renders empty is bad too. Worked examples live in examples/templates/.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.core.config import read_toml
from ragtune.core.errors import DataError, InvalidInput
from ragtune.core.qa import BadRecord, QARecord
from ragtune.tuner.formats import LoadResult, example, iter_records

KEYS = ("question", "answer", "group", "context")


@dataclass
class Template:
    """A compiled template: one Jinja template per example field."""

    path: Path
    description: str
    parts: dict[str, Any]  # field -> jinja2.Template

    def render(self, record: dict[str, Any], source: str, dataset: int = 0) -> QARecord:
        """One record -> one example; raises ValueError naming the problem."""
        import jinja2

        out: dict[str, str] = {}
        for key, tmpl in self.parts.items():
            try:
                out[key] = tmpl.render(**record).strip()
            except jinja2.UndefinedError as e:
                raise ValueError(f"template: {e.message}") from e
            except jinja2.TemplateError as e:
                raise ValueError(f"template {key}: {e}") from e
        for key in ("question", "answer"):
            if not out[key]:
                raise ValueError(f"template {key} renders empty")
        return example(
            out["question"],
            out["answer"],
            source,
            group=out.get("group") or None,
            context=out.get("context") or None,
            dataset=dataset,
            meta={k: v for k, v in record.items() if isinstance(v, str | int | float | bool)},
        )

    def apply_records(self, records: list[tuple[str, Any]], path: Path) -> LoadResult:
        examples: list[QARecord] = []
        bad: list[BadRecord] = []
        for src, rec in records:
            if not isinstance(rec, dict):
                bad.append(
                    BadRecord(
                        src,
                        str(rec)
                        if isinstance(rec, Exception)
                        else f"expected an object, got {type(rec).__name__}",
                    )
                )
                continue
            try:
                examples.append(self.render(rec, src))
            except ValueError as e:
                bad.append(BadRecord(src, str(e)))
        return LoadResult(path, "template", examples, bad, len(records))

    def apply_file(self, path: Path) -> LoadResult:
        """Apply to a CSV (header row = field names) or JSONL/JSON-list file."""
        if path.suffix.lower() in (".csv", ".tsv"):
            records = read_csv(path)
        else:
            records = list(iter_records(path))
        return self.apply_records(records, path)


def read_csv(path: Path) -> list[tuple[str, Any]]:
    """(file:line, row dict) for each data row; the header row gives the field names."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    out: list[tuple[str, Any]] = []
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f, delimiter=delim)
        if not reader.fieldnames:
            raise DataError(f"{path.name}: no header row", field="data")
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num  # a quoted field may span lines
            if None in row:  # more cells than header names
                out.append((f"{path.name}:{start}", ValueError("more cells than header columns")))
                continue
            out.append((f"{path.name}:{start}", {k: (v or "") for k, v in row.items()}))
    return out


def load_template(path: str | Path) -> Template:
    """Read and compile a template file; InvalidInput names what is wrong with it."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"template file not found: {path}", field="template")
    raw = read_toml(path, "template", field="template")
    unknown = sorted(set(raw) - {*KEYS, "description"})
    if unknown:
        raise InvalidInput(
            f"template {path.name}: unknown key(s) {', '.join(unknown)} "
            f"(allowed: description, {', '.join(KEYS)})",
            field="template",
        )
    for key in ("question", "answer"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise InvalidInput(f"template {path.name}: needs a {key!r} string", field="template")
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    parts = {}
    for key in KEYS:
        if key in raw:
            try:
                parts[key] = env.from_string(str(raw[key]))
            except jinja2.TemplateSyntaxError as e:
                raise InvalidInput(
                    f"template {path.name}: {key}: syntax error on line {e.lineno}: {e.message}",
                    field="template",
                ) from e
    return Template(path, str(raw.get("description", "")), parts)
