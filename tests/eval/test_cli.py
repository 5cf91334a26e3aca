"""`ragtune eval run | compare`, through the real CLI with the tiny models.

`ragtune eval experiment` and `ragtune demo` are tested in tests/workflows/."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ragtune.cli.main import cli, main
from ragtune.eval.runner import RunConfig


def _global(settings) -> list[str]:
    return [
        "--data-dir", str(settings.data_dir),
        "--embedder", settings.embedder,
        "--generator", settings.generator,
        "--threads", "1",
    ]  # fmt: skip


def _invoke(args: list[str]):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_eval_run_and_compare(tiny_env, tmp_path):
    settings, squad = tiny_env
    runs = []
    for limit in (4, 6):
        out = tmp_path / f"run{limit}"
        res = _invoke(
            [
                *_global(settings), "eval", "run", "--dataset", str(squad), "--index", "squad",
                "--modes", "base,rag,hybrid", "--adapter", "qa", "--limit", str(limit),
                "--max-new-tokens", "3", "--batch-size", "2", "--n-boot", "200",
                "--out", str(out), "-q",
            ]
        )  # fmt: skip
        assert "Winner on token F1" in res.output and "report:" in res.output
        assert json.loads((out / "summary.json").read_text())["n_questions"] == limit
        runs.append(out)
    res = _invoke(["eval", "compare", str(runs[0]), str(runs[1])])
    assert "hybrid:qa" in res.output and "winner on F1" in res.output


def test_eval_run_from_config_file(tiny_env, tmp_path):
    settings, squad = tiny_env
    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'[eval]\ndataset = "{squad.name}"\nmodes = "base,oracle"\nsplit = "test"\n'
        'test_fraction = 0.5\nmax_new_tokens = 2\nn_boot = 100\nout = "runs/cfg"\n'
    )
    _invoke([*_global(settings), "eval", "run", "--config", str(cfg), "--limit", "2", "-q"])
    out = tmp_path / "runs" / "cfg"
    conf = json.loads((out / "config.json").read_text())
    assert conf["dataset"] == str(squad) and conf["limit"] == 2 and conf["split"] == "test"


def test_eval_run_help_shows_the_run_config_defaults():
    res = _invoke(["eval", "run", "--help"])
    text = " ".join(res.output.split())
    d = RunConfig(dataset="")
    assert f"(default: {','.join(d.modes)})" in text
    for flag_help, value in [
        ("Which side of the seeded by-article split", d.split),
        ("Share of groups held out", d.test_fraction),
        ("Seed of the split", d.split_seed),
        ("Seed of the --limit sample", d.sample_seed),
        ("Questions generated together", d.batch_size),
        ("Bootstrap resamples", d.n_boot),
    ]:
        assert f"{flag_help} (default: {value})." in text


def test_eval_config_of_the_wrong_type_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('dataset = "qa.json"\nbatch_size = "eight"\n')
    with pytest.raises(SystemExit) as e:
        main(["eval", "run", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "Traceback" not in err
    assert "error: eval setting batch_size: Input should be a valid integer" in err


def test_eval_run_filter_from_the_flag_and_the_config_file(tiny_env, tmp_path):
    settings, squad = tiny_env
    title = json.loads(squad.read_text())["data"][0]["title"]
    out = tmp_path / "filtered"
    flt = json.dumps({"title": title})
    _invoke(
        [
            *_global(settings), "eval", "run", "--dataset", str(squad), "--index", "squad",
            "--modes", "base,rag", "--limit", "4", "--max-new-tokens", "2", "--n-boot", "100",
            "--filter", flt, "--out", str(out), "-q",
        ]
    )  # fmt: skip
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    ranked = [d for r in records if r.get("kind") == "retrieval" for d in r["ranked"]]
    sources = [d for r in records if r.get("variant") == "rag" for d in r["sources"]]
    assert ranked and sources and all(d.startswith(f"{title}#p") for d in ranked + sources)
    assert json.loads((out / "config.json").read_text())["filter"] == {"title": {"eq": title}}
    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'dataset = "{squad}"\nindex = "squad"\nmodes = "rag"\nmax_new_tokens = 2\n'
        f'n_boot = 100\nfilter = {{ title = {{ in = ["{title}"] }} }}\n'
    )
    out2 = tmp_path / "from-config"
    _invoke(
        [
            *_global(settings),
            "eval",
            "run",
            "--config",
            str(cfg),
            "--limit",
            "2",
            "--out",
            str(out2),
            "-q",
        ]
    )
    assert json.loads((out2 / "config.json").read_text())["filter"] == {"title": {"in": [title]}}


def test_eval_bad_filter_is_a_clear_error(tmp_path, capsys):
    for args in (["--filter", '{"year": {"gte": "soon"}}'], ["--filter", "year>2020"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "run", "--dataset", str(tmp_path / "qa.json"), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: filter: ") and "Traceback" not in err
