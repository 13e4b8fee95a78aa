"""Pins the public surface of pruneax.tokens: any change to it must be deliberate."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import pruneax.tokens as T

PUBLIC = [
    "INPUTS",
    "METHODS",
    "Method",
    "budget",
    "cls_attention",
    "contextual_merge",
    "coverage",
    "coverage_matrix",
    "dominant_contextual",
    "feather",
    "flowcut_prune_count",
    "flowcut_scores",
    "flowcut_select",
    "flowcut_step",
    "focal_select",
    "focal_significance",
    "fuse_pruned",
    "gather",
    "get_method",
    "hiprune",
    "hiprune_anchors",
    "holov",
    "holov_chunks",
    "kcenter",
    "keep_mask",
    "last_query_attention",
    "maxmin_diversity",
    "maxsum_diversity",
    "query_key_attention",
    "random",
    "received_attention",
    "register",
    "select_tokens",
    "tome_merge",
    "topk",
    "uniform",
    "uniform_grid",
    "unprotected_positions",
    "unregister",
    "with_protected",
]

# The registry: its record type, the read-only table and the input names (not functions).
NOT_FUNCTIONS = ["INPUTS", "METHODS", "Method"]
FUNCTIONS = [n for n in PUBLIC if n not in NOT_FUNCTIONS]

# Selectors: (features or scores, k, ...) -> int32 [k] unique sorted indices.
SELECTORS = [
    "coverage",
    "feather",
    "hiprune",
    "holov",
    "kcenter",
    "maxmin_diversity",
    "maxsum_diversity",
    "random",
    "topk",
]


def test_all_is_pinned():
    assert list(T.__all__) == PUBLIC


def test_all_is_sorted_and_unique():
    assert list(T.__all__) == sorted(set(T.__all__))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_name_is_importable(name):
    module = importlib.import_module("pruneax.tokens")
    obj = getattr(module, name)
    assert callable(obj)
    namespace: dict = {}
    exec(f"from pruneax.tokens import {name}", namespace)
    assert namespace[name] is obj


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_function_is_documented(name):
    obj = getattr(T, name)
    assert inspect.isfunction(obj), f"{name} is {type(obj).__name__}, expected a plain function"
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    assert "Returns" in doc, f"{name}'s docstring has no Returns section"
    # Defined in a private module of the package, re-exported explicitly.
    module = obj.__module__
    assert module.startswith("pruneax.tokens._"), module


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_function_is_typed(name):
    """DESIGN.md: signatures are typed (every parameter and the return value)."""
    sig = inspect.signature(getattr(T, name))
    untyped = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
    assert not untyped, f"{name}: untyped parameters {untyped}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"


@pytest.mark.parametrize("name", SELECTORS)
def test_selector_docstrings(name):
    """Selectors document shapes, errors and the paper, and promise the index contract."""
    doc = inspect.getdoc(getattr(T, name))
    for section in ("Args:", "Returns:", "Raises:"):
        assert section in doc, f"{name}: missing {section}"
    assert "int32 [k]" in doc and "sorted" in doc, f"{name}: Returns does not state the contract"
    if name != "random":
        assert "References:" in doc, f"{name}: missing References"


@pytest.mark.parametrize("name", SELECTORS)
def test_selector_budget_is_keyword_or_positional_k(name):
    params = inspect.signature(getattr(T, name)).parameters
    assert "k" in params, f"{name} has no budget argument k"
    assert params["k"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_no_accidental_reexports():
    """Every public name in dir(pruneax.tokens) is in __all__; the rest are private modules."""
    public = {n for n in dir(T) if not n.startswith("_")}
    assert public == set(T.__all__), sorted(public ^ set(T.__all__))
    for n in dir(T):
        if n.startswith("_") and not n.startswith("__"):
            assert isinstance(getattr(T, n), types.ModuleType), n


def test_package_docstring():
    assert T.__doc__ and "int32" in T.__doc__


def test_imports_only_jax_numpy_optax():
    """DESIGN.md: pruneax/tokens imports only jax, numpy and optax (plus the standard library)."""
    import ast
    import pathlib
    import sys

    allowed = {"jax", "numpy", "optax", "pruneax"} | set(sys.stdlib_module_names)
    bad = []
    for path in pathlib.Path(T.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            bad += [f"{path.name}: {r}" for r in roots if r not in allowed]
            if any(r == "pruneax" for r in roots):
                mods = [node.module] if isinstance(node, ast.ImportFrom) else []
                bad += [f"{path.name}: {m}" for m in mods if not m.startswith("pruneax.tokens")]
    assert not bad, bad
