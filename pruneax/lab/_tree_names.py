"""Leaves of a pytree named by their paths: how ``Checkpoints`` stores and finds them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _entry(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_name(path: Sequence[Any]) -> tuple[str, ...]:
    """The name of the leaf at ``path`` (from ``jax.tree_util.tree_flatten_with_path``): one
    string per path entry (a dict key, an attribute name, a sequence index); ``("value",)``
    for a tree that is a single leaf. Dots become underscores (orbax joins names with dots).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax.lab._tree_names import leaf_name
      >>> tree = ({"blocks": [{"kernel": jnp.ones(2)}]}, jnp.zeros(()))
      >>> [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      [('0', 'blocks', '0', 'kernel'), ('1',)]
    """
    return tuple(_entry(k).replace(".", "_") for k in path) or ("value",)


def nest(names: Sequence[tuple[str, ...]], values: Sequence[Any]) -> dict[str, Any]:
    """The nested dict holding ``values[i]`` at ``names[i]``; two equal names (or one the
    prefix of another) raise ``ValueError`` naming them."""
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        d = out
        for i, key in enumerate(name[:-1]):
            d = d.setdefault(key, {})
            if not isinstance(d, dict):
                raise ValueError(f"two leaves are named {'/'.join(name[: i + 1])}")
        if name[-1] in d:
            raise ValueError(f"two leaves are named {'/'.join(name)}")
        d[name[-1]] = value
    return out


def get(tree: Any, name: tuple[str, ...]) -> Any:
    """The value at ``name`` in a nested dict."""
    for key in name:
        tree = tree[key]
    return tree


def flat_names(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{name: leaf}`` of a nested dict (e.g. a checkpoint's metadata tree)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(flat_names(v, (*prefix, str(k))))
    return out


def numbered(saved: Any) -> bool:
    """Whether a checkpoint's tree is the pre-session-12 layout ``{"leaves": {"00000": ...}}``."""
    if not isinstance(saved, dict) or set(saved) != {"leaves"}:
        return False
    inner = saved["leaves"]
    return isinstance(inner, dict) and all(len(k) == 5 and k.isdigit() for k in inner)


def check_names(saved: Any, names: Sequence[tuple[str, ...]], shapes: Sequence[tuple]) -> None:
    """Raises ``ValueError`` naming every leaf the checkpoint lacks, holds in addition, or holds
    with another shape than the model's."""
    have = flat_names(saved)
    want = dict(zip(names, shapes, strict=True))
    show = lambda ns: ", ".join("/".join(n) for n in sorted(ns)[:8]) + " ..." * (len(ns) > 8)
    problems = []
    if missing := set(want) - set(have):
        problems.append(f"missing from the checkpoint: {show(missing)}")
    if extra := set(have) - set(want):
        problems.append(f"not in the model: {show(extra)}")
    for n in sorted(set(want) & set(have)):
        shape = tuple(getattr(have[n], "shape", want[n]))
        if shape != tuple(want[n]):
            problems.append(f"{'/'.join(n)} has shape {shape} in the checkpoint, {want[n]} here")
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems))
