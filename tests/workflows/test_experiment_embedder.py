"""The experiment with an [embedder] section, on the tiny models: the embedder is tuned on the
train split, a second index is built with it, rag and hybrid run with both retrievers side by
side on the same held-out questions, oracle:raft splits the hybrid gap; reruns reuse what
did not change and rebuild what did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.config import Settings
from ragtune.core.embedders import get_tuned_embedder
from ragtune.core.index_store import read_manifest
from ragtune.eval.runner import read_results
from ragtune.workflows.demo import serve_hint
from ragtune.workflows.experiment import ExperimentOutcome, run_experiment
from ragtune.workflows.experiment_config import load_experiment
from tests.workflows.conftest import write_experiment

EMBEDDER = "[embedder]\n[embedder.tune]\nmax_steps = {steps}\nbatch_size = 2\nval_fraction = 0.0\n"


def _config(tmp_path: Path, squad: Path, steps: int = 2) -> Path:
    path = write_experiment(tmp_path / "exp.toml", squad)
    text = path.read_text().replace("[eval]", EMBEDDER.format(steps=steps) + "[eval]")
    text = text.replace('"finetune:closed", ', "")
    path.write_text(text)
    return path


def _run(settings: Settings, config: Path, said: list[str] | None = None) -> ExperimentOutcome:
    exp = load_experiment(config)
    settings = settings.model_copy(update=exp.settings)
    say = said.append if said is not None else (lambda _m: None)
    return run_experiment(exp, settings, progress=False, say=say)


def test_tuned_retriever_side_by_side(
    tiny_settings: Settings, tmp_path: Path, tiny_squad_file
) -> None:
    out = _run(tiny_settings, _config(tmp_path, tiny_squad_file))
    s = out.state
    assert s.embedder is not None and s.tuned_index is not None and s.index is not None
    info = get_tuned_embedder(tiny_settings, "tiny-embedder")
    assert s.embedder.model_id == info.model_id and s.embedder.version == info.version
    assert info.manifest.mining is not None
    assert info.manifest.mining.index == "tiny-idx"  # mined from the base index
    assert info.manifest.mining.index_version == s.index.version
    tuned_index = read_manifest(tiny_settings, "tiny-idx-tuned")
    assert tuned_index.embedding_model == info.model_id
    assert read_manifest(tiny_settings, "tiny-idx").embedding_model == "embedder"
    assert s.tuned_index.version == tuned_index.version and s.tuned_index.chunks == 8

    names = set(out.summary["variants"])
    assert names == {
        "base",
        "rag",
        "rag@tuned",
        "hybrid:tiny-raft",
        "hybrid:tiny-raft@tuned",
        "oracle",
        "oracle:tiny-raft",
    }
    # the same held-out questions in every variant
    assert {v["n"] for v in out.summary["variants"].values()} == {4}
    recs = read_results(out.folder / "results.jsonl")
    tuned_answers = [r for r in recs if r.get("variant") == "rag@tuned"]
    assert {r["index_version"] for r in tuned_answers} == {tuned_index.version}
    assert {r["index_version"] for r in recs if r.get("variant") == "rag"} == {s.index.version}
    assert sum(r["variant"] == "retrieval@tuned" for r in recs) == 4
    assert set(out.summary["retrievers"]) == {"tuned"}
    assert out.summary["retrieval_pairs"][0]["n"] == 4
    assert {r["variant"] for r in out.summary["loss_split"]} == {
        "hybrid:tiny-raft",
        "hybrid:tiny-raft@tuned",
    }
    conf = json.loads((out.folder / "config.json").read_text())
    assert conf["retrievers"] == {
        "tuned": {"index": "tiny-idx-tuned", "embedder": "tuned:tiny-embedder"}
    }
    assert conf["versions"]["retrievers"]["tuned"] == tuned_index.version
    report = (out.folder / "report.md").read_text()
    assert "## Retrievers side by side" in report and "## Where answers are lost" in report
    assert s.eval is not None and s.eval.inputs.embedder == info.model_id
    hint = serve_hint(out)
    if out.winner and out.winner.endswith("@tuned"):
        assert hint.index == "tiny-idx-tuned" and hint.embedder == "tuned:tiny-embedder"
        assert hint.serve == "ragtune --embedder tuned:tiny-embedder serve"
    else:
        assert hint.index == "tiny-idx" and hint.embedder is None


def test_rerun_reuses_and_a_retuned_embedder_rebuilds_its_index(
    tiny_settings: Settings,
    tmp_path: Path,
    tiny_squad_file,
) -> None:
    config = _config(tmp_path, tiny_squad_file)
    first = _run(tiny_settings, config)
    said: list[str] = []
    again = _run(tiny_settings, config, said)
    assert "embedder 'tiny-embedder': already tuned for this run, reused" in said
    assert not any("evaluating afresh" in m for m in said)
    assert again.state.tuned_index == first.state.tuned_index or (
        again.state.tuned_index is not None
        and first.state.tuned_index is not None
        and again.state.tuned_index.version == first.state.tuned_index.version
    )

    config = _config(tmp_path, tiny_squad_file, steps=3)  # another recipe: tuned again
    said = []
    third = _run(tiny_settings, config, said)
    assert any(m.startswith("embedder 'tiny-embedder': tuning the retriever") for m in said)
    assert any("built by another embedder" in m and "rebuilding" in m for m in said)
    assert any("evaluating afresh" in m for m in said)
    assert third.state.embedder is not None and first.state.embedder is not None
    assert third.state.embedder.model_id != first.state.embedder.model_id
    manifest = read_manifest(tiny_settings, "tiny-idx-tuned")
    assert manifest.embedding_model == third.state.embedder.model_id
    recs = read_results(third.folder / "results.jsonl")
    versions = {r["index_version"] for r in recs if r.get("variant") == "rag@tuned"}
    assert versions == {manifest.version}  # no answer from the old index is kept


def test_embedder_section_is_checked(tmp_path: Path, tiny_squad_file) -> None:
    from ragtune.core.errors import InvalidInput

    config = _config(tmp_path, tiny_squad_file)
    config.write_text(config.read_text().replace("[embedder]\n", "[embedder]\nepochs = 2\n"))
    with pytest.raises(InvalidInput, match=r"\[embedder\]: unknown key\(s\) epochs"):
        load_experiment(config)
    config = _config(tmp_path, tiny_squad_file)
    config.write_text(
        config.read_text().replace("[embedder]\n", '[embedder]\nindex = "tiny-idx"\n')
    )
    with pytest.raises(InvalidInput, match="must differ"):
        load_experiment(config)
