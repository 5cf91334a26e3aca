"""The served OpenAPI document says exactly what the service accepts and answers.

Litestar derives the schema from the msgspec Structs in ``service.schemas``, but it shows the
static hard caps rather than the running settings, drops the bounds of union members
(``prompt``, message ``content``, ``contexts`` items), does not mark Structs that refuse
unknown fields, cannot state rules across fields, and declares one media type per response.
``tighten_openapi`` patches each of those in, so that a client (or schemathesis) that follows
the schema never meets a 400 the schema did not announce:

- lengths and ranges from the running settings (``max_question_chars``,
  ``max_new_tokens_limit``); a question must hold a non-space character;
- ``additionalProperties: false`` on bodies that refuse unknown fields;
- cross-field rules: modes ``finetune``/``hybrid`` need an ``adapter`` and ``base``/``rag``
  take none; a chat needs a user message with text; a stream takes a single prompt;
- ``text/event-stream`` beside ``application/json`` for the answering routes' 200;
- the body size limit (413) in each request body's description.

What JSON Schema cannot say is stated in descriptions: the whole body's size, and the token
budget of the rendered prompt (``max_prompt_tokens`` and the model's context: 400).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.base import _normalize_key

from ragtune.core.config import Settings
from ragtune.core.filters import MAX_FIELD_CHARS, MAX_FIELDS, MAX_IN_VALUES
from ragtune.core.models import generator_vocab_size
from ragtune.service import schemas as body_types

HAS_TEXT = r"\S"  # the same rule as the pipeline's "question must be a non-empty string"


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    """An SSE ``data`` field that holds a JSON document matching ``schema``."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


# No filter: absent, null or {} (an empty filter is no filter).
NO_FILTER: dict[str, Any] = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}


def _filter_schema() -> dict[str, Any]:
    """The filter language of core.filters as JSON Schema (its syntax; whether the index has
    the fields is the index's state: 409)."""
    scalar = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    values = {"type": "array", "minItems": 1, "maxItems": MAX_IN_VALUES, "items": scalar}
    dates = {
        "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
    }

    def condition(bound: dict[str, Any]) -> dict[str, Any]:
        ops = {"eq": scalar, "in": values} | {op: bound for op in ("gt", "gte", "lt", "lte")}
        return {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": ops,
        }

    return {
        "oneOf": [
            {
                "type": "object",
                "maxProperties": MAX_FIELDS,
                "propertyNames": {"minLength": 1, "maxLength": MAX_FIELD_CHARS},
                "additionalProperties": {
                    "anyOf": [scalar, condition({"type": "number"}), condition(dates)]
                },
            },
            {"type": "null"},
        ],
        "description": "Metadata filter applied before the top-k (docs/indexer.md): "
        '{"field": value, "field": {"in": [...]}, "field": {"gte": 2020, "lt": "2026-01-01"}}. '
        "Needs retrieval (a retrieving mode, no given contexts). A field the index does not "
        "have, or a range over another kind of value, is a 409",
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


# One server-sent event (schemathesis and OpenAPI 3.2 read a text/event-stream schema per event).
_QUERY_EVENT: dict[str, Any] = {
    "description": 'With "stream": true: token events, then one answer event (or an error event)',
    "oneOf": [
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "token"},
                "data": _json_data(
                    {
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string"}},
                    }
                ),
            },
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {"event": {"const": "answer"}, "data": _json_data(_ref("QueryResponse"))},
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {"event": {"const": "error"}, "data": _json_data(_ref("Problem"))},
        },
    ],
}
_CHUNK: dict[str, Any] = {
    "type": "object",
    "anyOf": [
        {"required": ["id", "object", "created", "model", "choices"]},
        {"required": ["error"]},
    ],
    "properties": {
        "object": {"enum": ["chat.completion.chunk", "text_completion"]},
        "choices": {"type": "array"},
        "error": {"type": "object", "required": ["message", "type", "code"]},
    },
}
_OPENAI_EVENT: dict[str, Any] = {
    "description": 'With "stream": true: OpenAI chunks, then "data: [DONE]"',
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {"oneOf": [{"const": "[DONE]"}, _json_data(_CHUNK)]},
    },
}
STREAMING_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/query": _QUERY_EVENT,
    "/v1/chat/completions": _OPENAI_EVENT,
    "/v1/completions": _OPENAI_EVENT,
}


def tighten_openapi(app: Litestar, settings: Settings) -> None:
    """Patch the app's OpenAPI document to the running settings and the rules in code."""
    doc = app.openapi_schema
    components = doc.components.schemas or {}
    q, limit = settings.max_question_chars, settings.max_new_tokens_limit
    question = {"type": "string", "minLength": 1, "maxLength": q, "pattern": HAS_TEXT}
    text = {"type": "string", "maxLength": q}
    new_tokens = {"maximum": limit}
    token: dict[str, Any] = {"type": "integer", "minimum": 0}
    vocab = generator_vocab_size(settings)
    if vocab is not None:
        token["maximum"] = vocab - 1
    token_ids = {
        "type": "array",
        "minItems": 1,
        "maxItems": min(settings.max_prompt_tokens, body_types.MAX_PROMPT_IDS),
        "items": token,
    }
    stop_text = {"type": "string", "maxLength": 64}
    meta_filter = _filter_schema()
    patches: dict[str, dict[str, dict[str, Any]]] = {
        "QueryBody": {
            "question": question | {"description": "The question to answer"},
            "max_new_tokens": new_tokens,
            "temperature": {"minimum": 0.0},  # Litestar drops a zero lower bound (falsy)
            "contexts": {
                "oneOf": [
                    {
                        "type": "array",
                        "maxItems": 20,
                        "items": {"type": "string", "maxLength": 20_000},
                    },
                    {"type": "null"},
                ]
            },
            "filter": meta_filter,
        },
        "RagtuneOptions": {"filter": meta_filter},
        "ChatCompletionBody": {
            "temperature": {"minimum": 0.0},
            "max_tokens": new_tokens,
            "max_completion_tokens": new_tokens,
        },
        "ChatMessage": {
            "content": {
                "oneOf": [
                    text,
                    {
                        "type": "array",
                        "maxItems": 64,
                        "items": {"$ref": "#/components/schemas/ContentPart"},
                    },
                    {"type": "null"},
                ],
                "description": f"At most {q} characters in each text",
            }
        },
        "ContentPart": {"text": {"oneOf": [text, {"type": "null"}]}},
        "CompletionBody": {
            "temperature": {"minimum": 0.0},
            "max_tokens": new_tokens,
            "prompt": {
                "oneOf": [
                    question,
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": body_types.MAX_PROMPTS,
                        "items": question,
                    },
                    token_ids,
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": body_types.MAX_PROMPTS,
                        "items": token_ids,
                    },
                ],
                "description": "A question, or a list of questions answered as one batch; or "
                "a prompt of token ids (or a list of such prompts), completed as it is: no "
                "template, no retrieval",
            },
            "stop": {
                "oneOf": [
                    stop_text,
                    {"type": "array", "maxItems": 4, "items": stop_text},
                    {"type": "null"},
                ],
                "description": 'Token-id prompts: "\\n" ends the answer at its first line; '
                "other stop strings are ignored",
            },
        },
    }
    for name, fields in patches.items():
        schema = components.get(name)
        if schema is None or not schema.properties:
            continue
        for field, patch in fields.items():
            prop = schema.properties.get(field)
            if isinstance(prop, Schema):
                _replace(prop, patch)

    rules: dict[str, dict[str, Any]] = {
        # mode finetune/hybrid needs an adapter; base/rag takes none; no mode (the index's
        # decision, else rag) takes none either
        "QueryBody": {
            "allOf": [
                {
                    "anyOf": [
                        {
                            "required": ["mode", "adapter"],
                            "properties": {
                                "mode": {"enum": ["finetune", "hybrid"]},
                                "adapter": {"type": "string"},
                            },
                        },
                        {
                            "properties": {
                                "mode": {"enum": ["base", "rag", None]},
                                "adapter": {"type": "null"},
                            }
                        },
                    ]
                },
                {  # a filter applies to retrieval: a retrieving mode, no given passages
                    "anyOf": [
                        {"properties": {"filter": NO_FILTER}},
                        {
                            "properties": {
                                "mode": {"enum": ["rag", "hybrid"]},
                                "contexts": {"type": "null"},
                            },
                            "required": ["mode"],
                        },
                    ]
                },
            ]
        },
        "RagtuneOptions": {
            "anyOf": [
                {"properties": {"filter": NO_FILTER}},
                {"properties": {"retrieval": {"enum": ["dense", "bm25", "hybrid", None]}}},
            ]
        },
        # the question is the last user message with text
        "ChatCompletionBody": {
            "properties": {
                "messages": {
                    "contains": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "user"},
                            "content": {
                                "anyOf": [
                                    {"type": "string", "pattern": HAS_TEXT},
                                    {
                                        "type": "array",
                                        "contains": {
                                            "type": "object",
                                            "required": ["type", "text"],
                                            "properties": {
                                                "type": {"const": "text"},
                                                "text": {"type": "string", "pattern": HAS_TEXT},
                                            },
                                        },
                                    },
                                ]
                            },
                        },
                    }
                }
            }
        },
        "CompletionBody": {
            "allOf": [
                {  # a stream answers one prompt
                    "anyOf": [
                        {"properties": {"stream": {"const": False}}},
                        {
                            "properties": {
                                "prompt": {
                                    "anyOf": [
                                        {"type": "string"},
                                        {"type": "array", "maxItems": 1},
                                        {"type": "array", "items": {"type": "integer"}},
                                    ]
                                }
                            }
                        },
                    ]
                },
                {  # the ragtune field goes with text prompts
                    "anyOf": [
                        {"properties": {"ragtune": {"type": "null"}}},
                        {
                            "properties": {
                                "prompt": {
                                    "anyOf": [
                                        {"type": "string"},
                                        {"type": "array", "items": {"type": "string"}},
                                    ]
                                }
                            }
                        },
                    ]
                },
            ]
        },
    }
    for name, rule in rules.items():
        schema = components.get(name)
        if schema is None or schema.properties is None:
            continue
        extra = _schema(rule)
        if extra.properties:  # merge per-property rules into the existing properties
            for field, more in extra.properties.items():
                prop = schema.properties.get(field)
                if isinstance(prop, Schema) and isinstance(more, Schema):
                    prop.contains = more.contains
        if extra.any_of:
            schema.any_of = extra.any_of
        if extra.all_of:
            schema.all_of = extra.all_of

    for name, schema in components.items():
        struct = getattr(body_types, name, None)
        if (
            isinstance(struct, type)
            and issubclass(struct, msgspec.Struct)
            and struct.__struct_config__.forbid_unknown_fields
        ):
            schema.additional_properties = False

    for path, events in STREAMING_ROUTES.items():
        item = (doc.paths or {}).get(path)
        operation = item.post if item is not None else None
        if operation is None or not operation.responses:
            continue
        ok = operation.responses.get("200")
        content = getattr(ok, "content", None)
        if content is not None:
            content["text/event-stream"] = OpenAPIMediaType(schema=_schema(events))
        body = operation.request_body
        if body is not None and not isinstance(body, dict) and hasattr(body, "description"):
            body.description = (
                f"At most {settings.max_body_bytes} bytes (413 otherwise). The rendered "
                f"prompt must fit max_prompt_tokens ({settings.max_prompt_tokens}) and the "
                "model's context with the answer's tokens (400 otherwise); retrieved "
                "passages are trimmed to fit."
            )


# --- dict -> litestar Schema ------------------------------------------------------------------
_FIELDS = {
    f.metadata.get("alias") or _normalize_key(f.name): f.name for f in dataclasses.fields(Schema)
}
_ONE = {
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "additionalProperties",
    "contentSchema",
    "propertyNames",
}
_MANY = {"anyOf", "oneOf", "allOf", "prefixItems"}


def _schema(d: dict[str, Any]) -> Schema:
    """A litestar ``Schema`` from a JSON Schema dict (the keys litestar's Schema knows)."""
    from litestar.openapi.spec import Reference

    if "$ref" in d:
        return Reference(ref=d["$ref"])  # type: ignore[return-value]
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key == "properties":
            value = {k: _schema(v) for k, v in value.items()}
        elif key in _ONE and isinstance(value, dict):
            value = _schema(value)
        elif key in _MANY:
            value = [_schema(v) for v in value]
        elif key == "type":
            value = OpenAPIType(value)
        kwargs[_FIELDS[key]] = value
    return Schema(**kwargs)


def _replace(prop: Schema, patch: dict[str, Any]) -> None:
    """Set the patched keys on a property; a patch with ``oneOf`` or ``type`` replaces the
    property's shape (the bounds Litestar put on the union wrapper go with it)."""
    new = _schema(patch)
    if "oneOf" in patch or "type" in patch:
        for f in dataclasses.fields(Schema):
            if f.name not in ("description", "default", "title", "examples"):
                setattr(prop, f.name, None)
    for key in patch:
        setattr(prop, _FIELDS[key], getattr(new, _FIELDS[key]))


__all__ = ["tighten_openapi"]
