"""The one prompt module: training and serving render prompts with the same code.

A tuned adapter only helps if it is served the exact string it was trained on, so the
tuner builds its examples with ``render_training_example`` and the pipeline serves with
``render_prompt``; ``render_training_example(...).prompt == render_prompt(...)`` always
(tests/unit/test_prompts.py proves it on a real chat template).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = "ragtune-qa-v1"

SYSTEM_PROMPT = "You answer questions with a short phrase, not a sentence."
CLOSED_BOOK_INSTRUCTION = "Answer with a short phrase."
CONTEXT_INSTRUCTION = "Answer with a short phrase copied from the passages."
# Quote-style RAFT targets read '"<supporting sentence>" Answer: <answer>' on one line.
ANSWER_MARK = "Answer:"


@dataclass(frozen=True)
class TrainingExample:
    """A rendered example: the model sees ``prompt`` and learns to produce ``completion``."""

    prompt: str
    completion: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def format_user_message(
    question: str, contexts: Sequence[str] | None = None, max_context_chars: int | None = None
) -> str:
    """The user turn: numbered passages (if any), then the question and the instruction."""
    question = question.strip()
    if not contexts:
        return f"Question: {question}\n{CLOSED_BOOK_INSTRUCTION}"
    parts = []
    for i, ctx in enumerate(contexts, 1):
        text = " ".join(ctx.split())
        if max_context_chars and len(text) > max_context_chars:
            text = text[:max_context_chars].rsplit(" ", 1)[0] + " ..."
        parts.append(f"[{i}] {text}")
    passages = "\n".join(parts)
    return f"Passages:\n{passages}\n\nQuestion: {question}\n{CONTEXT_INSTRUCTION}"


def build_messages(
    question: str,
    contexts: Sequence[str] | None = None,
    max_context_chars: int | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> list[dict[str, str]]:
    """System turn, earlier (question, answer) turns of a conversation, then this question."""
    earlier = []
    for q, a in history:
        earlier += [
            {"role": "user", "content": format_user_message(q)},
            {"role": "assistant", "content": a.strip()},
        ]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        *earlier,
        {"role": "user", "content": format_user_message(question, contexts, max_context_chars)},
    ]


def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    # A tokenizer without a chat template (tiny test models, base models): a plain layout.
    text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
    return text + ("<assistant>\n" if generation_prompt else "")


def render_prompt(
    tokenizer: Any,
    question: str,
    contexts: Sequence[str] | None = None,
    max_context_chars: int | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """The serving prompt: everything up to where the model starts its answer.

    ``history``: earlier (question, answer) turns of a chat, oldest first (none in training
    data, so an empty history gives exactly the trained prompt)."""
    messages = build_messages(question, contexts, max_context_chars, history)
    return _apply(tokenizer, messages, True)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens the generator sees for ``text`` (as the generation engine tokenizes it)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class FittedPrompt:
    """A serving prompt cut to a token budget."""

    prompt: str
    tokens: int
    passages: int  # how many of the given passages it holds, best first (the last may be cut)


def fit_passages(
    tokenizer: Any,
    question: str,
    contexts: Sequence[str],
    budget: int,
    max_context_chars: int | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> FittedPrompt | None:
    """The serving prompt with as many passages as fit in ``budget`` tokens.

    Passages are ranked best first, so the last ones go first; if not even the first fits
    whole, it is cut shorter. None when not even a cut first passage fits (the question and
    history alone nearly fill the budget)."""

    def fit(k: int, chars: int | None = max_context_chars) -> FittedPrompt | None:
        prompt = render_prompt(tokenizer, question, contexts[:k], chars, history)
        n = count_tokens(tokenizer, prompt)
        return FittedPrompt(prompt, n, k) if n <= budget else None

    best = fit(len(contexts))
    if best is not None or not contexts:
        return best
    lo, hi = 1, len(contexts) - 1  # binary search: tokens grow with every passage
    while lo <= hi:
        mid = (lo + hi) // 2
        found = fit(mid)
        if found is not None:
            best, lo = found, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    first = " ".join(contexts[0].split())
    lo, hi = 1, min(len(first), max_context_chars or len(first)) - 1
    while lo <= hi:  # the longest cut of the best passage that fits
        mid = (lo + hi) // 2
        found = fit(1, mid)
        if found is not None:
            best, lo = found, mid + 1
        else:
            hi = mid - 1
    return best


def render_training_example(
    tokenizer: Any,
    question: str,
    answer: str,
    contexts: Sequence[str] | None = None,
    max_context_chars: int | None = None,
) -> TrainingExample:
    """A training example whose prompt part is byte-identical to ``render_prompt``."""
    prompt = render_prompt(tokenizer, question, contexts, max_context_chars)
    messages = [
        *build_messages(question, contexts, max_context_chars),
        {"role": "assistant", "content": answer.strip()},
    ]
    full = _apply(tokenizer, messages, False)
    if full.startswith(prompt):
        completion = full[len(prompt) :]
    else:
        # Some templates render the last assistant turn differently from the generation
        # prompt; keep the served prefix and end the answer with the EOS token instead.
        completion = answer.strip() + (tokenizer.eos_token or "")
    if tokenizer.eos_token and tokenizer.eos_token not in completion:
        completion += tokenizer.eos_token
    # Trailing newlines after the end-of-turn token teach nothing.
    return TrainingExample(prompt, completion.rstrip("\n"))


def shared_prefix_ids(tokenizer: Any) -> list[int]:
    """The token ids every serving prompt starts with (the system turn and the start of the
    user turn, whatever the mode): a server can compute their key/value states once."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    a = ids(render_prompt(tokenizer, "Who?"))
    b = ids(render_prompt(tokenizer, "When?", ["A passage."]))
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n]


def template_id(tokenizer: Any) -> str:
    """Identifies the prompt format (ours + the model's chat template) for adapter manifests."""
    tmpl = getattr(tokenizer, "chat_template", None) or "plain"
    return f"{PROMPT_VERSION}:{hashlib.sha256(str(tmpl).encode()).hexdigest()[:12]}"


def clean_answer(text: str) -> str:
    """The short answer in a generation: its first line (models sometimes continue past it),
    after the last ``Answer:`` mark when there is one (quote-style RAFT adapters)."""
    text = text.strip()
    first = text.split("\n", 1)[0].strip() if text else text
    i = first.rfind(ANSWER_MARK)
    return first[i + len(ANSWER_MARK) :].strip() if i >= 0 else first
