"""Weight scores: magnitude, random, saliency (SNIP). Higher score = more worth keeping."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks, _paths


def _real(name: str, x: Any, what: str, where: str) -> jax.Array:
    """``x`` as float32; raises if it is complex (the cast would drop the imaginary part)."""
    if jnp.issubdtype(_checks.numeric(x, f"{what} {name!r}", where)[1], jnp.complexfloating):
        raise ValueError(
            f"{where}: {what} {name!r} must be real; got dtype {jnp.result_type(x)} (the "
            "imaginary part would be dropped)"
        )
    return jnp.asarray(x, jnp.float32)


def magnitude_scores(params: Any) -> Any:
    """``|w|`` per weight, float32 (magnitude pruning; LTH, open_lth, jaxpruner).

    Args:
      params: pytree of real weights.

    Returns:
      pytree of float32 scores with the structure of ``params``.

    Raises:
      ValueError: if a leaf is complex (the message names the leaf).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.magnitude_scores({"w": jnp.array([-2.0, 1.0])})["w"].tolist()
      [2.0, 1.0]
    """
    return _paths.map_named(lambda n, w: jnp.abs(_real(n, w, "params", "magnitude_scores")), params)


def random_scores(key: jax.Array, params: Any) -> Any:
    """Uniform [0, 1) scores from an explicit key, one fresh subkey per leaf (random pruning).

    Example:
      >>> import jax
      >>> from pruneax import weights as W
      >>> s = W.random_scores(jax.random.key(0), {"w": jax.numpy.zeros((2, 3))})["w"]
      >>> s.shape, bool(((s >= 0) & (s < 1)).all())
      ((2, 3), True)
    """
    _checks.prng_key(key, "key", "random_scores")
    leaves, treedef = jax.tree.flatten(params)
    shapes = [_checks.numeric(w, "params", "random_scores")[0] for w in leaves]
    keys = jax.random.split(key, max(1, len(leaves)))
    return jax.tree.unflatten(
        treedef, [jax.random.uniform(k, shape) for k, shape in zip(keys, shapes, strict=False)]
    )


def saliency_scores(params: Any, grads: Any) -> Any:
    """``|w * g|`` per weight (SNIP's connection sensitivity at initialisation).

    References:
      Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.

    Args:
      params: pytree of real weights.
      grads: pytree of real gradients with the structure of ``params``.

    Returns:
      pytree of float32 scores with the structure of ``params``.

    Raises:
      ValueError: if ``grads`` does not have the structure of ``params``, or a weight or
        gradient is complex (the message names the leaf).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, 0.5])}
      >>> W.saliency_scores(params, grads)["w"].tolist()
      [3.0, 1.0]
    """
    try:
        return _paths.map_named(_saliency, params, grads)
    except ValueError as e:
        if "saliency_scores" in str(e):
            raise
        raise ValueError(f"saliency_scores: grads must match the structure of params: {e}") from e


def _saliency(name, w, g):
    if np.shape(w) != np.shape(g):
        raise ValueError(
            f"saliency_scores: grads {name!r} has shape {np.shape(g)}, params {np.shape(w)}"
        )
    where = "saliency_scores"
    return jnp.abs(
        _real(name, w, "params", where) * _real(name, g, "grads (structured as params)", where)
    )
