"""The package's layout rules (issue 13, DESIGN.md principle 6), checked on the source.

- Tests use the public API only: no test imports a private pruneax module.
- Every public function has a runnable docstring example (the doctests run with the suite:
  ``--doctest-modules`` over ``pruneax/`` in pyproject.toml).
- Library modules stay short: one architecture per folder, no module over the line limit.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = [
    "pruneax.tokens",
    "pruneax.weights",
    "pruneax.ops",
    "pruneax.graph",
    "pruneax.data",
    "pruneax.lab",
    "pruneax.models",
    "pruneax.models.vit",
    "pruneax.models.llama",
    "pruneax.models.mamba",
    "pruneax.models.vim",
    "pruneax.models.vlm",
    "pruneax.models.convnets",
    "pruneax.models.structured",
]
MAX_LINES = 400  # "no module over ~400 lines" (library modules)
# An experiment module (pruneax/experiments/) is a script read top to bottom: presets, run(),
# tables, plots and its claims; the reusable machinery lives in pruneax.lab. A looser cap.
EXPERIMENT_MAX_LINES = 1100


def _private_imports(path: pathlib.Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for mod in mods:
            parts = mod.split(".")
            if parts[0] == "pruneax" and any(p.startswith("_") for p in parts[1:]):
                bad.append(f"{path.name}:{node.lineno}: {mod}")
    return bad


def _private_attributes(path: pathlib.Path) -> list[str]:
    """``alias._name`` where ``alias`` is a pruneax module imported by the test."""
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pruneax"):
            aliases |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith("pruneax")}
    return [
        f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]


def test_tests_import_only_the_public_api():
    bad = [b for p in sorted((ROOT / "tests").glob("*.py")) for b in _private_imports(p)]
    assert not bad, bad


def test_tests_use_no_private_attribute_of_a_pruneax_module():
    bad = [b for p in sorted((ROOT / "tests").glob("*.py")) for b in _private_attributes(p)]
    assert not bad, bad


def test_the_private_attribute_check_can_fail(tmp_path):
    f = tmp_path / "t.py"
    f.write_text("from pruneax.experiments import lottery_ticket as lt\nlt._prepare(1)\n")
    assert len(_private_attributes(f)) == 1


def test_the_private_import_check_can_fail(tmp_path):
    f = tmp_path / "t.py"
    f.write_text("from pruneax.models.vit import _model\nimport pruneax.tokens._topk\n")
    assert len(_private_imports(f)) == 2
    f.write_text("from pruneax.models.vit import ViT\nimport pruneax.tokens as T\n")
    assert _private_imports(f) == []


def _public_functions() -> list[str]:
    out = []
    for name in PACKAGES:
        mod = importlib.import_module(name)
        out += [f"{name}:{a}" for a in mod.__all__ if inspect.isfunction(getattr(mod, a))]
    return out


@pytest.mark.parametrize("name", _public_functions())
def test_public_function_has_a_runnable_example(name):
    module, attr = name.split(":")
    obj = getattr(importlib.import_module(module), attr)
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{name} has no docstring example"
    # the example must live in a module the doctest run collects (pruneax/...)
    assert obj.__module__.startswith("pruneax."), obj.__module__


def test_doctests_run_with_the_suite():
    text = (ROOT / "pyproject.toml").read_text()
    assert "--doctest-modules" in text and '"pruneax"' in text


def test_models_one_folder_per_architecture_and_short_modules():
    models = ROOT / "pruneax" / "models"
    flat = sorted(p.name for p in models.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"pruneax/models/ should hold only subpackages; found {flat}"
    experiments = ROOT / "pruneax" / "experiments"
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "pruneax").rglob("*.py"))
        if (n := len(p.read_text().splitlines()))
        > (EXPERIMENT_MAX_LINES if p.is_relative_to(experiments) else MAX_LINES)
    }
    assert not long, (
        f"modules over {MAX_LINES} lines ({EXPERIMENT_MAX_LINES} in experiments): {long}"
    )


def test_every_reproduced_experiment_declares_itself():
    """reproduce reads each experiment's own declaration (presets, claims), no table of its own."""
    from pruneax.experiments import reproduce

    assert [e.name for e in reproduce.EXPERIMENTS] == list(reproduce.NAMES)
    for name in reproduce.NAMES:
        module = importlib.import_module(f"pruneax.experiments.{name}")
        exp = module.EXPERIMENT
        assert exp.name == name and exp.claims is module.claims
        assert set(exp.presets) == set(reproduce.PRESETS)
        assert set(exp.presets.values()) <= set(module.PRESETS), name


# Writers allowed to call savefig / Path.write_text directly: they write a temporary file
# and rename it themselves.
ATOMIC_WRITERS = {"pruneax/experiments/_common.py", "pruneax/experiments/vlm_bench/_run_store.py"}


def _direct_writes(path: pathlib.Path) -> list[str]:
    """``savefig`` / ``write_text`` / ``write_bytes`` / ``open(..., "w")`` calls in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("savefig", "write_text", "write_bytes"):
            if not (isinstance(f.value, ast.Name) and f.value.id == "lab"):
                out.append(f"{path.name}:{node.lineno} {f.attr}")
        if isinstance(f, ast.Name) and f.id == "open" and len(node.args) > 1:
            mode = node.args[1]
            if isinstance(mode, ast.Constant) and "w" in str(mode.value):
                out.append(f"{path.name}:{node.lineno} open(..., {mode.value!r})")
    return out


def test_experiments_write_results_atomically():
    """Every result file and plot of an experiment goes through lab.write_* or
    common.save_figure (temporary file + rename): a crash never leaves half a file (issue 19)."""
    found = []
    for path in sorted((ROOT / "pruneax" / "experiments").rglob("*.py")):
        if str(path.relative_to(ROOT)) not in ATOMIC_WRITERS:
            found += _direct_writes(path)
    assert not found, found


def test_the_atomic_write_check_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("fig.savefig(p)\npath.write_text('a')\nlab.write_text(p, 'a')\nopen(p, 'w')\n")
    assert [w.split(" ", 1)[1] for w in _direct_writes(bad)] == [
        "savefig",
        "write_text",
        "open(..., 'w')",
    ]
