import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ["HEPFM_PROGRESS"] = "0"
os.environ.setdefault("WANDB_MODE", "disabled")

from hepfm import plugins  # noqa: E402
from hepfm.cli import app  # noqa: E402
from hepfm.generate import generate_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_registries():
    plugins.reset()
    yield
    plugins.reset()


class Result:
    def __init__(self, r):
        self.exit_code = r.exit_code
        self.stdout = r.stdout
        self.stderr = r.stderr
        self.exception = r.exception

    @property
    def error_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture
def cli():
    runner = CliRunner()

    def run(*args):
        return Result(runner.invoke(app, [str(a) for a in args], catch_exceptions=True))

    return run


def assert_one_line_error(result, *needles):
    """Non-zero exit, no traceback, exactly one error line that names what it must."""
    assert result.exit_code not in (0, None), result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    lines = [line for line in result.error_lines if line.startswith("error:")]
    assert len(lines) == 1, result.error_lines  # informational log lines (the resolved plan) may precede it
    others = [line for line in result.error_lines if not line.startswith("error:")]
    assert not any("error" in line.lower() or "Traceback" in line for line in others), others
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "demo.zarr"
    return generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 20_000, path, seed=3, chunk_events=2048)


def run_python(code, *args, env=None, check=True):
    """Run code in a fresh interpreter (the real reload test), returning stdout."""
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=full_env)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr[-3000:])
    return out
