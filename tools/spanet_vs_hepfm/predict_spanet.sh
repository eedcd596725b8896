#!/usr/bin/env bash
# Predict with a trained SPANet run on test.h5 and print SPANet's own purity table.
#   usage: predict_spanet.sh RUN [TEST_H5] [OUTPREFIX]
#   RUN: OUTDIR of train_spanet.sh (the newest OUTDIR/spanet/version_N is used) or a version_N folder.
#   Writes OUTPREFIX.h5 (spanet.predict) and OUTPREFIX_spanet_test.txt (spanet.test);
#   default OUTPREFIX = RUN_VERSION/predict_test.
# Checkpoint: spanet.predict/test load sorted(glob(checkpoints/epoch*))[-1], i.e. the
# lexicographically last of the top-3 (not necessarily the best; epoch=9 sorts after epoch=10).
# This script instead points them at ModelCheckpoint's best_model_path (best validation_accuracy,
# read from last.ckpt) through a view folder holding only that checkpoint. CKPT=spanet keeps
# SPANet's own choice; CKPT=/path/to.ckpt uses that file.
set -euo pipefail
RUN=${1:?usage: predict_spanet.sh RUN [TEST_H5] [OUTPREFIX]}
TEST=${2:-spanet/test.h5}
PY=${SPANET_PY:-spanet-venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PYTHONWARNINGS=ignore COLUMNS=${COLUMNS:-160}
if [ ! -f "$RUN/options.json" ]; then
  RUN=$(ls -d "$RUN"/spanet/version_* | sort -t_ -k2 -n | tail -1)
fi
OUT=${3:-$RUN/predict_test}
CKPT=${CKPT:-best}
LOADDIR="$RUN"
if [ "$CKPT" != spanet ]; then
  if [ "$CKPT" = best ]; then
    CKPT=$("$PY" - "$RUN" <<'PYEOF'
import sys, glob, torch
run = sys.argv[1]
ck = torch.load(f"{run}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
best = [v.get("best_model_path") for k, v in ck.get("callbacks", {}).items() if "ModelCheckpoint" in str(k)]
best = [b for b in best if b]
print(best[0] if best else sorted(glob.glob(f"{run}/checkpoints/epoch*"))[-1])
PYEOF
)
  fi
  LOADDIR="$RUN/predict_view"
  rm -rf "$LOADDIR"; mkdir -p "$LOADDIR/checkpoints"
  ln -s "$(readlink -f "$RUN/options.json")" "$LOADDIR/options.json"
  name=$(basename "$CKPT"); case "$name" in epoch*) ;; *) name="epoch_$name";; esac
  ln -s "$(readlink -f "$CKPT")" "$LOADDIR/checkpoints/$name"
fi
echo "run $RUN; checkpoint: $(ls "$LOADDIR"/checkpoints/epoch* | sort | tail -1) -> $(readlink -f "$(ls "$LOADDIR"/checkpoints/epoch* | sort | tail -1)")"
t0=$(date +%s.%N)
"$PY" -m spanet.predict "$LOADDIR" "$OUT.h5" -tf "$TEST" 2>&1 | grep -v "Evaluating Model" || true
t1=$(date +%s.%N)
"$PY" -m spanet.test "$LOADDIR" -tf "$TEST" -l 2 > "$OUT.spanet_test.raw" 2>&1 || { cat "$OUT.spanet_test.raw"; exit 1; }
t2=$(date +%s.%N)
grep -v "Evaluating Model\|Loading:" "$OUT.spanet_test.raw" > "${OUT}_spanet_test.txt" || true
[ -f "$OUT.h5" ] || { echo "spanet.predict wrote no $OUT.h5"; exit 1; }
echo "predict wall_s=$(echo "$t1 - $t0" | bc)  test wall_s=$(echo "$t2 - $t1" | bc)"
echo "wrote $OUT.h5 and ${OUT}_spanet_test.txt"
cat "${OUT}_spanet_test.txt"
