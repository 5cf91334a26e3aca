"""(question, gold passage, hard negatives) from QA records and the live index.

Every data format the tuner reads gives ``core.qa.QARecord``s; a record's gold passage is

1. the chunk of its gold document (``doc_id``; SQuAD: its paragraph, ``"{title}#p{i}"``) in
   the index that holds the answer text (else that document's first chunk): exactly the text
   retrieval has to find;
2. else its ``context`` (a passage the data carries, e.g. a JSONL ``context`` field);
3. else none: the record cannot teach retrieval and is counted as ``no_passage``.

Hard negatives are mined from the same index: the top ``mine_depth`` hits of each training
question (by ``mine_retrieval``) minus its gold document, minus (by default) any hit that
contains the answer text, since such a passage probably answers the question too and would
teach the model to push a right answer away, and (``max_negative_ratio``) any hit the index's
embedder scores nearly as close to the question as the gold passage: the same guard without
answer text (positive-aware mining, NV-Retriever). The hardest ``hard_negatives`` remain; a
pair short of hits is filled with random passages of the index.

Validation measures retrieval itself: the held-out questions (whole groups, as the adapter
tuner's validation split) are searched among the index's passages, or a seeded sample of them
around the gold and hard-negative passages when the index is larger than ``max_val_corpus``.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragtune.core.errors import DataError
from ragtune.core.manifests import DataFile, EmbedderCounts, MiningInfo
from ragtune.core.qa import BadRecord, QARecord
from ragtune.tuner import split as splitter
from ragtune.tuner.embed_args import EmbedTuneArgs

if TYPE_CHECKING:
    from ragtune.core.index_store import LoadedIndex

MINE_BATCH = 128  # questions per search call while mining


@dataclass(frozen=True)
class Passage:
    doc_id: str
    text: str


@dataclass(frozen=True)
class Pair:
    """One training example of the ranking loss."""

    question: str
    positive: str
    negatives: tuple[str, ...]

    def texts(self) -> set[str]:
        return {self.question, self.positive, *self.negatives}


@dataclass(frozen=True)
class ValQuestion:
    question: str
    gold: tuple[str, ...]  # document ids


@dataclass
class EmbedData:
    """Everything training and validation need, plus what the manifest records."""

    train: list[Pair]
    val: list[ValQuestion]
    corpus: list[Passage]  # what validation searches
    files: list[DataFile]
    counts: EmbedderCounts
    data_hash: str
    bad: list[BadRecord] = field(default_factory=list)
    mining: MiningInfo | None = None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _contains_answer(text: str, answers: Sequence[str]) -> bool:
    t = _norm(text)
    return any(a and _norm(a) in t for a in answers)


class PassageTable:
    """The index's chunks by document id (or nothing, when there is no index)."""

    def __init__(self, index: LoadedIndex | None) -> None:
        self.index = index
        self.by_doc: dict[str, list[dict[str, Any]]] = {}
        if index is not None:
            for int_id in sorted(index.chunks):
                c = index.chunks[int_id]
                self.by_doc.setdefault(c["doc_id"], []).append(c)

    def gold(self, rec: QARecord) -> Passage | None:
        """The record's gold passage (see the module docstring), or None."""
        for doc_id in rec.gold_doc_ids:
            chunks = self.by_doc.get(doc_id)
            if chunks:
                hit = next((c for c in chunks if _contains_answer(c["text"], rec.answers)), None)
                return Passage(doc_id, (hit or chunks[0])["text"])
        if rec.context:
            doc_id = rec.doc_id or "context:" + hashlib.sha1(rec.context.encode()).hexdigest()[:12]
            return Passage(doc_id, rec.context)
        return None

    def all_passages(self) -> list[Passage]:
        return [Passage(d, c["text"]) for d, chunks in self.by_doc.items() for c in chunks]


def data_hash(files: Sequence[DataFile]) -> str:
    """Over every file's sha256, format, weight and template: the data part of a run key."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.sha256}|{f.format}|{f.weight}|{f.template_sha256}".encode())
    return h.hexdigest()


def prepare_pairs(
    args: EmbedTuneArgs,
    index: LoadedIndex | None,
    mine_method: str,
    *,
    progress: bool = False,
) -> EmbedData:
    """Load -> dedup -> split by group -> gold passages -> mine hard negatives -> val corpus."""
    from ragtune.tuner.api import load_data

    loaded = load_data(args, progress)
    examples, duplicates = loaded.examples, None
    if args.dedup:
        examples, duplicates = splitter.dedup(examples)
    table = PassageTable(index)
    with_gold = [(e, table.gold(e)) for e in examples]
    usable = [(e, p) for e, p in with_gold if p is not None]
    no_passage = len(with_gold) - len(usable)
    if not usable:
        raise DataError(
            f"none of the {len(examples)} examples has a gold passage: give SQuAD data, a "
            "doc_id that names an indexed document (--index), or a context field",
            field="data",
        )
    gold_of = {id(e): p for e, p in usable}
    train_ex, val_ex = splitter.split(
        [e for e, _ in usable], args.val_fraction, args.seed, args.group_by
    )
    groups = (
        len({splitter.group_key(e, args.group_by) for e in train_ex}),
        len({splitter.group_key(e, args.group_by) for e in val_ex}),
    )
    val_capped_to = None
    if len(val_ex) > args.max_val_examples:
        val_ex = random.Random(args.seed).sample(val_ex, args.max_val_examples)
        val_capped_to = args.max_val_examples
    if args.max_pairs is not None and len(train_ex) > args.max_pairs:
        train_ex = random.Random(args.seed + 1).sample(train_ex, args.max_pairs)

    mining = None
    negatives: list[tuple[str, ...]] = [() for _ in train_ex]
    val_negatives: list[Passage] = []
    if args.hard_negatives and index is not None:
        negatives, mining = mine(args, index, table, train_ex, gold_of, mine_method, progress)
        if len(index.chunks) > args.max_val_corpus:  # the sample keeps the hardest passages
            val_negatives = [
                Passage(doc, text)
                for found in _search(index, [e.question for e in val_ex], 3, mine_method)
                for doc, text, _ in found
            ]
    train = [
        Pair(e.question, gold_of[id(e)].text, negs)
        for e, negs in zip(train_ex, negatives, strict=True)
    ]
    val = [ValQuestion(e.question, (gold_of[id(e)].doc_id,)) for e in val_ex]
    corpus = validation_corpus(
        args, table, [gold_of[id(e)] for e in val_ex], val_negatives, [p for _, p in usable]
    )
    counts = EmbedderCounts(
        records=sum(f.records for f in loaded.files),
        bad=len(loaded.bad),
        loaded=len(loaded.examples),
        duplicates=duplicates,
        no_passage=no_passage,
        val_capped_to=val_capped_to,
        train=len(train),
        val=len(val),
        train_groups=groups[0],
        val_groups=groups[1],
    )
    return EmbedData(
        train, val, corpus, loaded.files, counts, data_hash(loaded.files), loaded.bad, mining
    )


def _search(
    index: LoadedIndex, questions: list[str], depth: int, method: str
) -> list[list[tuple[str, str, float]]]:
    """(doc id, text, score) of the top ``depth`` hits of each question, in batches."""
    out: list[list[tuple[str, str, float]]] = []
    for i in range(0, len(questions), MINE_BATCH):
        hits = index.search_batch(questions[i : i + MINE_BATCH], depth, method)  # type: ignore[arg-type]
        out += [[(h.doc_id, h.text, h.score) for h in row] for row in hits]
    return out


def similarities(index: LoadedIndex, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Cosine of each (question, passage) under the index's embedder; each text encoded once."""
    import numpy as np

    if not pairs:
        return []
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    vecs = np.asarray(index.embed(texts), dtype=np.float32)  # normalized
    row = {t: i for i, t in enumerate(texts)}
    return [float(vecs[row[q]] @ vecs[row[p]]) for q, p in pairs]


def _similar_limits(
    index: LoadedIndex,
    questions: list[str],
    golds: list[Passage],
    hits_all: list[list[tuple[str, str, float]]],
    method: str,
    ratio: float,
) -> tuple[list[float], list[list[float]]]:
    """Per question: the similarity above which a hit counts as too close to the gold passage
    (``ratio`` x the gold's), and each hit's similarity. Dense hits carry theirs (the index's
    cosine) and so does a gold passage among them; only the rest is encoded."""
    dense = method == "dense"
    gold_sim: list[float | None] = []
    needed: list[tuple[str, str]] = []
    for q, gold, hits in zip(questions, golds, hits_all, strict=True):
        found = next((s for _, t, s in hits if t == gold.text), None) if dense else None
        gold_sim.append(found)
        if found is None:
            needed.append((q, gold.text))
        if not dense:
            needed += [(q, t) for _, t, _ in hits]
    sims = iter(similarities(index, needed))
    limits: list[float] = []
    hit_sims: list[list[float]] = []
    for found, hits in zip(gold_sim, hits_all, strict=True):
        limits.append(ratio * (next(sims) if found is None else found))
        hit_sims.append([s for _, _, s in hits] if dense else [next(sims) for _ in hits])
    return limits, hit_sims


def mine(
    args: EmbedTuneArgs,
    index: LoadedIndex,
    table: PassageTable,
    train_ex: list[QARecord],
    gold_of: dict[int, Passage],
    method: str,
    progress: bool,
) -> tuple[list[tuple[str, ...]], MiningInfo]:
    """The hard negatives of each training example, and what mining found."""
    from tqdm import tqdm

    rng = random.Random(args.seed + 2)
    pool = table.all_passages()
    hits_all: list[list[tuple[str, str, float]]] = []
    questions = [e.question for e in train_ex]
    with tqdm(
        total=len(questions), desc="mining", unit="q", file=sys.stderr, disable=not progress
    ) as bar:
        for i in range(0, len(questions), MINE_BATCH):
            part = questions[i : i + MINE_BATCH]
            hits_all += _search(index, part, args.mine_depth, method)
            bar.update(len(part))
    golds = [gold_of[id(e)] for e in train_ex]
    limits: list[float] = [math.inf] * len(train_ex)
    hit_sims: list[list[float]] = [[0.0] * len(h) for h in hits_all]
    if args.max_negative_ratio:
        limits, hit_sims = _similar_limits(
            index, questions, golds, hits_all, method, args.max_negative_ratio
        )
    out: list[tuple[str, ...]] = []
    mined = filled = skipped = similar = gold_found = 0
    for e, gold, hits, limit, sims in zip(train_ex, golds, hits_all, limits, hit_sims, strict=True):
        gold_docs = set(e.gold_doc_ids) | {gold.doc_id}
        gold_found += any(doc in gold_docs for doc, _, _ in hits)
        negs: list[str] = []
        rejected = {gold.text}  # the random fill must not bring a skipped hit back
        for (doc, text, _), sim in zip(hits, sims, strict=True):
            if doc in gold_docs or text == gold.text or text in negs:
                continue
            if args.skip_answer_negatives and _contains_answer(text, e.answers):
                skipped += 1
                rejected.add(text)
                continue
            if sim > limit:
                similar += 1
                rejected.add(text)
                continue
            if len(negs) < args.hard_negatives:
                negs.append(text)
        mined += len(negs)
        tries = 0
        while len(negs) < args.hard_negatives and pool and tries < 50:
            tries += 1
            cand = rng.choice(pool)
            if cand.doc_id not in gold_docs and cand.text not in negs and cand.text not in rejected:
                negs.append(cand.text)
                filled += 1
        if len(negs) < args.hard_negatives:
            raise DataError(
                f"the index has too few passages for --hard-negatives {args.hard_negatives}",
                field="hard_negatives",
            )
        out.append(tuple(negs))
    info = MiningInfo(
        index=index.name,
        index_version=index.version,
        embedding_model=index.manifest.embedding_model,
        retrieval=method,
        depth=args.mine_depth,
        per_pair=args.hard_negatives,
        mined=mined,
        filled=filled,
        skipped_answer=skipped,
        skipped_similar=similar,
        gold_in_depth=round(gold_found / len(train_ex), 4) if train_ex else 0.0,
    )
    return out, info


def validation_corpus(
    args: EmbedTuneArgs,
    table: PassageTable,
    val_gold: list[Passage],
    val_negatives: list[Passage],
    all_gold: list[Passage],
) -> list[Passage]:
    """The passages validation searches: every indexed one (or, without an index, every gold
    passage of the data), sampled down to ``max_val_corpus`` around the validation's own."""
    every = table.all_passages() if table.index is not None else all_gold
    # one entry per (doc, text): several questions share a passage
    every = list(dict.fromkeys(every))
    if len(every) <= args.max_val_corpus:
        return every
    keep = list(dict.fromkeys([*val_gold, *val_negatives]))[: args.max_val_corpus]
    chosen = set(keep)
    rest = [p for p in every if p not in chosen]
    fill = random.Random(args.seed + 3).sample(rest, max(0, args.max_val_corpus - len(keep)))
    return keep + fill
