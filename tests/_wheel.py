"""Shared by test_wheel.py and the notebook tests: the wheel of this tree, and commands run in a
fresh virtual environment with nothing of the repository's on the path."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this interpreter's virtualenv or path additions."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def run(cmd: list, cwd: pathlib.Path, timeout: int = 1500, **extra: str) -> str:
    cmd = [str(c) for c in cmd]
    out = subprocess.run(
        cmd, cwd=cwd, env=clean_env(**extra), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def build_wheel(workdir: pathlib.Path) -> pathlib.Path:
    """``pip wheel`` of this tree as git would commit it: the tracked files as they are now and
    the untracked ones that ``.gitignore`` does not exclude (on a fresh clone, exactly
    ``HEAD``); nothing ignored, so no build folders or virtual environments."""
    src, dist = workdir / "src", workdir / "dist"
    src.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if path.is_file():  # a tracked file deleted in the tree is left out, as a commit would
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], src)
    (built,) = dist.glob("pruneax-*.whl")
    return built
