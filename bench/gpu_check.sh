#!/usr/bin/env bash
# The GPU check: one prepared run of under 8 minutes on a machine with a CUDA GPU.
#
#   bench/gpu_check.sh                  # writes bench/results/gpu.txt (and prints it)
#   STEPS=2 QUESTIONS=6 ROWS=1,4 NEW_TOKENS=8 DEVICE=cpu TIME_SCALE=8 OUT=/tmp/gpu-smoke.txt \
#       bench/gpu_check.sh              # the same plumbing on a CPU, in small (a smoke run)
#
# Needs: the repository's dependencies with a CUDA build of torch (the lock pins the CPU
# build: install torch==2.13.0 from PyTorch's CUDA index first), the packaged models
# installed (scripts/setup.sh), no network. Steps, each timed:
#   1. the gpu-marked tests (tests/gpu: device=auto picks CUDA, bf16 generator, embedder on
#      the GPU, training under bf16 autocast, every mode with adapters);
#   2. the packaged models prepared (GGUF -> safetensors, once per cache);
#   3. an index over examples/squad-mini/demo.json;
#   4. a LoRA adapter of STEPS (50) optimizer steps on its questions;
#   5. QUESTIONS (60) held-out questions in 3 modes (base, rag, finetune) through `ragtune
#      eval run`;
#   6. decode tokens/s at 1 and 32 rows (bench/bench_device.py).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-50}
QUESTIONS=${QUESTIONS:-60}
ROWS=${ROWS:-1,32}
NEW_TOKENS=${NEW_TOKENS:-64}
DEVICE=${DEVICE:-auto}
TIME_SCALE=${TIME_SCALE:-1}  # multiplies every step's time limit (a CPU smoke run: 8)
OUT=${OUT:-bench/results/gpu.txt}
WORK=${WORK:-$(mktemp -d /tmp/ragtune-gpu-check.XXXXXX)}
DATA=examples/squad-mini/demo.json

export PYTHONPATH=$PWD
export RAGTUNE_DEVICE=$DEVICE RAGTUNE_DATA_DIR=$WORK/data
PY=${PYTHON:-python3}
RT=("$PY" -m ragtune)

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, print its wall time
  local name=$1 limit=$2 t0 rc=0 ms
  shift 2
  t0=$(date +%s%N)
  echo "== $name"
  timeout $((limit * TIME_SCALE)) "$@" || rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  if [ "$rc" -eq 0 ]; then
    printf '== %s: %d.%03d s\n\n' "$name" $((ms / 1000)) $((ms % 1000))
  else
    printf '== %s: FAILED (exit %d) after %d.%03d s\n\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000))
  fi
}

{
  echo "# bench/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), device=$DEVICE steps=$STEPS questions=$QUESTIONS rows=$ROWS"
  echo "uptime: $(uptime)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)"
  echo

  step "1. gpu tests" 150 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider
  step "2. models prepared" 150 "${RT[@]}" models prepare
  step "3. index" 90 "${RT[@]}" index "$DATA" --index gpu-squad
  step "4. adapter, $STEPS steps" 150 "${RT[@]}" tune --data "$DATA" --name gpu-closed \
    --max-steps "$STEPS" --batch-size 8 --val-fraction 0.05 --max-val-examples 16 --no-forgetting --quiet
  step "5. $QUESTIONS questions x 3 modes" 150 "${RT[@]}" eval run --dataset "$DATA" --index gpu-squad \
    --split test --limit "$QUESTIONS" --modes base,rag,finetune --finetune-adapter gpu-closed \
    --batch-size 16 --n-boot 200 --out "$WORK/runs/gpu" -q
  if [ -f "$WORK/runs/gpu/summary.json" ]; then
    "$PY" - "$WORK/runs/gpu/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"   {s['n_questions']} questions")
for name, v in s["variants"].items():
    print(
        f"   {name:<20} EM {v['em']['mean']:.3f}  F1 {v['f1']['mean']:.3f}  "
        f"{v['tokens_per_s']:.0f} generated tokens/s  {v['latency_ms']['p50']:.0f} ms p50"
    )
EOF
  fi
  step "6. decode tokens/s" 120 "$PY" bench/bench_device.py --device "$DEVICE" --rows "$ROWS" \
    --new-tokens "$NEW_TOKENS"
  echo "uptime: $(uptime)"
} 2>&1 | grep --line-buffered -v -e "Warning" -e "warnings.warn" | tee "$OUT"
