#!/usr/bin/env bash
# Train events/s and peak RSS, hepfm small vs SPANet example config, 2 threads each, interleaved, quiet machine.
set -u
cd "${WORKDIR:-.}"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HEPFM_PROGRESS=0 WANDB_MODE=disabled PYTHONWARNINGS=ignore
uptime
for round in 1; do
  rm -rf /tmp/bench_hepfm
  /usr/bin/time -f "hepfm round $round maxrss_kb=%M wall=%e" hepfm finetune tasks/ttbar_allhad.yaml \
    --data data/ttbar_allhad_h5.zarr --out /tmp/bench_hepfm --set train.max_steps=60 --set train.val_every=1000 \
    --set train.early_stopping=null > /tmp/bench_hepfm.log 2>&1
  tail -1 /tmp/bench_hepfm.log
  python3 -c "
import json,statistics
r=[json.loads(l) for l in open('/tmp/bench_hepfm/metrics.jsonl')]
v=[d['events_per_s'] for d in r if 'events_per_s' in d and d['step']>=20]
print('hepfm round $round train events/s median', round(statistics.median(v),1), 'n', len(v))"
  rm -rf /tmp/bench_spanet
  /usr/bin/time -f "spanet round $round maxrss_kb=%M wall=%e" ${SPANET_PY:-spanet-venv/bin/python} -m spanet.train \
    -of spanet/options_bench.json --epochs 1 --gpus 0 -l /tmp/bench_spanet -n spanet > /tmp/bench_spanet.log 2>&1
  tail -1 /tmp/bench_spanet.log
  ${SPANET_PY:-spanet-venv/bin/python} spanet/tb_rate.py /tmp/bench_spanet/spanet/version_0 20
done
uptime
