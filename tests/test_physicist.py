"""What a physicist sees and touches: figures without global matplotlib state, the wheel, model folders."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_importing_hepfm_and_drawing_every_plot_keeps_the_backend_and_returns_figures(demo_store, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from test_evaluate import _evaluation

    import hepfm  # noqa: F401
    from hepfm import plugins
    from hepfm._plots import save_figure
    from hepfm.report import store_figures

    figures = dict(store_figures(demo_store.path, max_events=1000))
    ev = _evaluation()
    registry = plugins.metrics()
    for name, params in (("roc_auc", {"signal": ["sig"]}), ("pairing", {"groups": [[0], [4]], "baseline": "min_mlb"})):
        cls = registry.get(name)
        figures.update({f"{name}/{k}": v for k, v in cls(cls.Params.model_validate(params)).figures(ev).items()})
    assert figures and all(isinstance(f, Figure) for f in figures.values())
    assert "validation/multiplicity" in figures and "roc_auc/roc" in figures
    file = save_figure(figures["roc_auc/roc"], tmp_path / "roc.png")
    assert file.stat().st_size > 10_000 and oct(file.stat().st_mode & 0o777) != "0o600"
    assert matplotlib.get_backend() == before and plt.get_fignums() == []  # no pyplot state, no switch


def test_wheel_in_a_fresh_venv_validates_a_shipped_task_by_name(tmp_path):
    """Build the wheel, install it (no deps) into a new venv that sees the shared venv's packages, run it."""
    wheels, venv, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # hepfm only from the wheel
    subprocess.run(
        [py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    subprocess.run([py, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies (torch, zarr, ...) come from the shared venv; hepfm itself only from the wheel
    Path(site, "shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("hepfm-*.whl"))
    pip = [py, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--force-reinstall", "--no-deps"]
    subprocess.run([*pip, wheel], check=True, env=env, cwd=tmp_path)  # not in the source tree (its egg-info)
    empty.mkdir()
    r = subprocess.run(
        [venv / "bin" / "hepfm", "validate", "qe_ttbar"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and str(venv) in r.stdout  # the task file inside the installed package
    r = subprocess.run(
        [venv / "bin" / "hepfm", "validate", "no_such_task"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0 and "no_such_task" in r.stderr and "qe_ttbar" in r.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hepfm.generate import generate_store
    from hepfm.tasks import load_task
    from hepfm.train import train

    base = tmp_path_factory.mktemp("tiny")
    store = generate_store(
        {"toy_signal": 0.5, "toy_background": 0.5}, 3000, base / "toy.zarr", seed=5, chunk_events=1000
    )
    task = load_task(
        ROOT / "tasks" / "demo_classify.yaml",
        [f"dataset.params.path={store.path}", "train.max_steps=6", "train.val_every=3", "train.batch_size=64",
         "train.val_batches=2"],
    )  # fmt: skip
    train(task, base / "run", wandb_mode="disabled")
    return base / "run", store


def test_exported_model_folder_reloads_with_the_same_outputs_and_seeds_a_fine_tune(tiny_run, tmp_path, cli):
    import hepfm
    from hepfm import EventLoader, EventStore
    from hepfm.run import ModelConfig
    from hepfm.tasks import load_task
    from hepfm.train import init_architecture, init_from

    run, store = tiny_run
    r = cli("evaluate", run, "--bootstrap", 5, "--wandb", "offline", "--wandb-project", "physicist-test")
    assert r.exit_code == 0, r.stderr + r.stdout
    wandb_runs = list((run / "eval" / "wandb").glob("offline-run-*"))
    assert wandb_runs and list(wandb_runs[0].rglob("*.png"))  # the evaluation plots went to W&B as images
    out = tmp_path / "model"
    r = cli("export", run, "--format", "hf", "--out", out)
    assert r.exit_code == 0, r.stderr + r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: hepfm" in card and "| roc_auc | auc |" in card
    assert (run / "checkpoints" / "best.safetensors").stat().st_mode & 0o777 == 0o644

    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert not any(k.startswith(("optim/", "ema/", "model/", "rng/")) for k in f.keys())  # weights only

    original, folder = hepfm.load_model(run, weights="ema"), hepfm.load_model(out)
    batch = next(iter(EventLoader(EventStore.open(store.path), "test", 32, shuffle=False)))
    with torch.no_grad():
        a, b = original.encode(batch), folder.encode(batch)
        pa = original.heads["process"].predict(original.heads["process"](a, batch))["probabilities"]
        pb = folder.heads["process"].predict(folder.heads["process"](b, batch))["probabilities"]
    assert torch.equal(pa, pb)

    # a fine-tune starts from the folder, and takes its (tiny) architecture without --set model.preset
    task = load_task(
        ROOT / "tasks" / "demo_classify.yaml", [f"dataset.params.path={store.path}", f"init.checkpoint={out}"]
    )
    task = task.model_copy(update={"model": type(task.model)()})  # the default preset (small), not asked for
    adopted = init_architecture(task)
    assert adopted.model.preset == "tiny"
    model = ModelConfig.from_task(adopted, EventStore.open(store.path)).build()
    report = init_from(model, out)
    assert any(k.startswith("backbone.") for k in report["loaded"])


def test_a_task_that_asks_for_another_preset_gets_one_clear_line(tiny_run, capsys):
    from hepfm.tasks import load_task
    from hepfm.train import init_architecture

    run, store = tiny_run
    task = load_task(
        ROOT / "tasks" / "demo_classify.yaml",
        [f"dataset.params.path={store.path}", f"init.checkpoint={run}", "model.preset=small"],
    )
    adopted = init_architecture(task)
    assert adopted.model.preset == "tiny" and adopted.model.dim == 64
    err = capsys.readouterr().err
    assert "asks for model" in err and "takes the checkpoint's architecture" in err


def test_a_fine_tune_keeps_its_own_dropout_and_the_checkpoints_sizes(tiny_run, capsys):
    from hepfm import EventStore
    from hepfm.run import ModelConfig
    from hepfm.tasks import load_task
    from hepfm.train import init_architecture

    run, store = tiny_run
    overrides = [f"dataset.params.path={store.path}", f"init.checkpoint={run}"]
    task = load_task(ROOT / "tasks" / "demo_classify.yaml", [*overrides, "model.dropout=0.2"])
    adopted = init_architecture(task)
    assert adopted.model.preset == "tiny" and adopted.model.dropout == 0.2
    assert "asks for model" not in capsys.readouterr().err  # a training setting, not another architecture
    model = ModelConfig.from_task(adopted, EventStore.open(store.path)).build()
    assert model.backbone.body[0].attn.dropout == 0.2 and model.config.to_dict()["dropout"] == 0.2
    plain = init_architecture(load_task(ROOT / "tasks" / "demo_classify.yaml", overrides))
    assert plain.model.dropout == 0.0  # without it, the checkpoint's (the preset's) dropout


def test_headline_numbers_are_rounded_to_their_uncertainty():
    from hepfm._headline import format_value

    assert format_value(0.61234, 0.0213) == "0.612 ± 0.021"
    assert format_value(80.21, 2.24) == "80.2 ± 2.2"
    assert format_value(12.0, 2.8, signed=True) == "+12.0 ± 2.8"
    assert format_value(692.0, float("nan"), count=True) == "692"
    assert format_value(float("nan")) == "nan" and np.isinf(float(format_value(float("inf"))))


def test_the_notebook_walkthrough_runs_as_written(tmp_path, monkeypatch):
    import re

    text = (ROOT / "docs" / "notebook.md").read_text()
    cells = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(cells) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, "docs/notebook.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "nb" / "multiplicity.png").stat().st_size > 10_000
    assert torch.equal(namespace["latents"].event, namespace["again"].event)  # the shared folder: same outputs
    assert namespace["evaluation"].summary.is_file() and namespace["evaluation"].headline
