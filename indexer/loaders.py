"""Files to Documents: .txt, .md, .html, .pdf, .jsonl and SQuAD-format .json.

Document ids are what the incremental reindex keys on, and what a search hit names:

- a plain file (.txt/.md/.html/.pdf): its path relative to the parent of the path given on the
  command line, e.g. ``ragtune index ~/notes`` gives ``notes/sub/a.md``. The id does not depend
  on the current folder, and no absolute server path ends up in an answer.
- a JSONL record: its ``id`` field; without one, ``<file id>#L<line>`` (1-based line number,
  which changes when lines are inserted above it, so give records ids).
- a SQuAD paragraph: ``<title>#p<i>`` with ``i`` the 0-based paragraph index within its article
  (``core.qa.squad_doc_id``; an article without a title is ``article<n>``, its position in the
  file). The tuner and the eval harness read SQuAD with the same ``core.qa`` reader, so their
  gold passages carry the same ids.

Every document carries metadata: ``source`` (its file), ``file_type`` (the suffix: ``md``,
``pdf``, ``jsonl``, ...), ``modified`` (the file's modification time, ISO 8601 UTC), ``title``
where the file has one (HTML ``<title>``, PDF title, a Markdown ``# heading``, the SQuAD article,
a JSON record's ``title``), and a JSON record's own ``metadata`` fields (which win over these).
``file_type`` and ``modified`` are left out of the content hash, so touching a file re-embeds
nothing (``modified`` then keeps the time its content last changed).

An incremental run passes the size and modification time each file had when it was last read
(``known``): a file that still has both is not read at all (``unchanged_sources``).

Bad input never stops the run: each problem becomes a :class:`LoadIssue` naming the file (and
line), and the rest of the corpus is still loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.qa import squad_doc_id, squad_paragraphs
from ragtune.core.types import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".jsonl", ".json"}


def content_hash(text: str, metadata: dict[str, Any] | None = None) -> str:
    """sha256 of the text and its metadata: either changing means the document changed."""
    h = hashlib.sha256(text.encode("utf-8"))
    if metadata:
        h.update(b"\0" + json.dumps(metadata, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True)
class LoadIssue:
    """One problem with the input: a file (and line) that could not be used, and why."""

    source: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.message}"


@dataclass
class LoadResult:
    """What :func:`load_paths` found."""

    documents: list[Document] = field(default_factory=list)
    issues: list[LoadIssue] = field(default_factory=list)
    files: int = 0  # supported files read (whole or in part)
    skipped_files: int = 0  # files in folders with a suffix we do not load
    failed_sources: set[str] = field(default_factory=set)  # files with any problem
    missing_paths: list[str] = field(default_factory=list)  # paths given that do not exist
    # Files not read because their size and modification time are as ``known`` said.
    unchanged_sources: set[str] = field(default_factory=set)
    fingerprints: dict[str, tuple[int, int]] = field(default_factory=dict)  # read: (size, mtime_ns)


def _make_doc(
    doc_id: str, source: str, text: str, metadata: dict[str, Any], derived: dict[str, Any]
) -> Document:
    """A Document; ``derived`` (file type, modification time) is metadata left out of the
    hash, and a key the document's own metadata has already wins."""
    sha = content_hash(text, metadata)
    meta = dict(metadata)
    for key, value in derived.items():
        meta.setdefault(key, value)
    return Document(doc_id, source, text, sha, meta)


def file_metadata(path: Path, mtime_ns: int) -> dict[str, Any]:
    """What the file itself says about its documents: its type and modification time."""
    modified = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime_ns / 1e9))
    return {"file_type": path.suffix.lower().lstrip(".") or "text", "modified": modified}


_MD_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def markdown_title(text: str) -> str | None:
    """The first level-1 heading of a Markdown text, if it has one."""
    m = _MD_TITLE.search(text)
    return m.group(1).strip() if m else None


class _FileError(Exception):
    """A whole file could not be used (the message names the problem, not the file)."""


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _FileError(f"cannot read file ({e.strerror or e})") from e
    if b"\0" in raw[:8192]:
        raise _FileError("binary file, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _FileError(f"not valid UTF-8 text (bad byte at offset {e.start})") from e


_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _tidy(text: str) -> str:
    """Normalize newlines and squeeze runs of blank lines (paragraph breaks stay)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BLANKS.sub("\n\n", text).strip()


def _load_html(path: Path) -> tuple[str, dict[str, Any]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    meta: dict[str, Any] = {}
    if soup.title and soup.title.string and soup.title.string.strip():
        meta["title"] = soup.title.string.strip()
    # Block elements become line breaks so that sentences of separate paragraphs don't merge.
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    return text, meta


def _load_pdf(path: Path) -> tuple[str, dict[str, Any]]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are not the user's problem
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise _FileError("encrypted PDF")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.get("/Title") if reader.metadata else None
    except _FileError:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise _FileError(f"not a readable PDF ({type(e).__name__}: {e})") from e
    meta: dict[str, Any] = {"pages": len(pages)}
    if isinstance(title, str) and title.strip():
        meta["title"] = title.strip()
    return "\n\n".join(p for p in pages if p), meta


def _record_doc(
    rec: Any,
    source: str,
    line: int | None,
    fallback_id: str,
    res: LoadResult,
    derived: dict[str, Any],
) -> Document | None:
    """One {id, text, metadata} record (a JSONL line or a JSON array item) to a Document."""
    if not isinstance(rec, dict):
        res.issues.append(LoadIssue(source, "expected a JSON object with a 'text' field", line))
        return None
    text = rec.get("text")
    if not isinstance(text, str):
        res.issues.append(LoadIssue(source, "missing 'text' (a string)", line))
        return None
    if not text.strip():
        res.issues.append(LoadIssue(source, "empty document, skipped", line))
        return None
    meta = rec.get("metadata") or {}
    if not isinstance(meta, dict):
        res.issues.append(LoadIssue(source, "'metadata' must be an object", line))
        return None
    doc_id = rec.get("id")
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        doc_id = fallback_id
    elif not isinstance(doc_id, str | int):
        res.issues.append(LoadIssue(source, "'id' must be a string or a number", line))
        return None
    meta = dict(meta)
    if isinstance(rec.get("title"), str) and "title" not in meta:
        meta["title"] = rec["title"]
    meta.setdefault("source", source)
    return _make_doc(str(doc_id), source, _tidy(text), meta, derived)


def _load_jsonl(
    path: Path, source: str, res: LoadResult, derived: dict[str, Any]
) -> list[Document]:
    docs = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            res.issues.append(LoadIssue(source, f"malformed JSON ({e.msg}), line skipped", n))
            continue
        doc = _record_doc(rec, source, n, f"{source}#L{n}", res, derived)
        if doc is not None:
            docs.append(doc)
    return docs


def _load_json(path: Path, source: str, res: LoadResult, derived: dict[str, Any]) -> list[Document]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise _FileError(f"malformed JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return _load_squad(data["data"], source, res, derived)
    if isinstance(data, list):  # an array of {id, text, metadata} records, like JSONL
        docs = []
        for i, rec in enumerate(data):
            doc = _record_doc(rec, source, None, f"{source}#{i}", res, derived)
            if doc is not None:
                docs.append(doc)
        return docs
    raise _FileError("unrecognized JSON layout (expected SQuAD {'data': [...]} or a list)")


def _load_squad(
    articles: list[Any], source: str, res: LoadResult, derived: dict[str, Any]
) -> list[Document]:
    """One Document per paragraph, id ``squad_doc_id(title, i)``, title kept as metadata."""
    docs = []
    for para in squad_paragraphs(articles, lambda msg: res.issues.append(LoadIssue(source, msg))):
        if not para.context.strip():
            res.issues.append(
                LoadIssue(
                    source, f"article {para.title!r} paragraph {para.index}: no context, skipped"
                )
            )
            continue
        meta = {"title": para.title, "source": source}
        # The context is kept verbatim: SQuAD answer offsets point into it.
        doc_id = squad_doc_id(para.title, para.index)
        docs.append(_make_doc(doc_id, source, para.context, meta, derived))
    return docs


def _load_file(path: Path, source: str, res: LoadResult, mtime_ns: int) -> list[Document]:
    suffix = path.suffix.lower()
    derived = file_metadata(path, mtime_ns)
    if suffix == ".jsonl":
        return _load_jsonl(path, source, res, derived)
    if suffix == ".json":
        return _load_json(path, source, res, derived)
    if suffix in HTML_SUFFIXES:
        text, meta = _load_html(path)
    elif suffix == ".pdf":
        text, meta = _load_pdf(path)
    else:
        text, meta = _read_text(path), {}
    text = _tidy(text)
    if not text:
        raise _FileError("empty document, skipped")
    meta["source"] = source
    if suffix in (".md", ".markdown") and (title := markdown_title(text)):
        derived["title"] = title
    return [_make_doc(source, source, text, meta, derived)]


def _walk(root: Path) -> Iterator[Path]:
    """Files under a folder in a stable order, skipping hidden files and folders."""
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file():
            yield p


def load_paths(
    paths: Iterable[Path], known: Mapping[str, tuple[int, int]] | None = None
) -> LoadResult:
    """Load every supported file under ``paths`` (folders recurse); collect problems as issues.

    ``known``: source -> (size, mtime_ns) of files as last read; such a file that still has
    both is not read but listed in ``unchanged_sources``.
    """
    res = LoadResult()
    seen_files: set[Path] = set()
    seen_ids: dict[str, str] = {}
    for given in paths:
        given = Path(given).expanduser()
        if not given.exists():
            res.missing_paths.append(str(given))
            res.issues.append(LoadIssue(str(given), "no such file or folder"))
            continue
        root = given.resolve()
        base = root.parent
        if root.is_dir():
            files = []
            for p in _walk(root):
                if p.suffix.lower() in SUPPORTED_SUFFIXES:
                    files.append(p)
                else:
                    res.skipped_files += 1
        else:
            files = [root]  # a file named explicitly is read as text whatever its suffix
        for f in files:
            if f in seen_files:
                continue
            seen_files.add(f)
            source = f.relative_to(base).as_posix()
            try:
                st = f.stat()
            except OSError as e:
                res.issues.append(LoadIssue(source, f"cannot read file ({e.strerror or e})"))
                res.failed_sources.add(source)
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            if known is not None and known.get(source) == stamp:
                res.unchanged_sources.add(source)
                continue
            try:
                docs = _load_file(f, source, res, st.st_mtime_ns)
            except _FileError as e:
                res.issues.append(LoadIssue(source, str(e)))
                res.failed_sources.add(source)
                continue
            except Exception as e:  # a parser bug must not stop the other files
                res.issues.append(LoadIssue(source, f"could not load ({type(e).__name__}: {e})"))
                res.failed_sources.add(source)
                continue
            res.files += 1
            res.fingerprints[source] = stamp
            for d in docs:
                if d.id in seen_ids:
                    res.issues.append(
                        LoadIssue(
                            source,
                            f"duplicate document id {d.id!r} (first in {seen_ids[d.id]}), skipped",
                        )
                    )
                    continue
                seen_ids[d.id] = source
                res.documents.append(d)
    missing = set(res.missing_paths)
    res.failed_sources.update(i.source for i in res.issues if i.source not in missing)
    return res
