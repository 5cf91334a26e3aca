"""schemathesis hooks for fuzzing ragtune (the fuzz test imports this; for the CLI:
``SCHEMATHESIS_HOOKS=tests.service.fuzz_hooks st run ...``).

JSON Schema cannot tell ``1`` from ``1.0``: both are the integer 1 to it, and schemathesis
sends integers spelled as floats on purpose. ragtune decodes bodies strictly and answers
``"top_k": 1.0`` with a 400 naming the expected type (its schema descriptions say so), so
generated integers are sent spelled as integers. Nothing else about a case is changed.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# Every integer field of ragtune's request bodies (the rest are numbers, strings, ...);
# "prompt" holds integers when it is a prompt of token ids.
INTEGER_FIELDS = frozenset(
    {"top_k", "max_new_tokens", "max_tokens", "max_completion_tokens", "n", "prompt", "lora_int_id"}
)


def integers_as_integers(value: Any, key: str | None = None) -> Any:
    """``value`` with every whole float under an integer field spelled as an int."""
    if isinstance(value, dict):
        return {k: integers_as_integers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [integers_as_integers(v, key) for v in value]
    if key in INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if isinstance(case.body, (dict, list)):
        case.body = integers_as_integers(case.body)
