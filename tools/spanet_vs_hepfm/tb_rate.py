"""Train events/s of a SPANet run from its TensorBoard scalars (wall time per logged step).

SPANET_PY tb_rate.py RUN_VERSION_DIR [SKIP_STEPS]
"""

import glob
import json
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
skip = int(sys.argv[2]) if len(sys.argv) > 2 else 20
acc = EventAccumulator(glob.glob(f"{run}/events.out.tfevents.*")[0])
acc.Reload()
batch = json.load(open(f"{run}/options.json"))["batch_size"]
tag = next(t for t in acc.Tags()["scalars"] if "loss" in t.lower() and "val" not in t.lower())
ev = [e for e in acc.Scalars(tag) if e.step >= skip]
steps = np.array([e.step for e in ev])
wall = np.array([e.wall_time for e in ev])
rate = (steps[-1] - steps[0]) * batch / (wall[-1] - wall[0])
print(json.dumps({"tag": tag, "batch": batch, "steps": [int(steps[0]), int(steps[-1])], "train_events_per_s": rate}))
