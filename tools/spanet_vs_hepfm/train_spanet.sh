#!/usr/bin/env bash
# Train SPANet 2.1.1 on spanet/train.h5 (hepfm's train+val events; SPANet keeps the last
# (1 - train_validation_split) = 5% of it for its own validation).
#   usage: train_spanet.sh EPOCHS OUTDIR [OPTIONS_JSON]
# Run folder: OUTDIR/spanet/version_N (checkpoints/, options.json, event.yaml, tensorboard logs).
# Log: OUTDIR/train.log; wall time in OUTDIR/train_time.txt.
set -euo pipefail
EPOCHS=${1:?usage: train_spanet.sh EPOCHS OUTDIR [OPTIONS_JSON]}
OUTDIR=${2:?usage: train_spanet.sh EPOCHS OUTDIR [OPTIONS_JSON]}
OPTS=${3:-spanet/options.json}
PY=${SPANET_PY:-spanet-venv/bin/python}
mkdir -p "$OUTDIR"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PYTHONWARNINGS=ignore COLUMNS=${COLUMNS:-160}
start=$(date +%s.%N)
echo "start $(date -u +%FT%TZ) epochs=$EPOCHS options=$OPTS" | tee "$OUTDIR/train_time.txt"
set +e
"$PY" -m spanet.train -of "$OPTS" --epochs "$EPOCHS" --gpus 0 -l "$OUTDIR" -n spanet 2>&1 | tee "$OUTDIR/train.log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
echo "end $(date -u +%FT%TZ) rc=$rc wall_s=$(echo "$end - $start" | bc)" | tee -a "$OUTDIR/train_time.txt"
exit "$rc"
