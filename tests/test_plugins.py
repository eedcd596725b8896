import inspect
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_python

import hepfm
from hepfm import HepfmError, hookspecs, plugins
from hepfm.components import HeadDims, Latents
from hepfm.schema import EventSchema

EXAMPLE = ROOT / "plugins" / "hepfm-example-plugin"
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("hepfm_"))


def test_every_hook_has_a_test_and_a_docs_entry():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for hook in HOOKS:
        assert f"test_hook_{hook}" in tests, f"hook {hook} has no test_hook_{hook}"
        assert f"`{hook}`" in docs, f"hook {hook} is not documented in docs/plugins.md"
        spec = getattr(hookspecs, hook)
        assert spec.__doc__ and spec.__doc__.strip(), f"hook {hook} has no docstring"


def test_hook_hepfm_register_heads():
    cls = plugins.heads().get("classification")
    assert plugins.heads()._entries["classification"].plugin == "builtin_heads"
    import torch

    head = cls(cls.Params(num_classes=3), HeadDims(latent_dim=16, schema=EventSchema()))
    latents = Latents(
        objects=torch.randn(5, 18, 16), event=torch.randn(5, 16), mask=torch.ones(5, 18, dtype=torch.bool)
    )
    batch = hepfm.Batch(
        torch.zeros(5, 18, 7),
        torch.ones(5, 18, dtype=torch.bool),
        torch.zeros(5, 10),
        torch.ones(5),
        {"process": torch.tensor([0, 1, 2, 1, 0])},
    )
    out = head(latents, batch)
    assert out["logits"].shape == (5, 3)
    loss, parts = head.loss(out, batch)
    loss.backward()
    assert loss.ndim == 0 and "ce" in parts
    assert torch.allclose(head.predict(out)["probabilities"].sum(-1), torch.ones(5))


def test_hook_hepfm_register_datasets(demo_store):
    regs = plugins.datasets()
    assert regs.names() == ["zarr"]
    zarr = regs.get("zarr")
    store = zarr(zarr.Params(path=str(demo_store.path))).open()
    assert store.n_events == demo_store.n_events
    assert plugins.datasets()._entries["zarr"].package == f"hepfm {hepfm.__version__} (built-in)"


def test_hook_hepfm_register_generators():
    regs = plugins.generators()
    assert {"synthetic", "pythia"} <= set(regs.names())
    gen = regs.get("synthetic")
    block = gen(gen.Params(), EventSchema()).generate("toy_signal", 100, seed=1)
    assert block.objects.shape == (100, 18, 7) and block.mask[:, 0].all()
    pt = block.objects[..., 1]
    assert (pt[:, :-1] >= pt[:, 1:]).all()  # pT-ordered, padding last


def test_hook_hepfm_register_converters():
    regs = plugins.converters()
    assert {"delphes", "parquet", "spanet"} <= set(regs.names())
    assert callable(getattr(regs.get("spanet"), "export", None))  # an optional member of the contract


def test_hook_hepfm_register_commands(tmp_path):
    """A plugin command becomes a `hepfm` verb with the one-line error handling of built-in ones."""
    _fake_dist(tmp_path, "greeter", GOOD_PLUGIN)
    r = _hepfm("greet", "--name", "physicist", env={"PYTHONPATH": _pythonpath(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "hello physicist", r.stderr
    r = _hepfm("greet", "--name", "", env={"PYTHONPATH": _pythonpath(tmp_path)})
    assert r.returncode == 1 and r.stderr.strip() == "error: greet: give a name", r.stderr
    r = _hepfm("plugins", "--json", env={"PYTHONPATH": _pythonpath(tmp_path)})
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    assert rows[("command", "greet")]["package"] == "greeter 1.0"
    assert rows[("metric", "constant")]["plugin"] == "greeter"


def test_hook_hepfm_register_metrics():
    import numpy as np

    from hepfm.components import Evaluation

    def evaluation(process):
        probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
        return Evaluation(
            EventSchema(),
            np.zeros((4, 18, 7)),
            np.ones((4, 18), bool),
            np.zeros((4, 10)),
            np.ones(4),
            {"process": np.array(process)},
            {"p": {"probabilities": probs}},
            {"p": {"name": "classification", "params": {}}},
            ["bkg", "sig"],
        )

    builtin = {"roc_auc", "accuracy", "pairing", "neutrino_residuals", "spin_correlation"}
    assert set(plugins.metrics().names()) >= builtin
    auc = plugins.metrics().get("roc_auc")
    assert auc(auc.Params(signal=["sig"])).compute(evaluation([0, 0, 1, 1]))["auc"] == 1.0
    acc = plugins.metrics().get("accuracy")
    assert acc(acc.Params()).compute(evaluation([0, 1, 1, 1]))["accuracy"] == 0.75


def test_registry_refuses_duplicates_and_lists_known():
    reg = plugins.Registry("metric")

    class A:
        name, description, Params = "dup", "", hepfm.components.Params

        def compute(self, evaluation):
            return {}

    class B(A):
        pass

    reg.register(A, "one", "pkg-one 1.0")
    with pytest.raises(HepfmError, match="'dup' is already registered by plugin one"):
        reg.register(B, "two", "pkg-two 2.0")
    with pytest.raises(HepfmError, match="unknown metric 'x'; known: dup"):
        reg.get("x")

    class NoParams:
        name, description = "np", ""

    with pytest.raises(HepfmError, match="lacks the `Params`"):
        reg.register(NoParams)


def test_builtins_register_without_installation():
    # the DEFAULT_PLUGINS fallback (source tree not installed) registers the same modules by name
    code = """
import importlib.metadata as md
from hepfm import plugins
md.entry_points = lambda **kw: []
md.distributions = lambda **kw: iter(())
pm = plugins.get_plugin_manager()
print(sorted(n for n, _ in pm.list_name_plugin()), "classification" in plugins.heads().names())
"""
    out = run_python(code).stdout
    assert "'builtin_datasets', 'builtin_heads', 'builtin_metrics'" in out and out.strip().endswith("True")


@pytest.fixture(scope="module")
def example_installed():
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE)]
    subprocess.run(pip, check=True, capture_output=True)
    yield
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "hepfm-example-plugin"], check=True, capture_output=True
    )


def _hepfm(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "hepfm", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HEPFM_PROGRESS": "0", **(env or {})},
        cwd=ROOT,
    )


def test_example_plugin_is_discovered_after_install(example_installed, tmp_path):
    r = _hepfm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    assert rows[("head", "met_regression")]["package"] == "hepfm-example-plugin 0.1.0"
    assert rows[("metric", "relative_resolution")]["plugin"] == "example"
    r = _hepfm("validate", EXAMPLE / "example_task.yaml")
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLE / "example_task.yaml").read_text().replace("{hidden: 32}", "{hidden: 32, depth: 2}"))
    r = _hepfm("validate", bad)
    assert r.returncode == 1 and "heads.met.params.depth: Extra inputs are not permitted" in r.stderr

    # HEPFM_LOAD_PLUGINS restricts third-party loading; built-ins stay
    r = _hepfm("plugins", "--json", env={"HEPFM_LOAD_PLUGINS": ""})
    names = {row["name"] for row in json.loads(r.stdout)}
    assert "met_regression" not in names and "classification" in names
    r = _hepfm("plugins", "--json", env={"HEPFM_LOAD_PLUGINS": "example"})
    assert "met_regression" in {row["name"] for row in json.loads(r.stdout)}
    r = _hepfm("validate", EXAMPLE / "example_task.yaml", env={"HEPFM_LOAD_PLUGINS": "other"})
    assert r.returncode == 1 and "unknown head 'met_regression'; known: assignment, classification" in r.stderr


def test_example_plugin_head_trains_on_a_batch(example_installed):
    code = """
import torch, hepfm
from hepfm import plugins
from hepfm.components import HeadDims, Latents
cls = plugins.heads().get("met_regression")
head = cls(cls.Params(), HeadDims(8, hepfm.EventSchema()))
g = torch.zeros(4, 10); g[:, 0] = torch.tensor([10., 20., 40., 80.])
batch = hepfm.Batch(torch.zeros(4, 18, 7), torch.ones(4, 18, dtype=torch.bool), g, torch.ones(4))
lat = Latents(torch.zeros(4, 18, 8), torch.randn(4, 8), batch.mask)
opt = torch.optim.Adam(head.parameters(), 1e-2)
first = None
for _ in range(200):
    loss, _ = head.loss(head(lat, batch), batch); opt.zero_grad(); loss.backward(); opt.step()
    first = first if first is not None else float(loss)
import numpy as np
from hepfm.components import Evaluation
met = plugins.metrics().get("relative_resolution")
pred = {"m": {k: v.detach().numpy() for k, v in head.predict(head(lat, batch)).items()}}
ev = Evaluation(hepfm.EventSchema(), batch.objects.numpy(), batch.mask.numpy(), g.numpy(), np.ones(4), {}, pred,
                {"m": {"name": "met_regression", "params": {}}}, [])
r = met(met.Params()).compute(ev)
print(first, float(loss), abs(r["median"]))
"""
    first, last, median = map(float, run_python(code).stdout.split())
    assert last < 0.1 * first and median < 0.2


# ---------------------------------------------------------------------------------------------
# third-party plugins that break: set aside, named, and nothing else stops
# ---------------------------------------------------------------------------------------------
GOOD_PLUGIN = """
import typer
import hepfm
from hepfm.components import Params


class Constant:
    name, description, Params = "constant", "always 1", Params

    def __init__(self, params):
        pass

    def compute(self, evaluation):
        return {"one": 1.0}


def greet(name: str = typer.Option("world")) -> None:
    \"\"\"Say hello.\"\"\"
    if not name:
        raise hepfm.HepfmError("greet: give a name")
    print(f"hello {name}")


@hepfm.hookimpl
def hepfm_register_metrics():
    return [Constant]


@hepfm.hookimpl
def hepfm_register_commands():
    return [greet]
"""

BROKEN = {
    "a_import": "import no_such_module_anywhere\n",
    "b_misspelt": "import hepfm\n@hepfm.hookimpl\ndef hepfm_register_head():\n    return []\n",
    "c_instance": (
        "import hepfm\nclass M:\n    pass\n@hepfm.hookimpl\ndef hepfm_register_metrics():\n    return [M()]\n"
    ),
    "d_member": (
        "import hepfm\nfrom hepfm.components import Params\n"
        "class H:\n    name, description, Params = 'h_nopredict', '', Params\n"
        "    def forward(self, l, b): ...\n    def loss(self, o, b): ...\n"
        "@hepfm.hookimpl\ndef hepfm_register_heads():\n    return [H]\n"
    ),
    "e_params": (
        "import hepfm\nclass M:\n    name, description, Params = 'p', '', dict\n"
        "    def compute(self, e): ...\n@hepfm.hookimpl\ndef hepfm_register_metrics():\n    return [M]\n"
    ),
    "f_duplicate": (
        "import hepfm\nfrom hepfm.components import Params\n"
        "class M:\n    name, description, Params = 'accuracy', '', Params\n    def compute(self, e): ...\n"
        "class N:\n    name, description, Params = 'fresh_metric', '', Params\n    def compute(self, e): ...\n"
        "@hepfm.hookimpl\ndef hepfm_register_metrics():\n    return [N, M]\n"
    ),
}
REASONS = {
    "a_import": "import failed: ModuleNotFoundError: No module named 'no_such_module_anywhere'",
    "b_misspelt": "implements unknown hook 'hepfm_register_head'",
    "c_instance": "registers an instance of M as a metric; return the class",
    "d_member": "head 'h_nopredict' lacks the `predict` member its protocol requires",
    "e_params": "metric 'p': `Params` is not a pydantic model class",
    "f_duplicate": "metric name 'accuracy' is already registered by plugin builtin_metrics",
}


def _fake_dist(root, name, source):
    """A module plus a dist-info with a `hepfm` entry point: an installed package, without pip."""
    (root / f"{name}_mod.py").write_text(source)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hepfm]\n{name} = {name}_mod\n")


def _pythonpath(root):
    return os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])


def test_broken_plugins_are_set_aside_named_and_stop_nothing_else(tmp_path):
    for name, source in BROKEN.items():
        _fake_dist(tmp_path, name, source)
    _fake_dist(tmp_path, "greeter", GOOD_PLUGIN)
    env = {"PYTHONPATH": _pythonpath(tmp_path)}
    r = _hepfm("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    broken = {row["name"]: row for row in rows if row["kind"] == "broken"}
    assert sorted(broken) == sorted(BROKEN)
    for name, reason in REASONS.items():
        assert reason in broken[name]["description"], (name, broken[name])
        assert broken[name]["package"] == f"{name} 1.0"
    names = {(row["kind"], row["name"]) for row in rows}
    assert ("metric", "fresh_metric") not in names  # a broken plugin is skipped whole
    assert ("metric", "constant") in names and ("head", "classification") in names  # the others work
    # unrelated commands run; a command that needs the broken plugin names it in one line
    assert _hepfm("validate", ROOT / "tasks" / "demo_classify.yaml", env=env).returncode == 0
    task = tmp_path / "t.yaml"
    task.write_text((ROOT / "tasks" / "demo_classify.yaml").read_text().replace("name: classification",
                                                                                "name: h_nopredict"))  # fmt: skip
    r = _hepfm("validate", task, env=env)
    assert r.returncode == 1 and "unknown head 'h_nopredict'" in r.stderr and "d_member (head 'h_nopredict'" in r.stderr
    assert "Traceback" not in r.stderr
    # HEPFM_DISABLE_PLUGINS excludes by name; names that match nothing are reported
    r = _hepfm("plugins", "--json", env={**env, "HEPFM_DISABLE_PLUGINS": "a_import,b_misspelt,nope"})
    broken = {row["name"] for row in json.loads(r.stdout) if row["kind"] == "broken"}
    assert broken == set(BROKEN) - {"a_import", "b_misspelt"}
    assert "warning: HEPFM_DISABLE_PLUGINS names 'nope', which matches no plugin" in r.stderr
    r = _hepfm("plugins", "--json", env={**env, "HEPFM_LOAD_PLUGINS": "greeter,exmaple"})
    rows = json.loads(r.stdout)
    assert not [row for row in rows if row["kind"] == "broken"] and ("command", "greet") in {
        (row["kind"], row["name"]) for row in rows
    }
    assert "warning: HEPFM_LOAD_PLUGINS names 'exmaple', which matches no plugin" in r.stderr
