#!/usr/bin/env bash
# The GPU check: every mocolab command on one GPU in one call (about 8 minutes of work on an
# H100/H200, two cold compiles included), one table of img/s, peak memory and PASS/FAIL/SKIP per
# row (benchmarks/gpu_check.py lists the rows), written to OUT/gpu_check.{md,json}. A failing row
# is named and the next one runs; the exit status is 1 if any row failed.
#
# Before a device session (here, once): pack the data the device machine cannot see (../shared is
# not carried; about 40 MiB), and the wheels of the extras the device's python lacks (pycocotools for
# the detect rows; gpu_check.py installs them into its work folder):
#   .venv/bin/python benchmarks/pack_data.py devdata ../shared/data .devdata
# The one call a session with a device makes (the `run` tool; its machine has torch and CUDA, and
# the working tree plus the carried .devdata; timeout_s 540 leaves a rerun within 15 minutes of
# device time only if the first fails early, so read the table before rerunning):
#   run(command="bash benchmarks/gpu_check.sh --out $OUT/gpu_check", carry=[".devdata"], timeout_s=540)
# then copy the table from OUT/gpu_check/gpu_check.md into benchmarks/RESULTS.md.
#
# On the CPU (tests/test_benchmarks.py runs this in `make test`): the same rows, tiny data and sizes,
# gloo instead of NCCL, compiles switched off (TORCH_COMPILE_DISABLE: the rows' plumbing, not inductor):
#   bash benchmarks/gpu_check.sh --dry-run --device cpu --out /tmp/gc --devdata DIR_OF_PACKS
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"
export MOCOLAB_CACHE="$WORK/cache"  # decoded-image caches: this run's, removed after
trap 'rm -rf "$WORK"' EXIT
OUT=""
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in --out) OUT="$2"; shift 2 ;; *) shift ;; esac
done
[ -n "$OUT" ] || { echo "usage: $0 --out DIR [--dry-run] [--device cpu|cuda] [--devdata DIR] [--data-dir DIR]" >&2; exit 2; }
mkdir -p "$OUT"
{ date -u; uname -a; command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | head -15
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
"$PY" "$ROOT/benchmarks/gpu_check.py" "${args[@]}" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
