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

    def curl(self, url: str = "localhost:8000") -> str:
        body = f'"question": "...", "mode": "{self.mode}", "index": "{self.index}"'
        if self.adapter:
            body += f', "adapter": "{self.adapter}"'
        return f"curl -s {url}/v1/query -H 'content-type: application/json' -d '{{{body}}}'"


def serve_hint(outcome: ExperimentOutcome) -> ServeHint:
    """How to query the winner (RAG when no variant could be scored)."""
    kind, _, adapter = (outcome.winner or "rag").partition(":")
    return ServeHint(kind, outcome.experiment.index, adapter or None)
