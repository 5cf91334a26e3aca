"""Request and response bodies (msgspec Structs), with the ranges the OpenAPI schema shows.

The static bounds here are the hard caps, enforced when a body is decoded (strictly:
``service.bodies``); ``tighten_openapi`` in ``service.openapi`` narrows the served schema to
the running settings (``max_question_chars``, ``max_new_tokens_limit``) and states the rules
across fields, which the routes and ``Pipeline.validate`` enforce with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# The same rule as core validate_name: a folder name, no "..".
NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_QUESTION_CHARS = 100_000  # hard cap; the settings' max_question_chars is usually lower
MAX_NEW_TOKENS = 4096  # Settings.max_new_tokens' own upper bound
MAX_PROMPT_IDS = 65_536  # hard cap on a token-id prompt; max_prompt_tokens is usually lower
MAX_PROMPTS = 32  # prompts in one completions request

Name = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=64)]
Question = Annotated[
    str, Meta(min_length=1, max_length=MAX_QUESTION_CHARS, description="The question to answer")
]
TopK = Annotated[int, Meta(ge=1, le=100, description="Passages retrieved into the prompt")]
NewTokens = Annotated[int, Meta(ge=1, le=MAX_NEW_TOKENS, description="Longest answer in tokens")]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0, description="0 = greedy")]
Passage = Annotated[str, Meta(max_length=20_000)]
Mode = Literal["base", "rag", "finetune", "hybrid"]
Retrieval = Literal["dense", "bm25", "hybrid"]
Filter = Annotated[
    dict[str, Any],
    Meta(
        max_length=32,
        description="Metadata filter applied before the top-k (docs/indexer.md): "
        '{"field": value, "field": {"in": [...]}, "field": {"gte": 2020, "lt": "2026-01-01"}}',
    ),
]


# --- /v1/query ------------------------------------------------------------------------------
class QueryBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One question; unset fields take the server's settings."""

    question: Question
    # None: the published decision for the index (service.decisions), else "rag"
    mode: Mode | None = None
    adapter: Name | None = None
    index: Name | None = None
    top_k: TopK | None = None
    retrieval: Retrieval | None = None
    max_new_tokens: NewTokens | None = None
    temperature: Temperature | None = None
    contexts: Annotated[list[Passage], Meta(max_length=20)] | None = None
    filter: Filter | None = None
    stream: bool = False


class Source(msgspec.Struct):
    chunk_id: str
    document: str
    score: float
    text: str


class UsageOut(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int


class TimingsOut(msgspec.Struct):
    retrieve_ms: float
    generate_ms: float
    total_ms: float


class QueryResponse(msgspec.Struct):
    answer: str
    mode: Mode
    adapter: str | None
    index: str | None
    index_version: str | None
    sources: list[Source]
    usage: UsageOut
    timings: TimingsOut
    # "stop": the answer ended (end of turn, or its first line); "length": max_new_tokens
    finish_reason: Literal["stop", "length"]
    # the published decision (its run id) that chose mode and adapter; None: the request did
    decision: str | None = None


# --- errors ---------------------------------------------------------------------------------
class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem body (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    scope: str | None = None  # 403: the scope the API key lacks (query, index:NAME, ...)
    # OpenAI-compatible routes add {"message", "type", "param", "code"} so their clients
    # show the detail instead of a bare status.
    error: dict[str, Any] | None = None


# --- adapters -------------------------------------------------------------------------------
class IndexBinding(msgspec.Struct):
    """The index a RAFT adapter's passages came from, and how much of it changed since."""

    index: str
    index_version: str
    stale: bool  # the live index is not the version it was trained on
    live_version: str | None
    changes: dict[str, Any] | None = None  # chunks added / updated / removed, and shares


class AdapterOut(msgspec.Struct):
    name: str
    loaded: bool
    method: str
    base_model: str
    created_at: str | None
    version: str | None = None
    index: IndexBinding | None = None


class AdapterStatsOut(msgspec.Struct):
    hits: int
    misses: int
    evictions: int


class AdapterList(msgspec.Struct):
    adapters: list[AdapterOut]
    loaded: list[str]
    max_loaded: int
    stats: AdapterStatsOut


class AdapterAction(msgspec.Struct):
    name: str
    loaded: bool
    loaded_adapters: list[str]
    evicted: list[str] = []


# --- health ---------------------------------------------------------------------------------
class Health(msgspec.Struct):
    status: str


class BackendOut(msgspec.Struct):
    """The generation backend as /readyz sees it (``generator_backend = "openai"``)."""

    kind: Literal["openai"]
    model: str  # the base model's id on the server
    reachable: bool
    detail: str | None = None


class DecisionHealth(msgspec.Struct):
    ok: int
    stale: int
    broken: int  # decisions that cannot be served (their requests get 409)
    broken_indexes: list[str]


class Readiness(msgspec.Struct):
    status: Literal["ready", "not ready"]
    models_loaded: bool
    default_index: str
    index_version: str | None
    detail: str | None = None
    backend: BackendOut | None = None
    decisions: DecisionHealth | None = None


# --- decisions ------------------------------------------------------------------------------
class PublishBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Publish a finished run (a folder of the server's runs folder) as an index's decision."""

    run: Annotated[str, Meta(pattern=NAME_PATTERN, max_length=64, description="The run id")]


class DecisionOut(msgspec.Struct):
    index: str
    run: str
    published_at: str
    status: Literal["ok", "stale", "broken"]
    problems: list[str]  # why it is broken
    notes: list[str]  # why it is stale
    mode: Mode
    adapter: str | None
    adapter_version: str | None  # measured
    adapter_version_now: str | None
    index_version: str  # measured
    index_version_now: str | None
    serving_index: str
    top_k: int | None
    retrieval: str | None
    winner: str
    f1: dict[str, float]  # mean, lo, hi (95% CI)
    em: float
    n: int
    runner_up: str | None
    margin: dict[str, Any] | None  # winner - runner-up on F1, paired CI
    verdict: str
    picked: dict[str, str] | None  # the sweep's pick, when the run had one
    changes: dict[str, Any] | None  # how much the index changed since it was measured
    model: str  # the OpenAI model id that asks for this decision


class DecisionList(msgspec.Struct):
    decisions: list[DecisionOut]
    unreadable: list[str] = []  # indexes whose decision file cannot be read (see the log)


class DecisionRemoved(msgspec.Struct):
    index: str
    run: str | None
    removed: bool


# --- OpenAI-compatible ----------------------------------------------------------------------
class RagtuneOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The extra ``ragtune`` field: retrieval on OpenAI-compatible routes.

    Present (and ``retrieval`` not ``"none"``) means: retrieve ``top_k`` passages from
    ``index`` and answer from them (mode ``rag``, or ``hybrid`` when ``model`` is an adapter).
    """

    retrieval: Literal["dense", "bm25", "hybrid", "none"] | None = None
    index: Name | None = None
    top_k: TopK | None = None
    # Not a retrieval option: {"ragtune": {"answer": "full"}} alone leaves retrieval off.
    answer: (
        Annotated[
            Literal["first_line", "full"],
            Meta(
                description="first_line: the answer's first line (the QA span; generation "
                "stops there); full: the whole generated text. Default: the openai_answer "
                "setting"
            ),
        ]
        | None
    ) = None
    filter: Filter | None = None


class ContentPart(msgspec.Struct, kw_only=True):
    type: Annotated[str, Meta(max_length=64)]
    text: Annotated[str, Meta(max_length=MAX_QUESTION_CHARS)] | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: (
        Annotated[str, Meta(max_length=MAX_QUESTION_CHARS)]
        | Annotated[list[ContentPart], Meta(max_length=64)]
        | None
    ) = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionBody(msgspec.Struct, kw_only=True):
    """The OpenAI chat request; fields ragtune does not use (top_p, seed, ...) are ignored.

    The question is the last user message; earlier user/assistant pairs (the last four)
    are conversation turns in ragtune's own prompt template (the one adapters are trained
    on); system and tool messages are not used.
    """

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=256)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    temperature: Temperature | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ragtune: RagtuneOptions | None = None


TokenId = Annotated[int, Meta(ge=0)]
TokenIds = Annotated[list[TokenId], Meta(min_length=1, max_length=MAX_PROMPT_IDS)]


class CompletionBody(msgspec.Struct, kw_only=True):
    """The OpenAI (legacy) completions request. Each text prompt is answered as a question;
    a prompt of token ids (a list of ints, or a list of such lists) is completed as it is,
    with no template and no retrieval (what a front ragtune sends its generation backend)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    # str | list[str] (questions) | list[int] | list[list[int]] (token ids); msgspec
    # allows one array type per union, so the list's items are a union, checked in the route
    prompt: (
        Question
        | Annotated[
            list[Question | TokenId | TokenIds], Meta(min_length=1, max_length=MAX_PROMPT_IDS)
        ]
    )
    max_tokens: NewTokens | None = None
    temperature: Temperature | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Token-id prompts only: "\n" stops generation when the first line has ended (blank
    # lines before it do not count); other stop strings are ignored.
    stop: (
        Annotated[str, Meta(max_length=64)]
        | Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=4)]
        | None
    ) = None
    ragtune: RagtuneOptions | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RagtuneInfo(msgspec.Struct):
    """ragtune's extra response field: how the answer was made, and from which passages."""

    mode: Mode
    adapter: str | None
    index: str | None
    index_version: str | None
    sources: list[Source]
    timings: TimingsOut
    decision: str | None = None  # the decision (run id) that chose mode and adapter


class AssistantMessage(msgspec.Struct):
    role: Literal["assistant"]
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(msgspec.Struct):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    ragtune: RagtuneInfo | None = None


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(msgspec.Struct):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    ragtune: list[RagtuneInfo] | None = None


class ModelInfo(msgspec.Struct, omit_defaults=True):
    """ragtune's extra model-card field: what the model is and whether it is still current."""

    kind: Literal["base", "adapter", "decision"]
    version: str | None = None
    index: IndexBinding | None = None  # a RAFT adapter's index, and changes since
    decision: DecisionOut | None = None  # a decision model's figures and status


class ModelCard(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = None
    # The base model's context (vLLM's field; a front ragtune bounds its prompts by it)
    max_model_len: int | None = None
    ragtune: ModelInfo | None = None


# --- vLLM's runtime LoRA API ------------------------------------------------------------------
class LoadLoRABody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's ``LoadLoRAAdapterRequest``: register the LoRA folder ``lora_path`` as model
    ``lora_name``. A relative path is taken inside the adapter registry."""

    lora_name: Name
    lora_path: Annotated[str, Meta(min_length=1, max_length=4096)]
    load_inplace: bool = False  # replace an adapter registered under that name
    is_3d_lora_weight: bool = False  # vLLM's MoE weight layout flag: accepted, unused


class UnloadLoRABody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's ``UnloadLoRAAdapterRequest``."""

    lora_name: Name
    lora_int_id: int | None = None  # vLLM's internal id: accepted, unused


class ModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[ModelCard]


def sources_out(answer_dict: dict[str, Any]) -> list[Source]:
    return [Source(**s) for s in answer_dict["sources"]]
