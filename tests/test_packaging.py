"""Packaging: the core needs no Flax, every third-party import is declared, the metadata is
what a wheel needs (SPDX licence, LICENSE, py.typed, CHANGELOG)."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# import name -> distribution name, where they differ
DISTRIBUTION = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "orbax": "orbax-checkpoint",
    "tensorflow_datasets": "tensorflow-datasets",
    "yaml": "pyyaml",
}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared(extras: list[str] | None = None) -> set[str]:
    names = {_name(r) for r in PROJECT["dependencies"]}
    groups = PROJECT["optional-dependencies"]
    for extra in groups if extras is None else extras:
        names |= {_name(r) for r in groups[extra] if not r.startswith("pruneax")}
    return names


def _third_party_imports(folder: pathlib.Path) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in stdlib and m not in {"pruneax", "__future__"}}


def test_core_dependencies_are_jax_optax_numpy_only():
    assert {_name(r) for r in PROJECT["dependencies"]} == {"jax", "optax", "numpy"}
    for folder in ("tokens", "weights", "ops"):
        imports = _third_party_imports(ROOT / "pruneax" / folder)
        assert imports <= {"jax", "optax", "numpy", "jaxtyping"}, (folder, imports)


# imported only inside ``try: ... except ImportError`` (used when present)
OPTIONAL = {"threadpoolctl": "pruneax/lab/_machine.py"}


def test_every_import_of_the_package_is_declared():
    declared = _declared()
    for module, file in OPTIONAL.items():
        assert "except ImportError" in (ROOT / file).read_text(), module
    for module in sorted(_third_party_imports(ROOT / "pruneax") - set(OPTIONAL)):
        dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
        assert dist in declared, f"pruneax imports {module!r} but no extra declares {dist!r}"
    models = _declared(["models"])
    assert {"flax", "ml-dtypes"} <= models


def test_core_imports_and_runs_without_flax():
    code = textwrap.dedent(
        """
        import sys
        for blocked in ("flax", "orbax", "optax.contrib._x"):
            sys.modules[blocked] = None
        import jax.numpy as jnp
        import pruneax
        from pruneax import ops, tokens, weights
        idx = tokens.select_tokens("topk", 2, scores=jnp.asarray([0.1, 0.9, 0.5, 0.2]))
        assert idx.tolist() == [1, 2], idx
        assert "flax" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_wheel_metadata_files():
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert (ROOT / "pruneax" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["pruneax"]
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    requires = PYPROJECT["build-system"]["requires"]
    assert any(r.startswith("setuptools>=77") for r in requires)  # SPDX license strings
