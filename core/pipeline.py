"""The answer pipeline: retrieve -> prompt -> generate. The service and the eval harness
both call this, so a comparison of modes measures exactly what users get.

Models load lazily on first use (thread-safe), so constructing a Pipeline is instant.

Prompts are held to a token budget: ``max_prompt_tokens``, and the model's context less
``max_new_tokens``. A question (or chat history) that does not fit is refused before
retrieval, with a 400 that names the field and both numbers; retrieved passages are
trimmed to fit (the lowest ranked first), never the question.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ragtune.core.adapter_catalog import AdapterCatalog
from ragtune.core.config import Settings
from ragtune.core.engines import Engine, build_engine
from ragtune.core.errors import InvalidInput
from ragtune.core.filters import parse_filter
from ragtune.core.index_store import IndexCache, LoadedIndex
from ragtune.core.models import Embedder, Generator, load_embedder
from ragtune.core.prompts import clean_answer, count_tokens, fit_passages, render_prompt
from ragtune.core.types import (
    MODES,
    RETRIEVAL_METHODS,
    Answer,
    GenRequest,
    GenResult,
    Hit,
    Mode,
    RetrievalMethod,
    Timings,
    Usage,
)

RETRIEVAL_MODES = ("rag", "hybrid")
ADAPTER_MODES = ("finetune", "hybrid")


@dataclass(frozen=True)
class QueryRequest:
    """One question and how to answer it. None fields take the settings' defaults."""

    question: str
    mode: Mode = "rag"
    adapter: str | None = None
    index: str | None = None
    top_k: int | None = None
    retrieval: RetrievalMethod | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    contexts: tuple[str, ...] | list[str] | None = None  # given passages: retrieval is skipped
    history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns of a chat
    # "first_line": the answer is the generation's first line (the QA span; generation stops
    # there); "full": the whole generated text (chat clients)
    answer: Literal["first_line", "full"] = "first_line"
    filter: dict[str, Any] | None = None  # metadata filter on retrieval (core.filters)


@dataclass
class Prepared:
    """A request after validation and retrieval, with its rendered prompt."""

    request: QueryRequest
    prompt: str
    hits: list[Hit]
    index_name: str | None
    index_version: str | None
    retrieve_ms: float
    # A raw completion (a client sent token ids): generated from these ids as they are,
    # and answered with the generated text itself (``prepare_raw``).
    prompt_ids: tuple[int, ...] | None = None
    # The rendered prompt's length in tokens, where it was counted (None: not counted).
    prompt_tokens: int | None = None


class Pipeline:
    """Retrieval + generation with per-request mode and adapter."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        generator: Generator | None = None,
        index_embedders: dict[str, str] | None = None,
        adapters: AdapterCatalog | None = None,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._generator = generator
        # The adapters requests may name: the registry, plus runtime registrations.
        self.adapters = adapters or AdapterCatalog(settings)
        self._engine: Engine | None = None
        self._indexes: IndexCache | None = None
        # index name -> the embedder spec that searches it (default: settings.embedder); the
        # eval harness puts a tuned embedder's index beside the base one this way
        self.index_embedders: dict[str, str] = dict(index_embedders or {})
        self._other_indexes: dict[str, IndexCache] = {}
        self._lock = threading.Lock()

    # --- lazy resources -------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = load_embedder(self.settings)
        return self._embedder

    @property
    def engine(self) -> Engine:
        """The generation engine: the model in this process, or a generation server
        (``generator_backend``); built on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = build_engine(self.settings, self._generator, self.adapters.get)
        return self._engine

    @property
    def indexes(self) -> IndexCache:
        if self._indexes is None:
            emb = self.embedder
            with self._lock:
                if self._indexes is None:
                    self._indexes = IndexCache(self.settings, emb)
        return self._indexes

    def index(self, name: str | None = None) -> LoadedIndex:
        name = name or self.settings.default_index
        spec = self.index_embedders.get(name, self.settings.embedder)
        if spec == self.settings.embedder:
            return self.indexes.get(name)
        with self._lock:
            cache = self._other_indexes.get(spec)
            if cache is None:
                other = self.settings.model_copy(update={"embedder": spec})
                cache = self._other_indexes[spec] = IndexCache(other, load_embedder(other))
        return cache.get(name)

    @property
    def loaded_engine(self) -> Engine | None:
        """The engine if the generator is loaded already, else None (never loads it)."""
        return self._engine

    @property
    def models_loaded(self) -> bool:
        return self._engine is not None and self._embedder is not None

    # --- validation -----------------------------------------------------------------------
    def validate(self, req: QueryRequest) -> QueryRequest:
        """Fill defaults and check every field; InvalidInput names the field at fault."""
        s = self.settings
        # Lengths are counted in tokens (check_budget); max_question_chars bounds the
        # strings of an HTTP body (the service checks it where /schema states it).
        if not isinstance(req.question, str) or not req.question.strip():
            raise InvalidInput("question must be a non-empty string", field="question")
        for q, a in req.history:
            if not (isinstance(q, str) and isinstance(a, str)):
                raise InvalidInput(
                    "history turns must be (question, answer) strings", field="history"
                )
        if req.mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
        if req.mode in ADAPTER_MODES and not req.adapter:
            raise InvalidInput(f"mode {req.mode!r} needs an adapter", field="adapter")
        if req.mode not in ADAPTER_MODES and req.adapter:
            raise InvalidInput(
                f"mode {req.mode!r} uses no adapter (use 'finetune' or 'hybrid')", field="adapter"
            )
        retrieval = req.retrieval or s.retrieval
        if retrieval not in RETRIEVAL_METHODS:
            raise InvalidInput(
                f"retrieval must be one of {', '.join(RETRIEVAL_METHODS)}", field="retrieval"
            )
        top_k = s.top_k if req.top_k is None else req.top_k
        if not 1 <= top_k <= 100:
            raise InvalidInput("top_k must be between 1 and 100", field="top_k")
        max_new = s.max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        if not 1 <= max_new <= s.max_new_tokens_limit:
            raise InvalidInput(
                f"max_new_tokens must be between 1 and {s.max_new_tokens_limit}",
                field="max_new_tokens",
            )
        if req.answer not in ("first_line", "full"):
            raise InvalidInput("answer must be 'first_line' or 'full'", field="answer")
        temp = s.temperature if req.temperature is None else req.temperature
        if not 0.0 <= temp <= 2.0:
            raise InvalidInput("temperature must be between 0 and 2", field="temperature")
        flt = parse_filter(req.filter)  # the syntax; the fields are checked against the index
        if flt is not None and (req.mode not in RETRIEVAL_MODES or req.contexts is not None):
            raise InvalidInput(
                "filter applies to retrieval, and this request retrieves nothing "
                f"(mode {req.mode!r}{', passages given' if req.contexts is not None else ''})",
                field="filter",
            )
        return replace(
            req,
            question=req.question.strip(),
            retrieval=retrieval,
            top_k=top_k,
            max_new_tokens=max_new,
            temperature=temp,
            index=req.index or (s.default_index if req.mode in RETRIEVAL_MODES else None),
            filter=flt.to_json() if flt is not None else None,
        )

    # --- retrieval ------------------------------------------------------------------------
    def retrieve(
        self,
        question: str,
        index: str | None = None,
        k: int | None = None,
        method: RetrievalMethod | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """The top-k hits for one question (the eval harness uses this for recall@k curves)."""
        return self.index(index).search(
            question, k or self.settings.top_k, method or self.settings.retrieval, filter
        )

    def prepare(self, requests: Sequence[QueryRequest]) -> list[Prepared]:
        """Validate, retrieve (batched per index and method) and render prompts."""
        reqs = [self.validate(r) for r in requests]
        for r in reqs:  # before any retrieval or generation: milliseconds
            self.check_budget(r)
        out: list[Prepared | None] = [None] * len(reqs)
        groups: dict[tuple[str, int, str, str], list[int]] = {}
        for i, r in enumerate(reqs):
            if r.mode in RETRIEVAL_MODES and r.contexts is None:
                flt = json.dumps(r.filter, sort_keys=True) if r.filter else ""
                key = (r.index or "", r.top_k or 0, r.retrieval or "", flt)
                groups.setdefault(key, []).append(i)
            else:
                out[i] = self._prepared(r, list(_given_hits(r.contexts)), None, None, 0.0)
        for (name, k, method, _), idx in groups.items():
            t0 = time.perf_counter()
            index = self.index(name)
            questions = [reqs[i].question for i in idx]
            hits = index.search_batch(questions, k, method, reqs[idx[0]].filter)  # type: ignore[arg-type]
            ms = (time.perf_counter() - t0) * 1000 / len(idx)
            for i, h in zip(idx, hits, strict=True):
                out[i] = self._prepared(reqs[i], h, index.name, index.version, ms)
        return [p for p in out if p is not None]

    def _prepared(
        self, r: QueryRequest, hits: list[Hit], name: str | None, version: str | None, ms: float
    ) -> Prepared:
        tok = self.engine.tokenizer
        contexts = [h.text for h in hits] if r.mode in RETRIEVAL_MODES else []
        if not contexts:
            prompt = render_prompt(
                tok, r.question, None, self.settings.max_context_chars, r.history
            )
            return Prepared(r, prompt, [], name, version, ms)
        budget = self.prompt_budget(r.max_new_tokens or self.settings.max_new_tokens)
        fitted = fit_passages(
            tok, r.question, contexts, budget, self.settings.max_context_chars, r.history
        )
        if fitted is None:
            raise InvalidInput(
                f"the question leaves no room for passages: the prompt with the shortest "
                f"passage is more than {budget} tokens",
                field="question",
            )
        passages = hits[: fitted.passages]
        return Prepared(r, fitted.prompt, passages, name, version, ms, prompt_tokens=fitted.tokens)

    # --- token budget ---------------------------------------------------------------------
    def prompt_budget(self, max_new_tokens: int) -> int:
        """The most prompt tokens a request may use: ``max_prompt_tokens``, and the model's
        context less the answer's room."""
        ctx = self.engine.gen.context_length
        limit = self.settings.max_prompt_tokens
        return limit if ctx is None else min(limit, ctx - max_new_tokens)

    def check_budget(self, r: QueryRequest) -> None:
        """Refuse (400) a question, or chat history, whose prompt does not fit the budget
        even without passages; the message names the field and both numbers."""
        tok, max_new = self.engine.tokenizer, r.max_new_tokens or self.settings.max_new_tokens
        alone = count_tokens(tok, render_prompt(tok, r.question))
        self._check_tokens(alone, max_new, "question", "the prompt")
        if r.history:
            n = count_tokens(tok, render_prompt(tok, r.question, history=r.history))
            self._check_tokens(n, max_new, "history", "the prompt with the conversation history")

    def _check_tokens(self, tokens: int, max_new: int, field: str, what: str) -> None:
        limit = self.settings.max_prompt_tokens
        if tokens > limit:
            raise InvalidInput(
                f"{what} is {tokens} tokens, more than max_prompt_tokens ({limit})", field=field
            )
        ctx = self.engine.gen.context_length
        if ctx is None or tokens + max_new <= ctx:
            return
        if tokens >= ctx:
            raise InvalidInput(
                f"{what} is {tokens} tokens, more than the model's context of {ctx} tokens",
                field=field,
            )
        raise InvalidInput(
            f"{what} is {tokens} tokens and max_new_tokens is {max_new}: together more than "
            f"the model's context of {ctx} tokens (at most {ctx - tokens} new tokens fit)",
            field="max_new_tokens",
        )

    # --- raw completions --------------------------------------------------------------------
    def prepare_raw(
        self,
        ids: Sequence[int],
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop_at_newline: bool = False,
    ) -> Prepared:
        """A completion of a prompt given as token ids, used as they are (no template, no
        retrieval): what a front ragtune sends its generation backend. The ids must be the
        model's and fit the token budget (400 naming ``prompt`` otherwise)."""
        s = self.settings
        req = self.validate(
            QueryRequest(
                question="(token ids)",
                mode="finetune" if adapter else "base",
                adapter=adapter,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                answer="first_line" if stop_at_newline else "full",
            )
        )
        if not ids:
            raise InvalidInput("prompt must hold at least one token id", field="prompt")
        vocab = self.engine.gen.vocab_size
        bad = next((i for i in ids if i < 0 or (vocab is not None and i >= vocab)), None)
        if bad is not None:
            raise InvalidInput(
                f"prompt: token id {bad} is not in the model's vocabulary (ids 0 to "
                f"{(vocab or 1) - 1})",
                field="prompt",
            )
        self._check_tokens(len(ids), req.max_new_tokens or s.max_new_tokens, "prompt", "the prompt")
        prompt = self.engine.tokenizer.decode(list(ids))
        return Prepared(
            req, prompt, [], None, None, 0.0, prompt_ids=tuple(ids), prompt_tokens=len(ids)
        )

    # --- answering ------------------------------------------------------------------------
    def answer_batch(self, requests: Sequence[QueryRequest]) -> list[Answer]:
        """Answer several requests, generating them together (mixed adapters allowed)."""
        if not requests:
            return []
        t0 = time.perf_counter()
        prepared = self.prepare(requests)
        return self.generate(prepared, started=t0)

    def generate(self, prepared: Sequence[Prepared], started: float | None = None) -> list[Answer]:
        """Generate for already-prepared requests, together."""
        t0 = started or time.perf_counter()
        gens = self.engine.generate_batch([self.gen_request(p) for p in prepared])
        return [self.finish(p, g, t0) for p, g in zip(prepared, gens, strict=True)]

    def gen_request(self, p: Prepared) -> GenRequest:
        """What the generation engine needs for one prepared request."""
        r = p.request
        return GenRequest(
            p.prompt,
            r.adapter,
            r.max_new_tokens or self.settings.max_new_tokens,
            r.temperature or 0.0,
            stop_at_newline=r.answer == "first_line",
            prompt_ids=p.prompt_ids,
        )

    def finish(self, p: Prepared, g: GenResult, started: float) -> Answer:
        """The Answer for a generated row (``started``: perf_counter when the request came)."""
        total = (time.perf_counter() - started) * 1000
        if p.prompt_ids is not None:  # a raw completion: the generated text itself
            text = first_line(g.text) if p.request.answer == "first_line" else g.text
        elif p.request.answer == "first_line":
            text = clean_answer(g.text)
        else:
            text = g.text.strip()
        answer = _answer(p, text, g.prompt_tokens, g.completion_tokens, g.generate_ms, total)
        answer.finish_reason = g.finish_reason
        return answer

    def answer(self, request: QueryRequest) -> Answer:
        return self.answer_batch([request])[0]

    def stream(self, request: QueryRequest) -> Iterator[str | Answer]:
        """Yield answer text pieces as generated, then the final Answer (with sources)."""
        t0 = time.perf_counter()
        p = self.prepare([request])[0]
        for item in self.engine.stream(self.gen_request(p)):
            yield item if isinstance(item, str) else self.finish(p, item, t0)

    def status(self) -> dict[str, Any]:
        return {
            "models_loaded": self.models_loaded,
            "indexes": self._indexes.loaded() if self._indexes else {},
            "adapters": self._engine.loaded_adapters() if self._engine else [],
        }

    def close(self) -> None:
        """Let go of what the engine holds open (a generation server's connections)."""
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()


def first_line(text: str) -> str:
    """``text`` up to the end of its first line (leading blank lines do not count), as
    generation stops there (``GenRequest.stop_at_newline``)."""
    body = text.lstrip()
    end = body.find("\n")
    return text if end < 0 else text[: len(text) - len(body) + end]


def _given_hits(contexts: Sequence[str] | None) -> Iterator[Hit]:
    for i, text in enumerate(contexts or ()):
        yield Hit(chunk_id=f"given#{i}", doc_id=f"given#{i}", text=text, score=1.0)


def _answer(
    p: Prepared,
    text: str,
    prompt_tokens: int,
    completion_tokens: int,
    gen_ms: float,
    total_ms: float,
) -> Answer:
    r = p.request
    return Answer(
        answer=text,
        mode=r.mode,
        adapter=r.adapter,
        index=p.index_name,
        index_version=p.index_version,
        sources=p.hits,
        usage=Usage(prompt_tokens, completion_tokens),
        timings=Timings(round(p.retrieve_ms, 3), round(gen_ms, 3), round(total_ms, 3)),
        prompt=p.prompt,
    )
