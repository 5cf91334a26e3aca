"""Forgetting check: perplexity of the base and the tuned model on a fixed general-text sample.

Fine-tuning on a narrow task can erode general language ability (catastrophic forgetting).
The tuner measures perplexity on ``tuner/data/general_text.md`` (public-domain prose plus a
few plain paragraphs, see ``tuner/data/ATTRIBUTION.md``) before and after training and
records both in the adapter manifest: a tuned/base ratio well above 1 means forgetting.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

SAMPLE_PATH = Path(__file__).parent / "data" / "general_text.md"
WINDOW = 256  # tokens per forward pass: cheap on CPU, long enough for real context
MAX_TOKENS = 1024


def sample_text() -> str:
    return SAMPLE_PATH.read_text(encoding="utf-8")


def sample_id() -> str:
    return "general_text.md:" + hashlib.sha256(SAMPLE_PATH.read_bytes()).hexdigest()[:12]


def perplexity(model: Any, tokenizer: Any, text: str | None = None) -> dict[str, Any]:
    """exp(mean next-token NLL) over non-overlapping windows of the sample.

    Returns:
        {"perplexity": float, "tokens": int (predicted tokens), "sample": id}
    """
    import torch

    text = sample_text() if text is None else text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), WINDOW):
            window = ids[start : start + WINDOW]
            if len(window) < 2:
                continue
            x = torch.tensor([window], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            nll += float(loss)
            count += len(window) - 1
    if was_training:
        model.train()
    ppl = math.exp(nll / count) if count else float("nan")
    return {"perplexity": round(ppl, 4), "tokens": count, "sample": sample_id()}
