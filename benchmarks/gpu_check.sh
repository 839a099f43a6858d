#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H100; with --compile use --minutes 3: the throughput
# step then compiles twice and is stopped after TP_TIMEOUT=240 s, so at worst ~8 minutes):
#   1. the GPU and the software there;
#   2. benchmarks/throughput.py on CUDA (cifar10_r18: full-width R18, batch 512);
#   3. a cifar10_r18 pretraining (bf16, channels_last, GPU augmentation) for --minutes,
#      reporting s/epoch and kNN top-1 on the full CIFAR-10 test set.
# Everything lands in --out. The data comes as one packed file (benchmarks/pack_data.py),
# since the GPU machine does not see ../shared:
#   python benchmarks/pack_data.py pack ../shared/data/cifar10 .devdata/cifar10.pack
# --dry-run does the same on the CPU with tiny sizes (checks the script, not the GPU).
# --compile adds throughput rows with run.compile=true (encoders and augmentation compiled, the
# encoders only, and the encoders with CUDA graphs: run.compile_mode=reduce-overhead) and pretrains
# with it: with CUDA graphs if their row ran with them (throughput.py fails a row that inductor
# would run without) and beat the default mode by more than 5 %, else in the default mode
# (torch.compile: compiling takes a minute or more, counted in the pretraining's time).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="" ; DATA="$ROOT/.devdata/cifar10.pack" ; MINUTES=5 ; DRY=0 ; ROWS=() ; COMPILE=false
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --compile) ROWS=(--rows limit,compiled,compiled_cudagraphs,mocolab,mocolab_compiled,compiled_eager_aug,pil)
               COMPILE=true; shift ;;
    *) echo "usage: $0 --out DIR [--data PACK|DIR] [--minutes M] [--dry-run] [--compile]" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "gpu_check: --out DIR is required" >&2; exit 2; }
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && [ "$DRY" = 1 ] && PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"
export MOCOLAB_CACHE="$WORK/cache"

echo "== 1. environment" | tee "$OUT/env.txt"
{ date -u; uname -a; nvidia-smi 2>&1 | head -15
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'torchvision', torchvision.__version__); print('cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'); print('bf16', torch.cuda.is_bf16_supported() if torch.cuda.is_available() else '-')"
} >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

DIR="$DATA"
if [ -f "$DATA" ]; then
  DIR="$WORK/data"; "$PY" "$ROOT/benchmarks/pack_data.py" unpack "$DATA" "$DIR" || exit 1
fi

if [ "$DRY" = 1 ]; then
  DEV=cpu; TP=(--width 8 --batch-size 64 --limit 512 --steps 1 --rounds 1 data.workers=2)
  PT=(--budget-minutes 0.2 model.width=8 optim.batch_size=64 data.limit=1024 moco.queue_size=512 data.workers=2)
else
  DEV=cuda; TP=(--width 64 --batch-size 512 --limit 0 --steps 10 --rounds 3 data.workers=12)
  PT=(--budget-minutes "$MINUTES" data.workers=12)
fi

echo "== 2. throughput" | tee -a "$OUT/env.txt"
rm -f "$OUT/throughput.json"  # no figures from an earlier run in this folder
# bounded, so that the pretraining still runs if a compile stalls (TP_TIMEOUT seconds)
timeout -k 10 "${TP_TIMEOUT:-240}" "$PY" "$ROOT/benchmarks/throughput.py" --data "$DIR" --preset cifar10_r18 --device "$DEV" \
  --json "$OUT/throughput.json" "${ROWS[@]}" "${TP[@]}" 2>&1 | grep -v "it/s\]" | tee "$OUT/throughput.txt"
tp_rc=${PIPESTATUS[0]}
[ "$tp_rc" = 0 ] || echo "throughput.py: exit status $tp_rc (124: stopped after TP_TIMEOUT=${TP_TIMEOUT:-240} s)" | tee -a "$OUT/throughput.txt"

MODE=default
if [ "$COMPILE" = true ]; then  # CUDA graphs only where they ran (no skip) and were >5 % faster
  MODE=$("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); g, c = r.get('compiled_cudagraphs_img_s'), r.get('compiled_img_s'); print('reduce-overhead' if g and c and g > 1.05 * c else 'default')" "$OUT/throughput.json" 2>/dev/null || echo default)
fi
echo "== 3. cifar10_r18 pretraining (run.compile=$COMPILE, run.compile_mode=$MODE)"
"$PY" -m mocolab pretrain --preset cifar10_r18 --data "$DIR" --out "$WORK/r18" run.device="$DEV" \
  run.knn_every=0 run.log_every=50 run.compile="$COMPILE" run.compile_mode="$MODE" "${PT[@]}" > "$OUT/pretrain.log" 2>&1
rc=$?
tail -3 "$OUT/pretrain.log"
cp "$WORK/r18/summary.json" "$WORK/r18/metrics.jsonl" "$WORK/r18/config.yaml" "$OUT/" 2>/dev/null
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
s = json.loads((out / "summary.json").read_text())
s["seconds_per_epoch"] = s["train_seconds"] / max(s["epochs"], 1e-9)  # the training steps
# everything but the final kNN: start-up (data, compile) and the epoch-end checkpoints too
s["wall_seconds_per_epoch"] = (s["wall_seconds"] - s.get("knn_seconds", 0.0)) / max(s["epochs"], 1e-9)
(out / "gpu_check.json").write_text(json.dumps(s, indent=2))
print(f"cifar10_r18: {s['epochs']:.1f} epochs, {s['seconds_per_epoch']:.2f} s/epoch "
      f"({s['wall_seconds_per_epoch']:.2f} with start-up and checkpoints), "
      f"{s['images_per_second']:.0f} img/s, kNN top-1 {s.get('knn_top1', float('nan')):.2f}%"
      + (f", graphs run without CUDA graphs: {s['cudagraph_skips']}" if "cudagraph_skips" in s else ""))
PYEOF
rm -rf "$WORK"
exit $rc
