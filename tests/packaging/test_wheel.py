"""The wheel holds one top-level name, `ragtune`, with every subpackage and its data."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO
from tests.packaging.conftest import package_folders

# What `ragtune demo`, the tuner, the report and type checkers need from an installed wheel.
PACKAGE_DATA = [
    "ragtune/py.typed",
    "ragtune/examples/experiment-demo.toml",
    "ragtune/examples/squad-mini/demo.json",
    "ragtune/tuner/data/general_text.md",
]
SUBPACKAGES = ["core", "cli", "indexer", "tuner", "service", "eval", "examples"]


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_wheel_has_one_top_level_name(wheel_file: Path) -> None:
    names = _names(wheel_file)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    dist_info = f"ragtune-{version}.dist-info"
    assert {n.split("/")[0] for n in names} == {"ragtune", dist_info}
    with zipfile.ZipFile(wheel_file) as z:
        assert z.read(f"{dist_info}/top_level.txt").decode().split() == ["ragtune"]
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert "ragtune = ragtune.cli.main:main" in entry_points


def test_wheel_ships_every_subpackage_and_its_data(wheel_file: Path) -> None:
    names = set(_names(wheel_file))
    links = package_folders()
    # every root package folder the repository links in (workflows/ too, once it exists)
    assert set(SUBPACKAGES) <= set(links)
    for sub in links:
        assert f"ragtune/{sub}/__init__.py" in names, sub
    for path in PACKAGE_DATA:
        assert path in names, path
    assert any(n.startswith("ragtune/eval/templates/") and n.endswith(".j2") for n in names)
    # exactly the files of the package folders: nothing missing (a data file with a suffix
    # the package-data globs miss), nothing extra (stale build output)
    source = {f"ragtune/{p.name}" for p in (REPO / "ragtune").iterdir() if p.is_file()}
    for sub, folder in links.items():
        for f in folder.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                source.add(f"ragtune/{sub}/{f.relative_to(folder).as_posix()}")
    assert {n for n in names if n.startswith("ragtune/")} == source
