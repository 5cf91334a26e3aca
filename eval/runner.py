"""The eval runner: every variant answers every selected question; results stream to disk.

``runs/<id>/results.jsonl`` gets one line per (variant, question) as soon as its batch is
generated, plus one ``retrieval`` line per question (the top-``retrieve_k`` ranking, for the
recall@k curve). A rerun with the same folder skips what is already there, so an interrupted
run continues where it stopped. Questions are walked in batches of ``batch_size``, each batch
through every variant, so a half-finished run still compares all variants on the same
questions.

``run_eval`` reads as its four steps: ``plan_run`` -> ``start_run_folder`` -> ``answer_all``
-> ``summarize_run``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.core.atomic import write_json_atomic
from ragtune.core.errors import InvalidInput
from ragtune.core.filters import parse_filter
from ragtune.core.pipeline import QueryRequest
from ragtune.core.qa import QARecord
from ragtune.core.types import Answer, Hit
from ragtune.eval.datasets import file_sha256, load_items
from ragtune.eval.metrics import answer_in_context, answer_scores, retrieval_scores
from ragtune.eval.split import SplitSpec, sample_items, select_split
from ragtune.eval.targets import Target
from ragtune.eval.variants import Variant, expand_variants

log = logging.getLogger("ragtune.eval")

RESULTS = "results.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
RETRIEVAL = "retrieval"  # the pseudo-variant of retrieval-only records

# Config fields that may change between an interrupted run and its continuation.
_RESUMABLE_CHANGES = {
    "modes",
    "adapters",
    "finetune_adapters",
    "hybrid_adapters",
    "limit",
    "oracle_with_hybrid",
}


@dataclass(frozen=True)
class Retriever:
    """An extra retriever of a run: another index, searched with the embedder that built it.

    Variants ``rag@LABEL`` / ``hybrid:A@LABEL`` retrieve from it (the experiment declares
    one for a tuned embedder: ``index`` built with ``embedder = "tuned:NAME"``).
    """

    index: str
    embedder: str


@dataclass
class RunConfig:
    """Everything needed to repeat a run (written to config.json)."""

    dataset: str
    modes: list[str] = field(default_factory=lambda: ["base", "rag"])
    adapters: list[str] = field(default_factory=list)
    finetune_adapters: list[str] = field(default_factory=list)
    hybrid_adapters: list[str] = field(default_factory=list)
    index: str | None = None
    split: str = "all"
    test_fraction: float = 0.25
    split_seed: int = 0
    test_groups: list[str] | None = None
    limit: int | None = None
    sample_seed: int = 0
    top_k: int | None = None
    retrieval: str | None = None
    filter: dict[str, Any] | None = None  # metadata filter on retrieval (core.filters)
    max_new_tokens: int | None = None
    batch_size: int = 8
    retrieve_k: int = 10
    recall_ks: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])
    n_boot: int = 10_000
    url: str | None = None
    retrievers: dict[str, Retriever] = field(default_factory=dict)
    oracle_with_hybrid: bool = True  # oracle:A runs whenever hybrid:A does (the loss split)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base_dir: Path | None = None) -> RunConfig:
        """Build from a TOML/JSON mapping; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known - {"dataset_sha256", "variants", "target"})
        if unknown:
            raise InvalidInput(f"unknown eval setting(s): {', '.join(unknown)}", field="config")
        vals = {k: v for k, v in data.items() if k in known}
        if "dataset" not in vals:
            raise InvalidInput("the eval config needs 'dataset'", field="dataset")
        if base_dir is not None and not Path(vals["dataset"]).is_absolute():
            vals["dataset"] = str((base_dir / vals["dataset"]).resolve())
        if isinstance(vals.get("modes"), str):
            vals["modes"] = [m for m in vals["modes"].split(",") if m.strip()]
        from pydantic import TypeAdapter, ValidationError

        try:  # types checked (a TOML "8" is taken as 8), so that a bad one names its key
            return TypeAdapter(cls).validate_python(vals)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"])
            raise InvalidInput(f"eval setting {key}: {err['msg']}", field="config") from e

    def variants(self) -> list[Variant]:
        return expand_variants(
            self.modes,
            self.adapters,
            self.finetune_adapters,
            self.hybrid_adapters,
            retrievers=list(self.retrievers),
            oracle_with_hybrid=self.oracle_with_hybrid,
        )

    def index_of(self, v: Variant) -> str | None:
        """The index a variant retrieves from (None: the target's default index)."""
        if v.retriever is not None:
            return self.retrievers[v.retriever].index
        return self.index

    def split_spec(self) -> SplitSpec:
        groups = tuple(self.test_groups) if self.test_groups is not None else None
        return SplitSpec(self.test_fraction, self.split_seed, groups)

    def validate(self) -> RunConfig:
        if not 1 <= self.batch_size <= 256:
            raise InvalidInput("batch_size must be between 1 and 256", field="batch_size")
        if self.limit is not None and self.limit < 1:
            raise InvalidInput("limit must be at least 1", field="limit")
        if self.retrieve_k < 1:
            raise InvalidInput("retrieve_k must be at least 1", field="retrieve_k")
        from ragtune.core.index_store import validate_name

        for label, r in self.retrievers.items():
            validate_name(label, "retriever")
            validate_name(r.index, "index")
            if self.url:
                raise InvalidInput(
                    f"retriever {label!r}: extra retrievers need the in-process pipeline "
                    "(the service searches with its one configured embedder); drop --url",
                    field="retrievers",
                )
        flt = parse_filter(self.filter)  # names the problem; the fields are checked at search
        self.filter = flt.to_json() if flt is not None else None
        self.variants()
        self.split_spec()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_items(config: RunConfig) -> list[QARecord]:
    """The questions of this run: dataset -> split side -> seeded sample of ``limit``."""
    items = load_items(Path(config.dataset))
    items = select_split(items, config.split, config.split_spec())
    if not items:
        raise InvalidInput(f"split {config.split!r} holds no questions", field="split")
    return sample_items(items, config.limit, config.sample_seed)


# --- results file ---------------------------------------------------------------------------


def read_results(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (a crash mid-write) is ignored."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _repair_tail(path: Path) -> None:
    """Cut a torn last line so appended records start on a line of their own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


class ResultsWriter:
    """Appends records line by line, flushed and fsynced per batch."""

    def __init__(self, path: Path) -> None:
        _repair_tail(path)
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            self.f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# --- records --------------------------------------------------------------------------------


def _doc_ids(hits: Sequence[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


def answer_record(
    v: Variant,
    item: QARecord,
    ans: Answer,
    batch_ms: float,
    batch_n: int,
    batch_generate_ms: float | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": "answer",
        "variant": v.name,
        "mode": v.kind,
        "adapter": v.adapter,
        "qid": item.id,
        "question": item.question,
        "answers": list(item.answers),
        "prediction": ans.answer,
        **answer_scores(ans.answer, item.answers),
        "prompt_tokens": ans.usage.prompt_tokens,
        "completion_tokens": ans.usage.completion_tokens,
        "retrieve_ms": ans.timings.retrieve_ms,
        "generate_ms": ans.timings.generate_ms,
        "total_ms": ans.timings.total_ms,
        "batch_ms": round(batch_ms, 3),
        "batch_n": batch_n,
        # Rows leave a continuous batch when done: the batch generated for its longest row.
        "batch_generate_ms": round(batch_generate_ms or ans.timings.generate_ms, 3),
        "index_version": ans.index_version,
    }
    if v.sees_passages:
        rec["answer_in_context"] = answer_in_context(item.answers, [h.text for h in ans.sources])
    if v.retrieves:
        ranked = _doc_ids(ans.sources)
        rec["sources"] = ranked
        if item.gold_doc_ids:
            rec["gold_in_top_k"] = float(bool(set(item.gold_doc_ids) & set(ranked)))
    return rec


def retrieval_variant(retriever: str | None) -> str:
    """The pseudo-variant of a retriever's retrieval records: ``retrieval[@LABEL]``."""
    return f"{RETRIEVAL}@{retriever}" if retriever else RETRIEVAL


def retrieval_record(
    item: QARecord, hits: Sequence[Hit], ks: Sequence[int], retriever: str | None = None
) -> dict[str, Any]:
    ranked = _doc_ids(hits)
    rec: dict[str, Any] = {
        "kind": "retrieval",
        "variant": retrieval_variant(retriever),
        "retriever": retriever,
        "qid": item.id,
        "ranked": ranked,
        "answer_in_context": {
            str(k): answer_in_context(item.answers, [h.text for h in hits[:k]]) for k in ks
        },
    }
    if item.gold_doc_ids:
        rec.update(retrieval_scores(ranked, item.gold_doc_ids, ks))
    return rec


def _request(v: Variant, item: QARecord, c: RunConfig) -> QueryRequest:
    contexts = None
    if v.kind == "oracle":
        if not item.context:
            raise InvalidInput(
                f"question {item.id!r} has no gold passage: the oracle mode needs SQuAD data "
                "or a 'context' field",
                field="modes",
            )
        contexts = [item.context]
    return QueryRequest(
        question=item.question,
        mode=v.pipeline_mode,  # type: ignore[arg-type]
        adapter=v.adapter,
        index=c.index_of(v) if v.retrieves else None,
        top_k=c.top_k,
        retrieval=c.retrieval,  # type: ignore[arg-type]
        max_new_tokens=c.max_new_tokens,
        contexts=contexts,
        filter=c.filter if v.retrieves and contexts is None else None,
    )


def _chunks(xs: Sequence[QARecord], n: int) -> Iterator[Sequence[QARecord]]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


# --- the run --------------------------------------------------------------------------------


def run_eval(
    config: RunConfig,
    target: Target,
    out_dir: Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) an evaluation into ``out_dir``; return the summary.

    Args:
        config: what to evaluate.
        target: the pipeline or a service.
        out_dir: the run folder; results already in it are kept and skipped.
        progress: show a tqdm bar (stderr).
        stop_after: stop after this many new answer records (tests use it to simulate an
            interruption; the summary and report are then not written, and {} is returned).
        on_batch: called with the number of answers written so far (for tests and logs).
    """
    plan = plan_run(config)  # 1. variants x questions; bad input fails before any work
    start_run_folder(out_dir, plan, target)  # 2. config.json; refuses another run's folder
    finished = answer_all(  # 3. every batch of questions in every variant -> results.jsonl
        plan,
        target,
        out_dir / RESULTS,
        desc=f"eval {out_dir.name}",
        progress=progress,
        stop_after=stop_after,
        on_batch=on_batch,
    )
    if not finished:
        return {}
    return summarize_run(out_dir, plan)  # 4. summary.json, report.md, report.html, plots


@dataclass(frozen=True)
class EvalPlan:
    """The run's variants and questions, checked."""

    config: RunConfig
    variants: list[Variant]
    items: list[QARecord]

    @property
    def retrieves(self) -> bool:
        return any(v.retrieves for v in self.variants)

    @property
    def retrievers(self) -> list[str | None]:
        """The retrievers the variants use (None: the run's index), in order."""
        return list(dict.fromkeys(v.retriever for v in self.variants if v.retrieves))


def plan_run(config: RunConfig) -> EvalPlan:
    """Check the config and pick the questions; the oracle needs every gold passage."""
    config.validate()
    items = select_items(config)
    gold = all(it.context for it in items)
    if (
        config.oracle_with_hybrid
        and not gold
        and any(v.kind == "hybrid" for v in config.variants())
    ):
        # oracle:A rides along with hybrid:A only where the data has gold passages; data
        # without them (plain QA JSONL) still evaluates what was asked, without the loss split
        log.warning(
            "no gold passage for every question: oracle:ADAPTER (the loss split) is left out"
        )
        config.oracle_with_hybrid = False
    variants = config.variants()
    if any(v.kind == "oracle" for v in variants) and not gold:
        raise InvalidInput(
            "the oracle mode needs a gold passage for every question (SQuAD data or a "
            "'context' field in the JSONL)",
            field="modes",
        )
    return EvalPlan(config, variants, items)


def start_run_folder(out_dir: Path, plan: EvalPlan, target: Target) -> None:
    """Write config.json, after checking that a folder being continued holds this same run.

    The target's fingerprint (adapter and index versions) raises early when an adapter or
    the index does not exist, and goes into config.json: answers from a retrained adapter
    or a rebuilt index must not mix with older ones.
    """
    config = plan.config
    index = (config.index or getattr(target, "default_index", None)) if plan.retrieves else None
    if config.retrievers:
        target.add_retrievers({r.index: r.embedder for r in config.retrievers.values()})
    versions = target.fingerprint([v.adapter for v in plan.variants if v.adapter], index)
    if config.retrievers:
        versions["retrievers"] = {
            label: target.fingerprint([], r.index).get("index_version")
            for label, r in config.retrievers.items()
        }
    meta = {
        **config.to_dict(),
        "dataset_sha256": file_sha256(Path(config.dataset)),
        "variants": [v.name for v in plan.variants],
        "target": target.describe(),
        "versions": versions,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(out_dir, meta)
    write_json_atomic(out_dir / CONFIG, {**meta, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})


def answer_all(
    plan: EvalPlan,
    target: Target,
    results: Path,
    *,
    desc: str = "eval",
    progress: bool = True,
    stop_after: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> bool:
    """Walk the questions in batches of ``batch_size``; per batch, first the retrieval
    records, then each variant's answers. What ``results`` already holds is skipped.

    Returns False when ``stop_after`` new answers cut the run short.
    """
    from tqdm import tqdm

    config, items, variants = plan.config, plan.items, plan.variants
    done = {(r.get("variant"), r.get("qid")) for r in read_results(results)}
    already = sum((v.name, it.id) in done for v in variants for it in items)
    writer = ResultsWriter(results)
    bar = tqdm(
        total=len(items) * len(variants),
        initial=already,
        desc=desc,
        unit="ans",
        disable=not progress,
        dynamic_ncols=True,
    )
    written = 0
    try:
        for chunk in _chunks(items, config.batch_size):
            for retriever in plan.retrievers:
                writer.write(_retrieval_records(config, target, chunk, done, retriever))
            for v in variants:
                pending = [it for it in chunk if (v.name, it.id) not in done]
                if not pending:
                    continue
                if stop_after is not None and written >= stop_after:
                    return False
                bar.set_postfix_str(v.name, refresh=False)
                writer.write(_answer_records(config, target, v, pending))
                written += len(pending)
                bar.update(len(pending))
                if on_batch is not None:
                    on_batch(written)
    finally:
        writer.close()
        bar.close()
    return True


def _retrieval_records(
    config: RunConfig,
    target: Target,
    chunk: Sequence[QARecord],
    done: set[tuple[Any, Any]],
    retriever: str | None = None,
) -> list[dict[str, Any]]:
    """The top-``retrieve_k`` ranking of each new question (for the recall@k curve)."""
    recs = []
    name = retrieval_variant(retriever)
    index = config.retrievers[retriever].index if retriever else config.index
    for it in chunk:
        if (name, it.id) in done:
            continue
        hits = target.retrieve(
            it.question, index, config.retrieve_k, config.retrieval or "", config.filter
        )
        if hits is not None:  # a target that cannot retrieve on its own (a service) gives None
            recs.append(retrieval_record(it, hits, config.recall_ks, retriever))
    return recs


def _answer_records(
    config: RunConfig, target: Target, v: Variant, pending: Sequence[QARecord]
) -> list[dict[str, Any]]:
    """Answer ``pending`` in variant ``v`` as one batch; one scored record per question."""
    t0 = time.perf_counter()
    answers = target.answer_batch([_request(v, it, config) for it in pending])
    batch_ms = (time.perf_counter() - t0) * 1000
    gen_ms = max(a.timings.generate_ms for a in answers)
    return [
        answer_record(v, it, a, batch_ms, len(pending), gen_ms)
        for it, a in zip(pending, answers, strict=True)
    ]


def summarize_run(out_dir: Path, plan: EvalPlan) -> dict[str, Any]:
    """Score every record of the run's questions; write summary.json and the report."""
    from ragtune.eval.report import write_report
    from ragtune.eval.summary import summarize

    records = read_results(out_dir / RESULTS)
    items, variants = plan.items, plan.variants
    gold = {it.id: list(it.gold_doc_ids) for it in items}
    summary = summarize(records, variants, [it.id for it in items], plan.config, gold)
    write_json_atomic(out_dir / SUMMARY, summary)
    write_report(out_dir, summary, records, items, variants)
    return summary


def _check_resume(out_dir: Path, config: dict[str, Any]) -> None:
    path = out_dir / CONFIG
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    skip = _RESUMABLE_CHANGES | {"variants", "started", "versions"}
    # a key a run folder of an older ragtune lacks reads as its default
    defaults: dict[str, Any] = {"retrievers": {}}
    diff = sorted(
        k
        for k in set(old) | set(config)
        if k not in skip and old.get(k, defaults.get(k)) != config.get(k, defaults.get(k))
    )
    ov, nv = old.get("versions") or {}, config.get("versions") or {}
    if ov.get("index_version") and ov.get("index_version") != nv.get("index_version"):
        diff.append("index version")
    oa, na = ov.get("adapters") or {}, nv.get("adapters") or {}
    diff += [f"adapter {a} (retrained)" for a in sorted(set(oa) & set(na)) if oa[a] != na[a]]
    orr, nr = ov.get("retrievers") or {}, nv.get("retrievers") or {}
    diff += [f"retriever {r} index version" for r in sorted(set(orr) & set(nr)) if orr[r] != nr[r]]
    if diff:
        raise InvalidInput(
            f"{out_dir.name} holds a run with other settings ({', '.join(diff)}): "
            "choose a new --out folder, or delete that one to start over",
            field="out",
        )
