"""`ragtune index PATH... --index NAME`, `ragtune index list|show|rm`, and `ragtune search`.

Heavy imports (torch, faiss, the indexer) happen inside the command bodies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragtune.cli.context import AppContext, pass_app

if TYPE_CHECKING:
    from ragtune.core.config import Settings
    from ragtune.core.filters import MetadataFilter
    from ragtune.core.index_store import LoadedIndex
    from ragtune.core.types import RetrievalMethod

METHODS = click.Choice(["dense", "bm25", "hybrid"])


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to a default command.

    So ``ragtune index docs/ --index kb`` means ``ragtune index build docs/ --index kb``, while
    ``ragtune index list`` still lists. (A folder named like a subcommand: ``./list``.)
    """

    def __init__(self, *args: Any, default_command: str = "build", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "PATH... --index NAME [OPTIONS] | list | show | rm")


@click.group(cls=DefaultGroup, default_command="build")
def index() -> None:
    """Build or update an index from files (default), or list/show/rm indexes.

    \b
      ragtune index docs/ notes.md --index kb     build or update index 'kb'
      ragtune index list                          every index, its size and model
      ragtune index show kb                       one index in detail
      ragtune index rm kb                         delete it
    """


@index.command("build")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "-i", "name", default=None, help="Index name (setting default_index).")
@click.option(
    "--prune/--no-prune",
    default=None,
    help="Remove indexed documents not found in PATHS (default: setting prune, on).",
)
@click.option("--chunk-size", type=int, default=None, help="Chunk size in tokens.")
@click.option("--chunk-overlap", type=int, default=None, help="Chunk overlap in tokens.")
@click.option("--batch-size", "embed_batch_size", type=int, default=None, help="Embedding batch.")
@click.option(
    "--index-type",
    type=click.Choice(["flat", "ivf", "ivf_sq8", "ivf_pq"]),
    default=None,
    help="flat (exact) | ivf | ivf_sq8 | ivf_pq (compressed, for big corpora).",
)
@click.option(
    "--rescan",
    "skip_unchanged_files",
    flag_value=False,
    default=None,
    help="Read every file, even those whose size and time are unchanged.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@pass_app
def build(
    app: AppContext,
    paths: tuple[Path, ...],
    name: str | None,
    prune: bool | None,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Index PATHS (files or folders) into an index, re-embedding only what changed.

    Loads .txt .md .html .pdf .jsonl ({id, text, metadata} per line) and SQuAD .json files.
    Files that cannot be used are reported and skipped; the exit status is non-zero only when
    nothing could be indexed.
    """
    from ragtune.indexer.api import build_index

    settings = app.settings(**flags)
    summary = build_index(
        settings, list(paths), name or settings.default_index, prune=prune, progress=not quiet
    )
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(summary.to_text())


@index.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """List the indexes: documents, chunks, model, type and live version."""
    from ragtune.indexer.api import list_overviews

    rows, problems = list_overviews(app.settings())
    for e in problems:  # a broken index is named, the others still listed
        click.echo(f"warning: {e.message}", err=True)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows and not problems:
        click.echo("no indexes (build one with: ragtune index PATH --index NAME)")
        return
    click.echo(f"{'name':<20} {'docs':>7} {'chunks':>8} {'type':<5} {'model':<22} version")
    for r in rows:
        click.echo(
            f"{r.name:<20} {r.documents:>7} {r.chunks:>8} {r.index_type:<5} "
            f"{r.embedding_model[:22]:<22} {r.version}"
        )


@index.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def show_cmd(app: AppContext, name: str, as_json: bool) -> None:
    """Describe one index: model, chunker, counts, sources, versions."""
    from ragtune.indexer.api import describe_index

    info = describe_index(app.settings(), name)
    if as_json:
        click.echo(json.dumps(info.model_dump(mode="json"), indent=2))
        return
    for key in ("name", "version", "previous_version", "documents", "chunks", "index_type"):
        click.echo(f"{key:<17} {getattr(info, key)}")
    click.echo(f"{'embedding':<17} {info.embedding_model} ({info.embedding_dim}-d)")
    if info.ivf:
        click.echo(f"{'ivf':<17} {info.ivf.model_dump(exclude_none=True)}")
    ch = info.chunker
    click.echo(f"{'chunker':<17} {ch.chunk_size} tokens, overlap {ch.chunk_overlap}")
    click.echo(f"{'updated':<17} {info.updated} (created {info.created})")
    click.echo(
        f"{'size':<17} {info.bytes / 1e6:.1f} MB this version "
        f"(FAISS {info.faiss_bytes / 1e6:.1f} MB) + {info.store_bytes / 1e6:.1f} MB chunk store"
    )
    if info.fields:
        fields = ", ".join(f"{k} ({f.kind})" for k, f in info.fields.items())
        click.echo(f"{'filter fields':<17} {fields}")
    click.echo("sources:")
    for src, n in info.sources.items():
        click.echo(f"  {src}  ({n} document{'s' if n != 1 else ''})")


@index.command("rm")
@click.argument("name")
@pass_app
def rm_cmd(app: AppContext, name: str) -> None:
    """Delete an index and all its versions."""
    from ragtune.indexer.api import remove_index

    version = remove_index(app.settings(), name)
    click.echo(f"removed index {name!r}" + (f" (was at version {version})" if version else ""))


def _read_queries(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(id, query) pairs from a file: a query per line, or JSONL {id, query}; and the problems."""
    from ragtune.core.errors import DataError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read queries file {path}: {e}") from e
    out, problems = [], []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{n}: malformed JSON ({e.msg}), skipped")
                continue
            q = rec.get("query") if isinstance(rec, dict) else None
            if not isinstance(q, str) or not q.strip():
                problems.append(f"{path}:{n}: no 'query' string, skipped")
                continue
            out.append((str(rec.get("id", n)), q))
        else:
            out.append((str(n), text))
    if not out:
        raise DataError(f"no queries in {path}" + (f" ({problems[0]})" if problems else ""))
    return out, problems


def _open_index(settings: Settings, name: str, method: RetrievalMethod) -> LoadedIndex:
    """Load the index; the embedder only when the method needs it (BM25 alone does not)."""
    from ragtune.core.index_store import open_index

    if method == "bm25":
        return open_index(settings, name, None)
    from ragtune.core.models import load_embedder

    return open_index(settings, name, load_embedder(settings))


@click.command("search")
@click.argument("query", required=False)
@click.option("--index", "-i", "name", default=None, help="Index name (setting default_index).")
@click.option("-k", "--top-k", "k", type=click.IntRange(1, 1000), default=None, help="Hits.")
@click.option("--method", type=METHODS, default=None, help="dense | bm25 | hybrid.")
@click.option(
    "--queries",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Batch: a file with a query per line, or JSONL {id, query}.",
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Batch output."
)
@click.option(
    "--filter",
    "filter_json",
    default=None,
    help='Metadata filter, JSON: \'{"file_type": "pdf", "modified": {"gte": "2026-01-01"}}\'.',
)
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@pass_app
def search(
    app: AppContext,
    query: str | None,
    name: str | None,
    k: int | None,
    method: RetrievalMethod | None,
    queries: Path | None,
    out: Path | None,
    filter_json: str | None,
    as_json: bool,
) -> None:
    """Search an index: one QUERY, or every query of --queries FILE (JSONL hits out).

    --filter keeps only chunks whose metadata match, before the top k is taken: equality
    ({"file_type": "pdf"}), a list ({"tenant": {"in": ["a", "b"]}}), ranges on numbers and
    ISO dates ({"year": {"gte": 2020, "lt": 2024}}); every condition must hold.
    """
    from ragtune.core.errors import InvalidInput
    from ragtune.core.filters import parse_filter_text

    if (query is None) == (queries is None):
        raise InvalidInput("give either a QUERY or --queries FILE")
    flt = parse_filter_text(filter_json) if filter_json is not None else None
    settings = app.settings()
    name = name or settings.default_index
    k = k or settings.top_k
    method = method or settings.retrieval
    if queries is not None:
        _batch_search(settings, name, k, method, queries, out, flt)
        return
    assert query is not None
    if not query.strip():
        raise InvalidInput("the query is empty")
    idx = _open_index(settings, name, method)
    hits = idx.search(query, k, method, flt)
    if as_json:
        payload = {
            "query": query,
            "index": name,
            "version": idx.version,
            "method": method,
            "filter": flt.to_json() if flt is not None else None,
            "hits": [h.to_dict() for h in hits],
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("no hits")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet[:200] + ("..." if len(snippet) > 200 else "")
        click.echo(f"{rank}. [{h.score:.4f}] {h.doc_id}  ({h.chunk_id})")
        click.echo(f"   {snippet}")


def _batch_search(
    settings: Settings,
    name: str,
    k: int,
    method: RetrievalMethod,
    path: Path,
    out: Path | None,
    flt: MetadataFilter | None,
) -> None:
    from tqdm import tqdm

    pairs, problems = _read_queries(path)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    idx = _open_index(settings, name, method)  # the model is loaded once for every query
    step = 64
    lines = []
    with tqdm(total=len(pairs), desc="searching", unit="query", file=sys.stderr) as bar:
        for i in range(0, len(pairs), step):
            part = pairs[i : i + step]
            results = idx.search_batch([q for _, q in part], k, method, flt)
            for (qid, q), hits in zip(part, results, strict=True):
                rec = {
                    "id": qid,
                    "query": q,
                    "index": name,
                    "version": idx.version,
                    "method": method,
                    "hits": [h.to_dict() for h in hits],
                }
                lines.append(json.dumps(rec, ensure_ascii=False))
            bar.update(len(part))
    text = "\n".join(lines) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        from ragtune.core.atomic import write_text_atomic

        write_text_atomic(out, text)
        click.echo(f"wrote {len(lines)} results to {out}", err=True)


def register(cli: click.Group) -> None:
    """Add `index` and `search` to the `ragtune` group."""
    cli.add_command(index)
    cli.add_command(search)
