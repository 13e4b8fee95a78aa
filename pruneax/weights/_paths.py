"""Which leaves of a parameter pytree are prunable, and how leaves are named.

A leaf's name is its key path joined by ``/``: ``{"dense": {"kernel": w}}`` -> ``"dense/kernel"``,
a Flax NNX ``State`` leaf ``['conv1']['kernel'].value`` -> ``"conv1/kernel"`` (the trailing
``.value`` of a ``Variable`` is dropped). Patterns are shell globs over those names
(``fnmatch``): ``"*kernel"``, ``"out/*"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

Predicate = Callable[[str, Any], bool]
Selector = Predicate | str | Sequence[str] | None


def _key_name(key: Any) -> str | None:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return None if key.name == "value" else key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_name(path: Sequence[Any]) -> str:
    """``"a/b/kernel"`` for a ``jax.tree_util`` key path.

    Example:
      >>> import jax
      >>> from pruneax import weights as W
      >>> [(path, leaf)] = jax.tree_util.tree_flatten_with_path({"dense": {"kernel": 0}})[0]
      >>> W.path_name(path)
      'dense/kernel'
    """
    if isinstance(path, str | bytes) or not isinstance(path, Iterable):
        raise ValueError(
            f"path must be a key path (a sequence of jax.tree_util keys); got {path!r}"
        )
    try:
        keys = list(path)
    except TypeError:  # a 0-d array
        raise ValueError(f"path must be a key path (a sequence of keys); got {path!r}") from None
    return "/".join(n for n in (_key_name(k) for k in keys) if n is not None)


def leaf_names(tree: Any) -> list[str]:
    """Names of the leaves of ``tree`` in ``jax.tree.leaves`` order.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> W.leaf_names(params)
      ['dense/bias', 'dense/kernel']
    """
    return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def by_name(tree: Any) -> dict[str, Any]:
    """``{name: leaf}`` in leaf order (None leaves of a mask tree included)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {path_name(p): leaf for p, leaf in flat}


def default_prunable(name: str, leaf: Any) -> bool:
    """Dense and convolution kernels: a leaf named ``kernel`` with at least 2 dimensions.

    Biases, norm scales and embeddings-by-other-names are never pruned by default.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.default_prunable("dense/kernel", jnp.zeros((3, 4)))
      True
      >>> W.default_prunable("dense/bias", jnp.zeros(4))
      False
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a leaf name (a str); got {type(name).__name__} {name!r}")
    try:
        return name.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2
    except ValueError:  # a ragged list
        raise ValueError(f"leaf must be an array; got {type(leaf).__name__}") from None


def as_predicate(prunable: Selector, name: str = "prunable") -> Predicate:
    """Turns a predicate, a glob, a list of globs, or None (the default) into a predicate;
    ``name`` is the argument's name in the error message."""
    if prunable is None:
        return default_prunable
    if callable(prunable):
        return prunable
    if isinstance(prunable, str):
        prunable = [prunable]
    if isinstance(prunable, Sequence) and all(isinstance(p, str) for p in prunable):
        patterns = list(prunable)
        return lambda name, leaf: any(fnmatch.fnmatchcase(name, p) for p in patterns)
    raise ValueError(
        f"{name} must be a predicate (name, leaf) -> bool, a glob, a list of globs or None; "
        f"got {prunable!r}"
    )


def prunable_names(params: Any, prunable: Selector = None) -> list[str]:
    """Names of the prunable leaves of ``params``, in leaf order.

    Raises:
      ValueError: if the selection matches no leaf (the message lists the leaf names).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> W.prunable_names(params), W.prunable_names(params, "*/bias")
      (['dense/kernel'], ['dense/bias'])
    """
    return select_names(params, prunable)


def select_names(
    tree: Any, prunable: Selector = None, tree_name: str = "params", name: str = "prunable"
) -> list[str]:
    """``prunable_names`` of any tree; errors name the tree ``tree_name`` and the selector
    ``name`` (``scores`` and ``prunable`` for the mask functions)."""
    pred = as_predicate(prunable, name)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [path_name(p) for p, leaf in flat if pred(path_name(p), leaf)]
    if not names:
        all_names = [path_name(p) for p, _ in flat]
        raise ValueError(
            f"{name} selects no leaf of {tree_name}; leaves are {all_names[:20]}"
            + (" ..." if len(all_names) > 20 else "")
        )
    return names


def overridden(
    names: Sequence[str], overrides: Mapping[str, Any] | None, what: str
) -> dict[str, Any]:
    """``{name: value}`` for the names that a glob of ``overrides`` matches (first match wins).

    Raises:
      ValueError: if an override pattern matches no name.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must be a mapping {{glob: {what}}} or None; got {overrides!r}")
    out: dict[str, Any] = {}
    for pattern, value in (overrides or {}).items():
        if not isinstance(pattern, str):
            raise ValueError(f"overrides keys must be globs (str); got {pattern!r}")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"overrides pattern {pattern!r} ({what}) matches no prunable leaf; prunable "
                f"leaves are {list(names)}"
            )
        for n in hits:
            out.setdefault(n, value)
    return out


def map_named(fn: Callable[[str, Any], Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` that also passes each leaf's name as the first argument."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    out = [fn(path_name(p), leaf, *(r[i] for r in rest_leaves)) for i, (p, leaf) in enumerate(flat)]
    return jax.tree.unflatten(treedef, out)
