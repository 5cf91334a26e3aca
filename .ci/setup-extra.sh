#!/usr/bin/env bash
# Extra system packages some tests need; the CI entry calls this when it exists.
# - chromium: tests/eval/test_report.py renders report.html headless and checks its charts
#   (the test skips, saying why, where chromium is absent).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "setup-extra: no apt-get; install chromium by hand or the report rendering test skips" >&2
  fi
fi
command -v chromium >/dev/null 2>&1 && chromium --version || true
