"""What a pretrained network already knows about the qe_ttbar b-jet pairing, before any fine-tune.

Reads the pairing of b(t) and b(tbar) directly off a pretrained run's segmentation head (EveNet's
``t`` and ``tbar`` segment classes) on the selected test events of a qe_ttbar task::

    python tools/segmentation_pairing.py runs/pretrain_tiny data/ttbar_dilepton.zarr [tasks/qe_ttbar.yaml]

For every event, the score of object n for segment class c is the largest, over the head's
queries, of P(query is class c) x mask(query, n); the two distinct jets that maximise
score_t x score_tbar are the pairing. It is scored as ``pairing/eff_matchable`` is: over the events
whose two b quarks are both matched to jets. A run pretrained with an ``assignment`` head of the
task's own resonances (t: [b], tbar: [b]) has that head's pairing printed beside it. Docs:
docs/pretraining.md, section 8.
"""

from __future__ import annotations

import sys

import numpy as np

from hepfm.evaluate import collect
from hepfm.run import Run
from hepfm.store import open_data
from hepfm.tasks import load_task, task_selection

T, TBAR = 0, 1  # segment classes of the pretraining task (tasks/pretrain.yaml)
T_B, TBAR_B = 0, 4  # slots t_b and tbar_b of the generator's assignment target


def segmentation_pairing(run: str, data: str, task_file: str = "tasks/qe_ttbar.yaml") -> dict[str, float]:
    """Pairing efficiency over matchable test events, per head that pairs, and their number ``n``."""
    task = load_task(task_file)
    model = Run(run).load_model("best", None)
    store = open_data(data, schema=model.schema)
    ev = collect(model, store, "test", task.split, selection=task_selection(task, store.schema))
    seg = ev.outputs["segmentation"]
    prob, masks = seg["class_probabilities"], seg["masks"]  # [E, Q, C+1], [E, Q, N]
    score = np.stack([(prob[:, :, c, None] * masks).max(axis=1) for c in (T, TBAR)], axis=1)  # [E, 2, N]
    jets = ev.mask.astype(bool) & (ev.objects[..., model.schema.index("is_lepton")] < 0.5)  # [E, N]
    logs = np.where(jets[:, None, :], np.log(score + 1e-12), -np.inf)
    pair = logs[:, 0, :, None] + logs[:, 1, None, :]  # [E, N, N]: b(t) = i, b(tbar) = j
    n = pair.shape[-1]
    pair[:, np.arange(n), np.arange(n)] = -np.inf
    best = pair.reshape(len(pair), -1).argmax(-1)
    truth = ev.targets["assignment"]
    matchable = (truth[:, T_B] >= 0) & (truth[:, TBAR_B] >= 0)
    picks = {"segmentation": (best // n, best % n)}
    if "assignment" in ev.outputs:  # the run's own assignment head, if it pretrained one
        assigned = ev.outputs["assignment"]["assignment"]
        picks["assignment"] = (assigned[:, T_B], assigned[:, TBAR_B])
    result = {"n": float(matchable.sum())}
    for head, (bt, btbar) in picks.items():
        right = (bt == truth[:, T_B]) & (btbar == truth[:, TBAR_B])
        result[head] = float(right[matchable].mean())
    return result


if __name__ == "__main__":
    result = segmentation_pairing(*sys.argv[1:4])
    k = result.pop("n")
    for head, eff in result.items():
        error = np.sqrt(eff * (1 - eff) / k)
        print(f"{sys.argv[1]}: pairing from the {head} head {eff:.3f} +- {error:.3f} ({k:.0f} events)")
