"""`ragtune demo` from the wheel installed in a fresh venv, run outside the repository.

The venv sees the heavy dependencies of the running environment (--system-site-packages, or a
.pth when the suite itself runs in a venv), so only the wheel is installed; the tiny test
models stand in for the packaged ones (minutes, not the demo's 27).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


def _venv_with_wheel(venv: Path, wheel: Path, env: dict[str, str]) -> Path:
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, env=env
    )
    py = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # the suite runs in a venv: its packages are not "system"
        purelib = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
        (purelib / "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return py


@pytest.mark.slow
def test_demo_from_the_installed_wheel(
    wheel_file: Path, tiny_models_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"  # the cwd: no source tree, no ./ragtune.toml
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAGTUNE_")
    }
    env["HF_HUB_OFFLINE"] = "1"
    venv = tmp_path / "venv"
    py = _venv_with_wheel(venv, wheel_file, env)

    where = subprocess.run(
        [str(py), "-c", "import ragtune.cli.main, ragtune.examples as e; print(e.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    installed = Path(where.stdout.strip()).resolve()
    assert installed.is_relative_to(venv.resolve()), installed
    assert not installed.is_relative_to(REPO)

    models = shutil.copytree(tiny_models_dir, tmp_path / "models")
    data = tmp_path / "data"
    argv = [str(venv / "bin" / "ragtune"), "--data-dir", str(data), "--threads", "1"]
    argv += ["--embedder", str(models / "embedder"), "--generator", str(models / "generator")]
    run = subprocess.run(
        [*argv, "demo", "-q"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Winner on token F1" in run.stdout and "Serve the winner" in run.stdout
    report = data / "runs" / "demo" / "report.html"
    assert report.is_file() and "<html" in report.read_text()[:2000].lower()
    assert list(work.iterdir()) == []  # everything went to --data-dir
