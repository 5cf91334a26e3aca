"""What the runner asks questions of: the in-process pipeline, or a running service by URL.

Both answer a batch of ``QueryRequest``s with ``core.types.Answer``s, so the runner does not
care which it talks to. The pipeline target runs exactly the code the service runs; the HTTP
target measures what users get, HTTP and the service's batching included.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ragtune.core.errors import RagtuneError
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.core.types import Answer, Hit, Timings, Usage


class Target(Protocol):
    def answer_batch(self, requests: Sequence[QueryRequest]) -> list[Answer]: ...

    def retrieve(
        self,
        question: str,
        index: str | None,
        k: int,
        method: str,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit] | None:
        """Top-k hits (among chunks passing ``filter``), or None when the target cannot
        retrieve on its own."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def fingerprint(self, adapters: Sequence[str], index: str | None) -> dict[str, Any]:
        """What the answers depend on beyond the config (adapter and index versions); raises
        early when an adapter or the index does not exist."""
        ...

    def add_retrievers(self, index_embedders: Mapping[str, str]) -> None:
        """Search each of these indexes with its own embedder spec (extra retrievers)."""
        ...


class PipelineTarget:
    """The in-process pipeline (models load on the first batch)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    @property
    def default_index(self) -> str:
        return self.pipeline.settings.default_index

    def answer_batch(self, requests: Sequence[QueryRequest]) -> list[Answer]:
        return self.pipeline.answer_batch(list(requests))

    def retrieve(
        self,
        question: str,
        index: str | None,
        k: int,
        method: str,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit] | None:
        return self.pipeline.retrieve(question, index, k, method, filter)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        s = self.pipeline.settings
        # Everything in the settings that changes an answer (the defaults a request inherits).
        out = {
            "kind": "pipeline",
            "generator": s.generator,
            "embedder": s.embedder,
            "max_context_chars": s.max_context_chars,
            "top_k": s.top_k,
            "retrieval": s.retrieval,
            "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature,
        }
        if s.generator_backend != "local":  # where the generation ran (a server's model)
            out |= {
                "generator_backend": s.generator_backend,
                "generator_url": s.generator_url,
                "generator_model": s.generator_model or None,
            }
        return out

    def add_retrievers(self, index_embedders: Mapping[str, str]) -> None:
        self.pipeline.index_embedders.update(index_embedders)

    def fingerprint(self, adapters: Sequence[str], index: str | None) -> dict[str, Any]:
        from ragtune.core.index_store import read_manifest
        from ragtune.core.registry import get_adapter

        s = self.pipeline.settings
        out: dict[str, Any] = {
            "adapters": {a: get_adapter(s, a).version for a in sorted(set(adapters))}
        }
        if index is not None:
            out["index_version"] = read_manifest(s, index).version
        return out


class HttpTarget:
    """A running ragtune service: POST {url}/v1/query, one request per question.

    A batch is sent concurrently, so the service's scheduler can batch them as it would
    batch real users. Transient failures (connection errors, 503) are retried with backoff.
    """

    def __init__(
        self, url: str, api_key: str | None = None, timeout_s: float = 300.0, retries: int = 3
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self.retries = retries

    def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """The response body and this request's own wall time in ms (queueing included)."""
        import httpx

        t0 = time.perf_counter()
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                r = self.client.post("/v1/query", json=body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RagtuneError(f"cannot reach {self.url}: {e}") from e
            else:
                if r.status_code in (502, 503, 504) and attempt < self.retries:
                    pass  # overloaded or restarting: wait and retry
                elif r.status_code >= 400:
                    raise RagtuneError(_problem(r))
                else:
                    return r.json(), (time.perf_counter() - t0) * 1000
            time.sleep(delay)
            delay *= 2
        raise RagtuneError(f"{self.url} kept failing")

    def answer_batch(self, requests: Sequence[QueryRequest]) -> list[Answer]:
        bodies = []
        for q in requests:
            body = {
                "question": q.question,
                "mode": q.mode,
                "adapter": q.adapter,
                "index": q.index,
                "top_k": q.top_k,
                "retrieval": q.retrieval,
                "max_new_tokens": q.max_new_tokens,
                "contexts": list(q.contexts) if q.contexts is not None else None,
                "filter": q.filter,
            }
            bodies.append({k: v for k, v in body.items() if v is not None})
        with ThreadPoolExecutor(max_workers=max(1, len(bodies))) as pool:
            outs = list(pool.map(self._post, bodies))
        return [_answer_from_json(q, o, ms) for q, (o, ms) in zip(requests, outs, strict=True)]

    def retrieve(
        self,
        question: str,
        index: str | None,
        k: int,
        method: str,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit] | None:
        return None  # the query API has no retrieval-only call; rag answers' sources are used

    def describe(self) -> dict[str, Any]:
        return {"kind": "http", "url": self.url}

    def fingerprint(self, adapters: Sequence[str], index: str | None) -> dict[str, Any]:
        return {}  # the service owns its adapters and indexes

    def add_retrievers(self, index_embedders: Mapping[str, str]) -> None:
        raise RagtuneError(
            "extra retrievers need the in-process pipeline: the service searches every index "
            "with its one configured embedder"
        )

    def close(self) -> None:
        self.client.close()


def _problem(r: Any) -> str:
    try:
        body = r.json()
        detail = body.get("detail") or body.get("message") or body.get("title")
    except Exception:
        detail = r.text[:200]
    return f"service answered {r.status_code}: {detail}"


def _answer_from_json(q: QueryRequest, o: dict[str, Any], wall_ms: float) -> Answer:
    sources = [
        Hit(
            chunk_id=str(s.get("chunk_id", "")),
            doc_id=str(s.get("document", s.get("doc_id", ""))),
            text=str(s.get("text", "")),
            score=float(s.get("score", 0.0)),
        )
        for s in o.get("sources") or []
    ]
    usage = o.get("usage") or {}
    t = o.get("timings") or {}
    return Answer(
        answer=str(o.get("answer", "")),
        mode=q.mode,
        adapter=q.adapter,
        index=o.get("index", q.index),
        index_version=o.get("index_version"),
        sources=sources,
        usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        timings=Timings(
            float(t.get("retrieve_ms", 0.0)),
            float(t.get("generate_ms", 0.0)),
            # the client-side wall time includes HTTP and queueing: what a user waits
            wall_ms,
        ),
    )
