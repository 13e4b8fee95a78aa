"""Shared test configuration: hypothesis profiles and small fixtures.

Profiles (choose with ``HYPOTHESIS_PROFILE=dev pytest ...``):

- ``ci`` (default): derandomized, no deadline (the first call of a shape compiles), ~30 examples.
- ``dev``: random seeds and more examples, for hunting bugs locally.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

import jax
import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class CompileCounter:
    """Counts XLA compilations logged by ``jax.log_compiles`` while active."""

    def __init__(self, caplog: pytest.LogCaptureFixture):
        self._caplog = caplog

    def __enter__(self) -> CompileCounter:
        self._caplog.clear()
        self._ctx = jax.log_compiles(True)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self._caplog.records if "Compiling" in r.getMessage()]

    @property
    def count(self) -> int:
        return len(self.messages)


@pytest.fixture
def compile_counter(caplog: pytest.LogCaptureFixture):
    """Factory of :class:`CompileCounter` context managers capturing jax's compile log."""
    caplog.set_level(logging.WARNING, logger="jax")
    return lambda: CompileCounter(caplog)


# ------------------------------------------- expensive runs shared by the workers of a session


@pytest.fixture(scope="session")
def once(tmp_path_factory):
    """``once(key, build)`` runs ``build(folder)`` at most once per test session, whatever
    pytest-xdist does, and returns ``folder``. Under xdist the workers of a session share the
    parent of their temporary folders; a file lock makes the others wait for the first one
    and reuse its folder (the xdist docs' recipe for session fixtures). A build that fails is
    retried by the next caller, and its error is raised there too."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def run_once(key: str, build) -> pathlib.Path:
        folder = shared / f"once-{key}"
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".done").exists():
                if folder.exists():  # a build that failed part-way
                    shutil.rmtree(folder)
                folder.mkdir()
                build(folder)
                (folder / ".done").touch()
        return folder

    return run_once


@pytest.fixture(scope="session")
def wheel_kernel(once):
    """A Jupyter kernel in a fresh environment holding only ipykernel, into which notebook 01's
    own install cell has installed pruneax from the wheel of this tree (tests/_notebooks.py).
    Built once per session; the other notebooks find pruneax installed and skip the install."""
    from tests._notebooks import ROOT, execute, make_kernel

    def build(folder: pathlib.Path) -> None:
        (folder / "kernel").mkdir()
        kernel = make_kernel(folder / "kernel")
        execute(ROOT / "colabs" / "01_token_transforms.ipynb", kernel, folder / "01")
        (folder / "kernel.json").write_text(json.dumps({k: str(v) for k, v in kernel.items()}))

    folder = once("wheel_kernel", build)
    kernel = json.loads((folder / "kernel.json").read_text())
    return {k: pathlib.Path(v) for k, v in kernel.items()} | {"runs_01": folder / "01" / "runs"}


@pytest.fixture(scope="session")
def notebook_run(wheel_kernel, once):
    """``notebook_run(stem)`` executes ``colabs/<stem>.ipynb`` in ``wheel_kernel`` once per session
    and returns the folder its experiments wrote to."""
    from tests._notebooks import ROOT, execute

    def run_notebook(stem: str) -> pathlib.Path:
        if stem == "01_token_transforms":  # run by wheel_kernel: its install cell installs pruneax
            return wheel_kernel["runs_01"]
        path = ROOT / "colabs" / f"{stem}.ipynb"
        return once(f"notebook-{stem}", lambda d: execute(path, wheel_kernel, d)) / "runs"

    return run_notebook
