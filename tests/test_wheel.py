"""The built wheel installs into a fresh virtual environment outside the repository; the
README example and a tiny experiment run from it; the core install pulls no Flax.

Slow (it installs jax, flax, optax ... from the package index into a new environment): run
with ``python -m pytest -m slow tests/test_wheel.py``.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: pathlib.Path, timeout: int = 1500) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)], src)
    (built,) = dist.glob("pruneax-*.whl")
    return built


def test_core_wheel_installs_without_flax(wheel, tmp_path):
    env_dir = tmp_path / "core"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", str(wheel)], tmp_path)
    listed = _run([py, "-m", "pip", "list", "--format=freeze"], tmp_path).lower()
    assert "flax==" not in listed and "jax==" in listed and "optax==" in listed
    readme = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    (tmp_path / "example.py").write_text(example + "\nprint(keep.shape)\n")
    assert _run([py, "example.py"], tmp_path).strip().endswith("(8, 65)")


def test_experiments_run_from_the_installed_wheel(wheel, tmp_path):
    env_dir = tmp_path / "full"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", f"{wheel}[experiments]"], tmp_path)
    out = _run(
        [py, "-m", "pruneax.experiments.reproduce", "--only", "token_demo",
         "--workdir", str(tmp_path / "work"), "--compilation_cache", "off"],
        tmp_path,
    )  # fmt: skip
    assert re.search(r"token_demo \(preset \w+\): done", out), out[-2000:]
    assert (tmp_path / "work" / "report.md").is_file()
