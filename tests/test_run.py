"""The Run object, the typed model config, the optimizer's weight-decay groups and the one inference loop."""

import shutil
from copy import deepcopy as copy_module

import numpy as np
import pytest
import torch
from conftest import ROOT


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hepfm.generate import generate_store
    from hepfm.tasks import load_task
    from hepfm.train import train

    base = tmp_path_factory.mktemp("run")
    store = generate_store(
        {"toy_signal": 0.5, "toy_background": 0.5}, 3000, base / "toy.zarr", seed=5, chunk_events=1000
    )
    task = load_task(
        ROOT / "tasks" / "demo_classify.yaml",
        [f"dataset.params.path={store.path}", "train.max_steps=6", "train.val_every=3", "train.batch_size=64",
         "train.val_batches=2", "train.keep_every=3"],
    )  # fmt: skip
    train(task, base / "run", wandb_mode="disabled")
    return base / "run", store


def _batch(store, n=48):
    from hepfm import EventLoader

    return next(iter(EventLoader(store, "test", n, shuffle=False)))


def test_run_reads_its_folder(tiny_run):
    from hepfm import Run
    from hepfm.run import HeadConfig, ModelConfig

    path, store = tiny_run
    run = Run(path)
    assert run.task.name == "demo_classify" and run.split.seed == 7
    assert run.sources() == str(store.path)
    assert list(run.checkpoints()) == ["best", "last", "step-3", "step-6"]
    assert run.checkpoint("last") == path / "checkpoints" / "last.safetensors"
    assert run.summary["steps"] == 6 and run.finished
    assert run.compute()["steps"] == 6
    assert Run(run.checkpoint("step-3")).compute()["steps"] == 3  # a checkpoint file gives the compute up to it
    assert any("val/total" in r for r in run.metrics_log())
    config = run.model_config("last")
    assert isinstance(config, ModelConfig) and config.backbone.dim == 64
    head = config.heads["process"]
    assert isinstance(head, HeadConfig) and head.params.num_classes == 2 and head.store_targets() == ["process"]
    assert config.processes == store.processes
    assert ModelConfig.parse(config.to_dict()).to_dict() == config.to_dict()  # written and parsed back alike
    ema, chosen = run.weights("best")
    raw, _ = run.weights("best", "raw")
    assert chosen == "ema" and any(not ema[k].equal(raw[k]) for k in ema if ema[k].is_floating_point())
    assert run.evaluation() is None


def test_load_model_through_run_gives_the_same_outputs(tiny_run):
    import hepfm
    from hepfm.checkpoint import build_model, load_checkpoint, load_model

    path, store = tiny_run
    batch = _batch(store)
    ckpt = load_checkpoint(path / "checkpoints" / "best.safetensors")
    for weights in ("ema", "raw"):
        by_hand = build_model(ckpt["config"])
        by_hand.load_state_dict(ckpt[weights if weights == "ema" else "model"])
        by_hand.eval()
        models = [hepfm.Run(path).load_model(weights=weights), hepfm.load_model(path, weights=weights)]
        models.append(load_model(path, weights=weights))
        with torch.no_grad():
            expected = by_hand.encode(batch).event
            for model in models:
                assert model.weights == weights
                assert torch.equal(model.encode(batch).event, expected)


def test_weight_decay_groups_leave_out_biases_norms_and_embeddings():
    from hepfm._engine import GROUP_NAMES, param_groups

    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.head = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LayerNorm(2))
    groups = param_groups(model, lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == list(GROUP_NAMES)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(by_name["backbone"]["params"]) == {id(model.backbone[1].weight)}
    assert ids(by_name["heads"]["params"]) == {id(model.head[0].weight)}
    no_decay = ids(by_name["backbone/no_decay"]["params"])
    assert no_decay == ids([model.backbone[0].weight, model.backbone[1].bias, *model.backbone[2].parameters()])
    assert ids(by_name["heads/no_decay"]["params"]) == ids([model.head[0].bias, *model.head[1].parameters()])
    assert by_name["backbone"]["lr"] == by_name["backbone/no_decay"]["base_lr"] == pytest.approx(1e-4)
    assert by_name["heads"]["weight_decay"] == 0.05 and by_name["heads/no_decay"]["weight_decay"] == 0.0
    model.backbone.requires_grad_(False)  # a frozen backbone: no backbone groups
    assert [g["name"] for g in param_groups(model, 1e-3, 0.1, 0.05)] == ["heads", "heads/no_decay"]


def test_the_engines_share_one_construction(tiny_run):
    from hepfm._engine import Engine, LocalEngine, adamw, param_groups

    path, _ = tiny_run
    task = __import__("hepfm").Run(path).task
    model = __import__("hepfm").Run(path).load_model()
    engine = LocalEngine(model, adamw(param_groups(model, 1e-3, 1.0, 0.01), 1e-3), task.train)
    assert isinstance(engine, Engine) and engine.is_main and engine.world_size == 1


def test_one_inference_loop_gives_the_outputs_of_the_loops_it_replaced(tiny_run):
    import hepfm
    from hepfm import EventLoader, SplitSpec
    from hepfm.evaluate import collect
    from hepfm.train import _validate

    path, store = tiny_run
    model = hepfm.Run(path).load_model()
    # evaluation: every head's predict(forward(...)) over the split, cut at max_events
    ev = collect(model, store, "test", SplitSpec(), batch_size=100, max_events=250)
    probs, masks, seen = [], [], 0
    with torch.no_grad():
        for batch in EventLoader(store, "test", 100, shuffle=False):  # the loop evaluate had, cut batch and all
            if seen >= 250:
                break
            batch = batch.apply(lambda t, k=250 - seen: t[:k])
            seen += len(batch)
            head = model.heads["process"]
            probs.append(head.predict(head(model.encode(batch), batch))["probabilities"].numpy())
            masks.append(batch.mask.numpy())
    assert len(ev) == 250
    assert np.array_equal(ev.outputs["process"]["probabilities"], np.concatenate(probs)[:250])
    assert np.array_equal(ev.mask, np.concatenate(masks)[:250])
    # validation: the mean losses over the first batches, with the same noise every time
    loader = EventLoader(store, "val", 64, False)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    sums, n = {}, 0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= 2:
                break
            _, parts, _ = model.loss(batch, ["process"])
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(batch)
            n += len(batch)
    torch.set_rng_state(state)
    assert _validate(model, loader, 2, ["process"]) == {k: v / n for k, v in sums.items()}
    # prediction: the same columns batch by batch and in one call
    from hepfm import Batch
    from hepfm.predict import predict_batch

    cols = model.predict(store, batch_size=300)
    first = predict_batch(model, Batch.from_arrays(store.read(0, 300, ["objects", "mask", "globals", "weights"])))
    assert len(cols["process_prob_toy_signal"]) == store.n_events
    assert np.array_equal(cols["process_prob_toy_signal"][:300], first["process_prob_toy_signal"])


def test_device_is_checked_in_one_line(tiny_run):
    import hepfm
    from hepfm import HepfmError
    from hepfm.embed import embed
    from hepfm.evaluate import evaluate

    path, store = tiny_run
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: cuda is a valid device")
    with pytest.raises(HepfmError, match="no CUDA GPU"):
        hepfm.Run(path).load_model(device="cuda")
    with pytest.raises(HepfmError, match="no CUDA GPU"):
        evaluate(path, device="cuda")
    with pytest.raises(HepfmError, match="no CUDA GPU"):
        embed(path, store.path, path.parent / "latents.zarr", device="cuda")
    from typer.testing import CliRunner

    from hepfm.cli import app

    for argv in (
        ["evaluate", str(path), "--device", "cuda"],
        ["embed", str(path), "--data", str(store.path), "--out", str(path.parent / "lat.zarr"), "--device", "cuda"],
        ["predict", str(path), "--data", str(store.path), "--out", str(path.parent / "p.parquet"), "--device", "cuda"],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code != 0 and "no CUDA GPU" in result.output and "Traceback" not in result.output, argv
        assert not (path.parent / "lat.zarr").exists() and not (path.parent / "p.parquet").exists()


def test_resume_refuses_the_old_optimizer_layout(tiny_run, tmp_path):
    import hepfm
    from hepfm import HepfmError
    from hepfm._engine import adamw
    from hepfm.checkpoint import load_checkpoint, save_checkpoint
    from hepfm.train import train

    path, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    last = copy / "checkpoints" / "last.safetensors"
    ckpt = load_checkpoint(last)
    model = hepfm.Run(copy).load_model("last", "raw")
    backbone = list(model.backbone.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    # the layout before the weight-decay groups: two unnamed groups, decay on every parameter
    old = adamw([{"params": others, "base_lr": 1e-3}, {"params": backbone, "base_lr": 1e-3}], lr=1e-3)
    model.train()
    loss, _, _ = model.loss(_batch(hepfm.EventStore.open(hepfm.Run(copy).sources())), ["process"])
    loss.backward()
    old.step()
    save_checkpoint(
        last,
        model,
        ckpt["config"],
        copy_module(model),
        old,
        ckpt["trainer"],
        {"rng/torch": ckpt["tensors"]["rng/torch"]},
    )
    task = hepfm.Run(copy).task.model_copy()
    with pytest.raises(HepfmError) as info:
        train(task, copy, resume=True, wandb_mode="disabled")
    message = str(info.value)
    assert "\n" not in message and str(last) in message and "older hepfm" in message


def test_a_head_names_the_targets_it_needs(tiny_run):
    from hepfm import HepfmError
    from hepfm.run import ModelConfig
    from hepfm.tasks import load_task

    _, store = tiny_run
    task = load_task(
        ROOT / "tasks" / "demo_classify.yaml",
        [f"dataset.params.path={store.path}", "heads.process.params.target=flavour"],
    )
    with pytest.raises(HepfmError, match="head 'process' needs target 'flavour'"):
        ModelConfig.from_task(task, store)
