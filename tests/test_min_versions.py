"""The declared lower bounds are tested, not guessed: a fresh virtual environment outside the
repository's own gets exactly the minimum versions pyproject.toml declares (``jax>=0.10.0`` ->
``jax==0.10.0``, and so on), first those of the core, then those of the ``models`` and
``experiments`` extras.

With the core alone (no flax may arrive) it runs the core's oracle-parity tests and the
docstring examples of ``pruneax.tokens``, ``pruneax.weights`` and ``pruneax.ops``; with the extras'
minimums added, the checkpoint tests (orbax: restore by name, asynchronous saves), the config
tests, the token demo and the docstring examples of ``pruneax.lab`` and ``pruneax.data``.

It installs from the package index (about 300 MB, mostly jaxlib; pip's cache makes repeats
fast) and takes about 4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import re
import tomllib
import venv

from packaging.version import Version

from tests._wheel import ROOT, run

CORE_TESTS = ["tests/test_oracle_parity.py", "pruneax/tokens", "pruneax/weights", "pruneax/ops"]
EXTRA_TESTS = [
    "tests/test_checkpoints.py",
    "tests/test_config_flags.py",
    "tests/test_token_demo.py",
    "pruneax/lab",
    "pruneax/data",
]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _minimum_pins(requirements: list[str]) -> dict[str, str]:
    """{normalised name: lower bound} of ``name>=version`` requirements; references to
    pruneax's own extras are skipped (they are pinned where they are declared)."""
    pins = {}
    for requirement in requirements:
        if requirement.startswith("pruneax["):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
        assert match, f"requirement {requirement!r} has no plain lower bound to test"
        pins[_name(match.group(1))] = match.group(2)
    return pins


def _installed(py: str) -> dict[str, Version]:
    listed = run([py, "-m", "pip", "list", "--format=freeze"], ROOT)
    rows = (line.split("==") for line in listed.splitlines() if "==" in line)
    return {_name(name): Version(version) for name, version in rows}


def _install_exactly(py: str, pins: dict[str, str], *also: str) -> dict[str, Version]:
    run([py, "-m", "pip", "install", "-q", *(f"{n}=={v}" for n, v in pins.items()), *also], ROOT)
    installed = _installed(py)
    for name, version in pins.items():  # Version("10") == Version("10.0.0")
        assert installed.get(name) == Version(version), (name, installed.get(name))
    return installed


def _pytest(py: str, paths: list[str]) -> None:
    out = run([py, "-m", "pytest", "-p", "no:cacheprovider", "-q", *paths], ROOT)
    assert re.search(r"\d+ passed", out) and " failed" not in out, out[-2000:]


def test_declared_minimum_versions_run_the_core_then_the_extras(tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _minimum_pins(project["dependencies"])
    assert set(core) == {"jax", "optax", "numpy"}
    extras = project["optional-dependencies"]
    extra = _minimum_pins(extras["models"] + extras["experiments"])
    assert {"flax", "orbax-checkpoint", "tensorboardx"} <= set(extra)

    env_dir = tmp_path / "min"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    installed = _install_exactly(py, core, "pytest>=8", "hypothesis>=6.100")
    assert "flax" not in installed and "orbax-checkpoint" not in installed
    _pytest(py, CORE_TESTS)

    _install_exactly(py, {**core, **extra})  # the core pins again: nothing may move them
    _pytest(py, EXTRA_TESTS)
