"""The wheel, built once per session from a clean copy of the package folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")


def package_folders() -> dict[str, Path]:
    """ragtune/<name> -> the root folder it links to (core, cli, ..., examples)."""
    pkg = REPO / "ragtune"
    return {p.name: p.resolve() for p in sorted(pkg.iterdir()) if p.is_symlink()}


def build_wheel(dest: Path) -> Path:
    """`pip wheel` on a copy of what the wheel is made of: a build in the checkout would leave
    build/ behind, and setuptools packs stale files it finds there."""
    src = dest / "src"
    shutil.copytree(REPO / "ragtune", src / "ragtune", symlinks=True, ignore=_IGNORE)
    for target in package_folders().values():
        shutil.copytree(target, src / target.name, ignore=_IGNORE)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # No build isolation: the build backend (setuptools) is in the lock, so nothing is fetched.
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    r = subprocess.run(
        [*pip, str(src), "-w", str(dest / "dist")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (dest / "dist").glob("ragtune-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))
