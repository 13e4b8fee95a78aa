"""The core's declared lower bounds are tested, not guessed: a fresh virtual environment outside
the repository's own gets exactly the minimum versions pyproject.toml declares for the core
(``jax>=0.10.0`` -> ``jax==0.10.0``, and so on) and runs the core's oracle-parity tests and the
docstring examples of ``pruneax.tokens``, ``pruneax.weights`` and ``pruneax.ops`` with them.

It installs from the package index (about 200 MB, mostly jaxlib; pip's cache makes repeats
fast) and takes about 3.5 minutes on a 2-core CPU: in the slow selection
(``python -m pytest -m slow tests/test_min_versions.py``), to keep the default suite's time.
"""

from __future__ import annotations

import re
import tomllib
import venv

import pytest

from tests._wheel import ROOT, run

pytestmark = pytest.mark.slow

CORE_TESTS = ["tests/test_oracle_parity.py", "pruneax/tokens", "pruneax/weights", "pruneax/ops"]


def _minimum_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for requirement in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
        assert match, f"core requirement {requirement!r} has no plain lower bound to test"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_core_runs_on_its_declared_minimum_versions(tmp_path):
    pins = _minimum_pins()
    assert set(pins) == {"jax", "optax", "numpy"}
    env_dir = tmp_path / "min"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    exact = [f"{name}=={version}" for name, version in pins.items()]
    run([py, "-m", "pip", "install", "-q", *exact, "pytest>=8", "hypothesis>=6.100"], ROOT)
    listed = run([py, "-m", "pip", "list", "--format=freeze"], ROOT).lower()
    for name, version in pins.items():  # pip normalises "2.0" to "2.0.0"
        assert re.search(rf"^{name}=={re.escape(version)}(\.0)*$", listed, re.M), (name, listed)
    assert "flax==" not in listed
    out = run([py, "-m", "pytest", "-p", "no:cacheprovider", "-q", *CORE_TESTS], ROOT)
    assert re.search(r"\d+ passed", out) and "failed" not in out, out[-2000:]
