"""Shared by the experiments' resume tests: start a run in a subprocess and SIGKILL it."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kill_after_first_checkpoint(
    module: str, args: list[str], workdir: pathlib.Path, ckpts: pathlib.Path
) -> int:
    """Runs ``python -m module *args --workdir workdir`` and SIGKILLs it (no cleanup) as soon as
    a numbered checkpoint appears under ``ckpts``; returns the process's return code (asserting
    the run had not finished by then)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--workdir", str(workdir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return proc.returncode
