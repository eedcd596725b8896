"""The ``deepspeed`` engine (hepfm/_deepspeed.py) on CPU: world size 1 in this process, world size 2 under torchrun.

Every run is single-threaded (``torch.set_num_threads(1)`` here, ``OMP_NUM_THREADS=1`` under torchrun): on the
shared 2-core machines two threads per process were several times slower, and thread counts change nothing that
is asserted here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

pytest.importorskip("deepspeed")

from hepfm._errors import HepfmError  # noqa: E402
from hepfm.checkpoint import load_checkpoint, load_model  # noqa: E402
from hepfm.store import EventLoader  # noqa: E402
from hepfm.tasks import load_task  # noqa: E402
from hepfm.train import train  # noqa: E402

TASK = ROOT / "tasks" / "demo_pretrain.yaml"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _task(store, *overrides):
    return load_task(TASK, [f"dataset.params.path={store.path}", "model.preset=tiny", "train.log_every=1", *overrides])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run):
    out = {}
    for r in _records(run):
        if "train/total" in r:
            out[r["step"]] = r["train/total"]  # a resumed run overwrites the replayed steps
    return [out[s] for s in sorted(out)]


def _val(run):
    return [r["val/total"] for r in _records(run) if "val/total" in r]


def _mean(xs):
    return sum(xs) / len(xs)


def _released():
    """The engine gave back its process group and the launch variables it filled in."""
    return not torch.distributed.is_initialized() and not any(k in os.environ for k in LAUNCH_VARS)


# ---------------------------------------------------------------------------------------------
# world size 1, in this process
# ---------------------------------------------------------------------------------------------
def test_world_size_1_trains_writes_and_reloads(tmp_path, demo_store):
    assert not any(k in os.environ for k in LAUNCH_VARS)  # a plain process, no launcher
    run = tmp_path / "ds"
    result = train(
        _task(
            demo_store,
            "train.engine=deepspeed",
            "train.stages=[]",
            "train.max_steps=20",
            "train.batch_size=32",
            "train.val_every=10",
        ),
        run,
        wandb_mode="disabled",
    )
    assert _released()
    assert result.steps == 20
    losses = _train_losses(run)
    assert len(losses) == 20
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 0.15, losses  # it learns (about 1.4 -> 1.0 here)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.safetensors", "last.safetensors"]

    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert ckpt["optimizer"] is not None and ckpt["trainer"]["step"] == 20  # zero_stage 0: resumable
    model = load_model(run)  # the EMA weights of best, rebuilt from the file alone
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["ema"][key]), key
    batch = next(iter(EventLoader(demo_store, "val", 64, False)))
    with torch.no_grad():
        loss, parts, _ = model.loss(batch, ["process"])
    assert torch.isfinite(loss) and 0 < parts["process"] < 1.0


def test_world_size_1_equals_the_local_engine_across_a_stage_switch(tmp_path, demo_store):
    # The demo recipe: stage 1 trains the visible head only, stage 2 adds the process head. DeepSpeed's
    # all-reduce gives the process head zero gradients during stage 1; the engine drops them again so that
    # AdamW does not decay those weights or advance their step count (as the local engine, which never
    # touches them). With the same seed, data and noise the two engines then agree to float rounding.
    args = ("train.max_steps=16", "train.batch_size=32", "train.val_every=8")
    train(_task(demo_store, *args), tmp_path / "local", wandb_mode="disabled")
    train(_task(demo_store, "train.engine=deepspeed", *args), tmp_path / "ds", wandb_mode="disabled")
    local, ds = _train_losses(tmp_path / "local"), _train_losses(tmp_path / "ds")
    assert len(ds) == 16
    assert ds == pytest.approx(local, rel=1e-5, abs=0)
    assert _val(tmp_path / "ds") == pytest.approx(_val(tmp_path / "local"), rel=1e-5, abs=0)


def test_resume_at_zero_stage_0_is_exact(tmp_path, demo_store, monkeypatch):
    from hepfm._deepspeed import DeepSpeedEngine

    task = _task(demo_store, "train.engine=deepspeed", "train.max_steps=16", "train.batch_size=32", "train.val_every=6")
    train(task, tmp_path / "a", wandb_mode="disabled")

    class Interrupted(Exception):
        pass

    step, calls = DeepSpeedEngine.step, []

    def interrupted_step(self, loss):
        if len(calls) == 9:  # during step 10: the last checkpoint is from step 6
            self.close()  # what the death of the process would release
            raise Interrupted
        calls.append(1)
        step(self, loss)

    monkeypatch.setattr(DeepSpeedEngine, "step", interrupted_step)
    with pytest.raises(Interrupted):
        train(task, tmp_path / "b", wandb_mode="disabled")
    monkeypatch.setattr(DeepSpeedEngine, "step", step)
    result = train(task, tmp_path / "b", resume=True, wandb_mode="disabled")
    assert result.steps == 16 and _released()
    a, b = _train_losses(tmp_path / "a"), _train_losses(tmp_path / "b")
    assert a[6:] == b[6:]  # steps 7..16, exactly


def test_zero_stage_2_trains_but_refuses_resume_and_stage_3_is_refused(tmp_path, demo_store):
    task = _task(
        demo_store,
        "train.engine=deepspeed",
        "train.zero_stage=2",
        "train.max_steps=4",
        "train.batch_size=32",
        "train.val_every=4",
    )
    train(task, tmp_path / "z2", wandb_mode="disabled")
    ckpt = load_checkpoint(tmp_path / "z2" / "checkpoints" / "last.safetensors")
    assert ckpt["optimizer"] is None  # partitioned across ranks: not consolidated, not pretended
    assert ckpt["model"] and ckpt["ema"]  # the weights are whole
    load_model(tmp_path / "z2")
    with pytest.raises(HepfmError, match="--resume needs the optimizer state.*zero_stage") as err:
        train(task, tmp_path / "z2", resume=True, wandb_mode="disabled")
    assert "\n" not in str(err.value)
    assert _released()
    with pytest.raises(HepfmError, match="zero_stage 3 partitions the weights"):
        train(_task(demo_store, "train.engine=deepspeed", "train.zero_stage=3"), tmp_path / "z3")
    assert _released()


def test_bf16_autocast_on_cpu(tmp_path, demo_store):
    args = ("train.engine=deepspeed", "train.max_steps=3", "train.batch_size=32", "train.val_every=3")
    train(_task(demo_store, *args, "train.precision=bf16"), tmp_path / "bf16", wandb_mode="disabled")
    train(_task(demo_store, *args), tmp_path / "fp32", wandb_mode="disabled")  # 'auto' is fp32 on a CPU
    bf16, fp32 = _train_losses(tmp_path / "bf16"), _train_losses(tmp_path / "fp32")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.02)  # autocast is on, and close


# ---------------------------------------------------------------------------------------------
# world size 2 under torchrun
# ---------------------------------------------------------------------------------------------
# Runs `hepfm` under an audit hook that records every file write, rename and removal under the run folder,
# and at exit the SHA-256 of the final weights and EMA weights of this rank.
LAUNCHER = textwrap.dedent(
    """
    import atexit, hashlib, json, os, sys
    run, report = os.path.abspath(sys.argv[1]), sys.argv[2]
    rank = os.environ["RANK"]
    writes, last = [], {}

    def inside(path):
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(run)

    def hook(event, args):
        if event == "open" and inside(args[0]):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR)):
                writes.append([event, os.fsdecode(args[0])])
        elif event in ("os.rename", "os.remove", "os.truncate", "tempfile.mkstemp") and inside(args[0]):
            writes.append([event, os.fsdecode(args[0])])

    sys.addaudithook(hook)
    import hepfm._schedule as T

    update = T.EMA.update

    def keep(self, model):
        update(self, model)
        last["ema"], last["model"] = self.model, model

    T.EMA.update = keep

    def digest(module):
        h = hashlib.sha256()
        for k, v in module.state_dict().items():
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    @atexit.register
    def dump():
        out = {"writes": writes, **{k: digest(m) for k, m in last.items()}}
        with open(f"{report}/rank{rank}.json", "w") as f:
            json.dump(out, f)

    sys.argv = ["hepfm", *sys.argv[3:]]
    from hepfm.cli import main

    main()
    """
)


def _torchrun(tmp_path, store, run, *overrides):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    report = tmp_path / f"report-{run.name}"
    report.mkdir()
    sets = [x for o in overrides for x in ("--set", o)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        launcher, run, report,
        "pretrain", TASK, "--data", store.path, "--out", run, "--wandb", "disabled",
        "--set", "model.preset=tiny", "--set", "train.log_every=1", "--set", "train.engine=deepspeed", *sets,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(HEPFM_PROGRESS="0", OMP_NUM_THREADS="1")
    r = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((report / f"rank{k}.json").read_text()) for k in (0, 1)]


# 40 steps of one stage (all heads), a global batch of 32, the whole validation split at the end.
CURVE = ("train.stages=[]", "train.max_steps=40", "train.val_every=40", "train.val_batches=null")


def test_torchrun_2_processes_match_the_local_engine_at_the_same_global_batch(tmp_path, demo_store):
    """Two ranks of 16 events against one process of 32: the same curve within a stated tolerance.

    Equal in both runs: the initial weights (same seed; DeepSpeed also broadcasts rank 0's), the global batch
    (the all-reduce averages the two rank means, which is the mean over the 32 events), the learning-rate
    schedule, AdamW, clipping of the averaged gradient, the EMA, and the validation events (the whole split).
    Not equal: which events make up each step (each rank reads its own segments, dealt rank::2 and shuffled
    with its own seed, so the union of two rank batches is never a batch of the local loader) and the
    diffusion noise and feature dropout (each rank draws its own). So the curves agree in distribution, not
    value by value. Over 4 seeds on this store the final validation loss of the two set-ups differed by 0.3 to
    2.6% (mean +0.8%) and the mean training loss of the last 20 steps by 1 to 6%; the test allows 5% and 10%.
    (That the two-rank gradient is exactly the 32-event gradient was checked separately with SGD and a
    deterministic head: weights agreed to 5e-7 after 3 steps.)
    """
    ranks = _torchrun(tmp_path, demo_store, tmp_path / "ds", *CURVE, "train.batch_size=16")
    train(_task(demo_store, *CURVE, "train.batch_size=32"), tmp_path / "local", wandb_mode="disabled")

    # one writer: rank 1 wrote nothing in the run folder; rank 0 wrote the metrics and the checkpoints
    assert ranks[1]["writes"] == []
    written = {os.path.basename(path) for _, path in ranks[0]["writes"]}
    assert {"metrics.jsonl", ".task.yaml.tmp", ".MODEL_CARD.md.tmp", ".train_summary.json.tmp"} <= written, written
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "MODEL_CARD.md", "checkpoints", "metrics.jsonl", "task.yaml", "train_summary.json"
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ds" / "checkpoints").iterdir()) == [
        "best.safetensors", "last.safetensors"
    ]  # fmt: skip
    # the weights and the EMA are bit for bit the same on both ranks
    assert ranks[0]["model"] == ranks[1]["model"] and ranks[0]["ema"] == ranks[1]["ema"]

    records = _records(tmp_path / "ds")
    assert [r["step"] for r in records if "train/total" in r] == list(range(1, 41))  # one line per step
    ds, local = _train_losses(tmp_path / "ds"), _train_losses(tmp_path / "local")
    for curve in (ds, local):
        assert _mean(curve[:5]) - _mean(curve[-20:]) > 0.2, curve  # both learn
    assert _mean(ds[-20:]) == pytest.approx(_mean(local[-20:]), rel=0.10)
    (val_ds,), (val_local,) = _val(tmp_path / "ds"), _val(tmp_path / "local")
    assert val_ds == pytest.approx(val_local, rel=0.05)
    assert ds[0] != local[0]  # different events in the first step: the comparison above is statistical


def test_torchrun_2_processes_zero_stage_2_follows_stage_0(tmp_path, demo_store):
    """ZeRO-2 (gradients and optimizer state partitioned over the two ranks) takes the same steps as stage 0.

    Same data, noise and seed as stage 0 with 2 ranks, and one training stage (so no head is idle, the one
    case where ZeRO's flat AdamW partitions update differently): the curves agree to float rounding.
    """
    short = ("train.stages=[]", "train.max_steps=12", "train.val_every=12", "train.batch_size=16")
    z0 = _torchrun(tmp_path, demo_store, tmp_path / "z0", *short)
    z2 = _torchrun(tmp_path, demo_store, tmp_path / "z2", *short, "train.zero_stage=2")
    for ranks in (z0, z2):
        assert (
            ranks[1]["writes"] == [] and ranks[0]["model"] == ranks[1]["model"] and ranks[0]["ema"] == ranks[1]["ema"]
        )
    assert load_checkpoint(tmp_path / "z2" / "checkpoints" / "last.safetensors")["optimizer"] is None
    assert _train_losses(tmp_path / "z2") == pytest.approx(_train_losses(tmp_path / "z0"), rel=1e-3)
