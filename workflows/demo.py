"""The demo, the README's main job: the experiment on the shipped SQuAD subset.

Builds an index over 12 Wikipedia articles, trains a closed-book QA adapter and a RAFT-style
adapter on 9 of them, evaluates base / RAG / fine-tuned / hybrid / oracle on held-out
questions from the other 3, writes the report, and says how to serve the winner. Sized to
finish in under 30 minutes on 2 CPU cores (examples/experiment-demo.toml says how).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ragtune.core.errors import InvalidInput
from ragtune.workflows.experiment import ExperimentOutcome
from ragtune.workflows.experiment_config import Experiment, load_experiment

# Shipped as package data (ragtune.examples), so the demo runs from a wheel as from a checkout.
DEMO_CONFIG = Path(str(files("ragtune.examples").joinpath("experiment-demo.toml")))


def load_demo(config: Path | None = None) -> Experiment:
    """The demo experiment: ``config`` if given, else the shipped one."""
    config = config or DEMO_CONFIG
    if not config.is_file():
        raise InvalidInput(f"experiment config not found: {config}", field="experiment")
    return load_experiment(config)


@dataclass(frozen=True)
class ServeHint:
    """The query that asks the winning mode (``ragtune serve`` answers it)."""

    mode: str
    index: str
    adapter: str | None
    embedder: str | None = None  # the winner retrieves with a tuned embedder: serve with it

    @property
    def serve(self) -> str:
        """The command that serves it."""
        return f"ragtune --embedder {self.embedder} serve" if self.embedder else "ragtune serve"

    def curl(self, url: str = "localhost:8000") -> str:
        body = f'"question": "...", "mode": "{self.mode}", "index": "{self.index}"'
        if self.adapter:
            body += f', "adapter": "{self.adapter}"'
        return f"curl -s {url}/v1/query -H 'content-type: application/json' -d '{{{body}}}'"


def serve_hint(outcome: ExperimentOutcome) -> ServeHint:
    """How to query the winner (RAG when no variant could be scored)."""
    from ragtune.core.embedders import tuned_spec

    head, _, retriever = (outcome.winner or "rag").partition("@")
    kind, _, adapter = head.partition(":")
    exp = outcome.experiment
    if retriever and exp.embedder is not None:
        return ServeHint(kind, exp.embedder.index, adapter or None, tuned_spec(exp.embedder_name))
    return ServeHint(kind, exp.index, adapter or None)
