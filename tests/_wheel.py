"""Shared by test_wheel.py and test_colabs.py: the wheel of the committed tree, and commands run
in a fresh virtual environment with nothing of the repository's on the path."""

from __future__ import annotations

import os
import pathlib
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
    """``pip wheel`` of ``git archive HEAD`` (what a release would ship: committed files only)."""
    src, dist = workdir / "src", workdir / "dist"
    src.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], src)
    (built,) = dist.glob("pruneax-*.whl")
    return built
