"""DeepSpeed across nodes: two torchrun "nodes" of one process each on this machine, over loopback.

Each node is its own ``torchrun --nnodes 2 --node-rank K`` launch (as on two hosts), meeting at a static
rendezvous on 127.0.0.1. The dataset is two stores; every rank records the training-split segments it reads.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from hepfm.generate import generate_store
from hepfm.store import open_data

pytest.importorskip("deepspeed")

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCHER = textwrap.dedent(
    """
    import atexit, hashlib, json, os, sys
    report = sys.argv[1]
    reads = []
    import hepfm.store._loader as S

    read = S._SegmentStream._read

    def spy(self, store, a, b):
        reads.append([a, b])
        return read(self, store, a, b)

    S._SegmentStream._read = spy
    import hepfm._schedule as T

    last = {}
    update = T.EMA.update

    def keep(self, model):
        update(self, model)
        last["model"] = model

    T.EMA.update = keep

    @atexit.register
    def dump():
        h = hashlib.sha256()
        for k, v in last["model"].state_dict().items():
            h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
        with open(f"{report}/rank{os.environ['RANK']}.json", "w") as f:
            json.dump({"reads": reads, "model": h.hexdigest(), "world": os.environ["WORLD_SIZE"]}, f)

    sys.argv = ["hepfm", *sys.argv[2:]]
    from hepfm.cli import main

    main()
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_each_read_disjoint_shards_and_agree(tmp_path):
    a = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 1500, tmp_path / "d" / "a.zarr", seed=1,
                       chunk_events=250)  # fmt: skip
    generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 1500, tmp_path / "d" / "b.zarr", seed=2,
                   chunk_events=250)  # fmt: skip
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    report = tmp_path / "report"
    report.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(HEPFM_PROGRESS="0", OMP_NUM_THREADS="1")
    sets = ["model.preset=tiny", "train.engine=deepspeed", "train.max_steps=null", "train.epochs=1",
            "train.batch_size=64", "train.val_every=1000", "train.val_batches=1"]  # fmt: skip
    nodes = []
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
            "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
            launcher, report, "finetune", ROOT / "tasks" / "demo_classify.yaml",
            "--data", str(tmp_path / "d" / "*.zarr"), "--out", tmp_path / "run", "--wandb", "disabled",
            *[x for s in sets for x in ("--set", s)],
        ]  # fmt: skip
        nodes.append(subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    for p in nodes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
    ranks = [json.loads((report / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world"] for r in ranks] == ["2", "2"]
    assert ranks[0]["model"] == ranks[1]["model"]  # the same weights on both nodes after the run
    ds = open_data(str(tmp_path / "d" / "*.zarr"))
    assert ds.n_events == 3000 and a.n_events == 1500
    train = {tuple(s) for s in ds.segments("train", split_spec_of(tmp_path / "run"))}
    read = [{tuple(s) for s in r["reads"]} & train for r in ranks]
    assert read[0] and read[1]
    assert not read[0] & read[1]  # each rank reads only its own shard of the training split
    assert read[0] | read[1] <= train


def split_spec_of(run):
    from hepfm.tasks import load_task

    return load_task(run / "task.yaml").split
