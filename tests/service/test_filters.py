"""Metadata filters over HTTP: POST /v1/query ``filter`` and the OpenAI extra body's
``ragtune.filter``; a bad filter is a 400 problem naming the field and the problem."""

from __future__ import annotations

import json

import openai
import pytest

from ragtune.core.config import Settings
from ragtune.core.models import load_embedder
from ragtune.indexer.api import build_index

DOCS = [
    ("eiffel", "The Eiffel Tower is in Paris, the capital of France.", "europe", 1889),
    ("olympics", "Paris hosted the Olympic Games in 1900, 1924 and 2024.", "europe", 2024),
    ("everest", "Mount Everest is the highest mountain on Earth.", "asia", 1953),
    ("nile", "The Nile is a river in Africa.", "africa", 1900),
    ("wall", "The Great Wall of China was built over many centuries.", "asia", 1644),
]


def meta_index(settings: Settings) -> None:
    path = settings.data_dir / "meta.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"id": i, "text": t, "metadata": {"region": r, "year": y}}) + "\n"
            for i, t, r, y in DOCS
        )
    )
    build_index(settings, [path], "meta", progress=False, embedder=load_embedder(settings))


def ask(client, **body) -> tuple[int, dict]:
    r = client.post("/v1/query", json={"question": "Where is it?", "index": "meta", **body})
    return r.status_code, r.json()


def test_query_filter_restricts_the_sources(client, svc_settings):
    meta_index(svc_settings)
    status, body = ask(client, top_k=5, filter={"region": "asia"})
    assert status == 200 and {s["document"] for s in body["sources"]} == {"everest", "wall"}
    status, body = ask(
        client, top_k=5, retrieval="dense", filter={"year": {"gte": 1900, "lt": 2000}}
    )
    assert status == 200 and {s["document"] for s in body["sources"]} == {"nile", "everest"}
    status, body = ask(client, top_k=2, retrieval="bm25", filter={"region": {"in": ["africa"]}})
    assert status == 200 and [s["document"] for s in body["sources"]] in ([], ["nile"])


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"region": {"near": "asia"}}, "field 'region': unknown operator 'near'"),
        ({"regoin": "asia"}, "field 'regoin' is not a metadata field of index 'meta'"),
        ({"region": {"gte": 3}}, "field 'region': gte compares numbers"),
        ({"year": {"gte": "last year"}}, "gte needs a number or an ISO 8601 date"),
        ([1, 2], "filter: Expected `object | null`, got `array`"),
    ],
)
def test_bad_filters_are_problems_naming_them(client, svc_settings, flt, message):
    meta_index(svc_settings)
    status, body = ask(client, filter=flt)
    # bad syntax is a 400; a well-formed filter this index cannot answer is a 409
    misfit = "not a metadata field" in message or "compares numbers" in message
    assert status == (409 if misfit else 400) and message in body["detail"]
    assert body["detail"].startswith("filter: ")


def test_a_filter_without_retrieval_is_refused(client, svc_settings):
    status, body = ask(client, mode="base", filter={"region": "asia"})
    assert status == 400 and body["field"] == "filter" and "retrieves nothing" in body["detail"]


def test_openai_extra_body_filter(server, svc_settings):
    meta_index(svc_settings)
    oai = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)
    r = oai.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "Which mountain is the highest?"}],
        max_tokens=4,
        extra_body={"ragtune": {"index": "meta", "top_k": 3, "filter": {"region": "europe"}}},
    )
    assert {s["document"] for s in r.model_extra["ragtune"]["sources"]} == {"eiffel", "olympics"}
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"ragtune": {"index": "meta", "filter": {"year": {"in": 1900}}}},
        )
    assert "'in' takes a non-empty list" in str(e.value)
    assert "ragtune.filter" in json.dumps(e.value.body)
