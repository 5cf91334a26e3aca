"""Variants from mode lists, and `compare` between two runs."""

from __future__ import annotations

import pytest

from ragtune.core.errors import InvalidInput
from ragtune.eval.compare import compare_runs, format_comparison
from ragtune.eval.variants import Variant, expand_variants
from tests.eval.synthetic import ACCURACY, make_run


def test_expand_variants() -> None:
    vs = expand_variants(["base", "rag", "finetune", "hybrid", "oracle"], adapters=["a", "b"])
    assert [v.name for v in vs] == [
        "base",
        "rag",
        "finetune:a",
        "finetune:b",
        "hybrid:a",
        "hybrid:b",
        "oracle",
    ]
    vs = expand_variants(
        ["finetune", "hybrid", "oracle:raft"], finetune_adapters=["qa"], hybrid_adapters=["raft"]
    )
    assert [(v.name, v.pipeline_mode) for v in vs] == [
        ("finetune:qa", "finetune"),
        ("hybrid:raft", "hybrid"),
        ("oracle:raft", "hybrid"),
    ]
    assert Variant.parse("oracle").pipeline_mode == "rag"
    assert len(expand_variants(["rag", "rag"])) == 1
    with pytest.raises(InvalidInput, match="needs an adapter"):
        expand_variants(["hybrid"])
    with pytest.raises(InvalidInput, match="unknown mode"):
        expand_variants(["closedbook"])
    with pytest.raises(InvalidInput, match="takes no adapter"):
        expand_variants(["rag:x"])


def test_compare_shows_deltas_and_paired_test(tmp_path) -> None:
    make_run(tmp_path / "a", seed=0)
    better = {**ACCURACY, "rag": 0.8}
    make_run(tmp_path / "b", seed=0, accuracy=better)
    c = compare_runs(tmp_path / "a", tmp_path / "b", n_boot=1000)
    rows = {r["variant"]: r for r in c["variants"]}
    assert rows["rag"]["f1"]["delta"] > 0.3
    assert rows["rag"]["paired_f1"]["significant"]
    assert rows["base"]["f1"]["delta"] == 0.0
    text = format_comparison(c)
    assert "rag" in text and "*" in text and "winner on F1" in text


def test_compare_needs_finished_runs(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"summary\.json"):
        compare_runs(tmp_path / "empty", tmp_path / "empty")


def test_compare_says_when_the_runs_differ_in_index_or_adapter_versions(tmp_path) -> None:
    import json

    from ragtune.eval.compare import version_differences

    for name, index_v, adapter_v in (("a", "v1", "x1"), ("b", "v2", "x2"), ("c", "v1", "x1")):
        make_run(tmp_path / name, seed=0)
        conf_path = tmp_path / name / "config.json"
        conf = json.loads(conf_path.read_text()) if conf_path.is_file() else {}
        conf.update(
            index="kb",
            versions={"index_version": index_v, "adapters": {"kb-raft": adapter_v}},
        )
        conf_path.write_text(json.dumps(conf))
    c = compare_runs(tmp_path / "a", tmp_path / "b", n_boot=200)
    assert c["versions"] == [
        {"what": "index", "name": "kb", "a": "v1", "b": "v2"},
        {"what": "adapter", "name": "kb-raft", "a": "x1", "b": "x2"},
    ]
    text = format_comparison(c)
    assert "different index or adapter versions" in text
    assert "index 'kb': v1 → v2" in text and "adapter 'kb-raft': x1 → x2" in text
    same = compare_runs(tmp_path / "a", tmp_path / "c", n_boot=200)
    assert same["versions"] == [] and "same index and adapter versions" in format_comparison(same)
    # an adapter only one run used, and runs with no recorded versions (over HTTP)
    only = version_differences(
        {"versions": {"adapters": {"x": "1"}}}, {"versions": {"adapters": {}}}
    )
    assert only == [{"what": "adapter", "name": "x", "a": "1", "b": None}]
    assert version_differences({}, {}) == []
