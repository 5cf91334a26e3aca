"""The experiment TOML: what to split, index, tune and evaluate (``examples/experiment-*.toml``).

Sections: ``name``, ``description``, ``[settings]`` (ragtune settings for this experiment),
``[data]`` (the SQuAD file and its by-article split), ``[index]``, ``[adapters.<key>]`` (a
sample size and any ``ragtune tune`` option), ``[embedder]`` (optional: a sample size, the
second index's name and any ``ragtune tune-embedder`` option under ``[embedder.tune]``) and
``[eval]`` (the eval options) and ``[sweep]`` (optional: pick one adapter's recipe on a
validation split; ``workflows.sweep``). An unknown key is an error naming its section, so a
typo never silently falls back to a default.

With ``[embedder]``, the experiment tunes the embedder on its train split, builds a second
index with it, and every rag / hybrid mode of ``[eval]`` also runs on that index
(``rag@tuned``, ``hybrid:<adapter>@tuned``), side by side on the same held-out questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.core.config import Settings, read_toml, resolve_settings
from ragtune.core.errors import InvalidInput
from ragtune.eval.split import SplitSpec
from ragtune.workflows.sweep_config import SweepSpec, load_sweep

if TYPE_CHECKING:
    from ragtune.eval.runner import RunConfig

TOP_KEYS = {
    "name",
    "description",
    "settings",
    "data",
    "index",
    "adapters",
    "embedder",
    "eval",
    "sweep",
}
DATA_KEYS = {"dataset", "test_fraction", "seed", "test_groups"}
ADAPTER_KEYS = {"questions", "tune"}
EMBEDDER_KEYS = {"questions", "tune", "index"}
TUNED_RETRIEVER = "tuned"  # the eval label of the tuned embedder's index (rag@tuned)
EVAL_KEYS = {
    "modes",
    "limit",
    "sample_seed",
    "batch_size",
    "top_k",
    "retrieval",
    "max_new_tokens",
    "retrieve_k",
    "recall_ks",
    "n_boot",
}


@dataclass
class AdapterSpec:
    """One ``[adapters.<key>]`` section."""

    key: str
    questions: int | None  # sampled from the train split (None = all)
    tune: dict[str, Any]  # tuner.args.TuneArgs fields

    @property
    def raft(self) -> bool:
        return bool(self.tune.get("raft"))


@dataclass
class EmbedderSpec:
    """The ``[embedder]`` section: tune the retriever too."""

    questions: int | None  # sampled from the train split (None = all)
    tune: dict[str, Any]  # tuner.embed_args.EmbedTuneArgs fields
    index: str  # the index its embeddings go into (the run's index stays the base one)


@dataclass
class Experiment:
    """A checked experiment config; paths are absolute."""

    name: str
    source: Path
    settings: dict[str, Any]
    dataset: Path
    split: SplitSpec
    index: str
    adapters: dict[str, AdapterSpec]
    eval: dict[str, Any] = field(default_factory=dict)
    embedder: EmbedderSpec | None = None
    sweep: SweepSpec | None = None

    def adapter_name(self, key: str) -> str:
        """The registry name of adapter ``key`` (the experiment owns adapters so named)."""
        return f"{self.name}-{key}"

    @property
    def embedder_name(self) -> str:
        """The tuned-embedder registry name (the experiment owns the embedder so named)."""
        return f"{self.name}-embedder"


def _unknown(section: str, got: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise InvalidInput(f"experiment [{section}]: unknown key(s) {', '.join(extra)}")


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment TOML; paths in it are relative to the file."""
    from ragtune.core.index_store import validate_name

    path = Path(path)
    raw = read_toml(path, "experiment config")
    _unknown("top level", raw, TOP_KEYS)
    data = raw.get("data") or {}
    _unknown("data", data, DATA_KEYS)
    if "dataset" not in data:
        raise InvalidInput("experiment [data]: 'dataset' is required")
    dataset = Path(data["dataset"])
    if not dataset.is_absolute():
        dataset = (path.parent / dataset).resolve()
    groups = data.get("test_groups")
    split = SplitSpec(
        float(data.get("test_fraction", 0.25)),
        int(data.get("seed", 0)),
        tuple(groups) if groups else None,
    )
    adapters = {}
    for key, spec in (raw.get("adapters") or {}).items():
        _unknown(f"adapters.{key}", spec, ADAPTER_KEYS)
        adapters[key] = AdapterSpec(key, spec.get("questions"), dict(spec.get("tune") or {}))
    ev = dict(raw.get("eval") or {})
    _unknown("eval", ev, EVAL_KEYS)
    name = str(raw.get("name") or path.stem)
    validate_name(name, "experiment")
    index = str((raw.get("index") or {}).get("name") or f"{name}-index")
    embedder = None
    if "embedder" in raw:
        emb = raw["embedder"] or {}
        _unknown("embedder", emb, EMBEDDER_KEYS)
        embedder = EmbedderSpec(
            emb.get("questions"),
            dict(emb.get("tune") or {}),
            validate_name(str(emb.get("index") or f"{index}-tuned"), "index"),
        )
        if embedder.index == index:
            raise InvalidInput("experiment [embedder] index must differ from [index] name")
    exp = Experiment(
        name=name,
        source=path,
        settings=dict(raw.get("settings") or {}),
        dataset=dataset,
        split=split,
        index=index,
        adapters=adapters,
        eval=ev,
        embedder=embedder,
    )
    if "sweep" in raw:
        exp.sweep = load_sweep(raw["sweep"] or {}, exp)
    return exp


def experiment_settings(
    exp: Experiment, config_file: Path | None, flags: dict[str, Any]
) -> Settings:
    """defaults < settings file < env < the experiment's [settings] < command-line flags."""
    merged = {**exp.settings, **{k: v for k, v in flags.items() if v is not None}}
    return resolve_settings(config_file, merged)[0]


def eval_modes(exp: Experiment, names: dict[str, str] | None = None) -> list[str]:
    """The eval modes with adapter keys (``hybrid:raft``) turned into registry names
    (``names`` overrides some: a sweep's picked adapter)."""
    names = names or {}
    out = []
    for m in mode_list(exp):
        kind, _, key = m.strip().partition(":")
        if key:
            if key not in exp.adapters:
                raise InvalidInput(f"experiment [eval] mode {m!r}: no [adapters.{key}]")
            out.append(f"{kind}:{names.get(key) or exp.adapter_name(key)}")
        else:
            out.append(kind)
    return out


def mode_list(exp: Experiment) -> list[str]:
    """The [eval] modes as written (adapter keys, not registry names)."""
    modes = exp.eval.get("modes") or ["base", "rag", "oracle"]
    if isinstance(modes, str):
        modes = modes.split(",")
    return [str(m).strip() for m in modes]


def eval_run_config(
    exp: Experiment,
    test_file: Path,
    names: dict[str, str] | None = None,
    retrieval: dict[str, Any] | None = None,
) -> RunConfig:
    """The eval run of the experiment: every mode on all of ``test_file`` (the held-out
    articles; the split already happened, so the runner's own split is ``all``).

    ``names`` maps adapter keys to other registry names and ``retrieval`` overrides
    ``top_k`` / ``retrieval``: a sweep's picked variant, whose retrieval settings every
    retrieving mode then shares (rag is compared on the same passages)."""
    from ragtune.core.embedders import tuned_spec
    from ragtune.eval.runner import RunConfig

    retrievers = {}
    if exp.embedder is not None:  # rag@tuned, hybrid:A@tuned beside every rag / hybrid mode
        retrievers[TUNED_RETRIEVER] = {
            "index": exp.embedder.index,
            "embedder": tuned_spec(exp.embedder_name),
        }
    # [eval] values as given; everything else takes RunConfig's defaults (their one home).
    return RunConfig.from_mapping(
        {
            **exp.eval,
            **(retrieval or {}),
            "dataset": str(test_file),
            "modes": eval_modes(exp, names),
            "index": exp.index,
            "split": "all",
            "retrievers": retrievers,
        }
    )
