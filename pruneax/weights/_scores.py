"""Weight scores: magnitude, random, saliency (SNIP). Higher score = more worth keeping."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def magnitude_scores(params: Any) -> Any:
    """``|w|`` per weight, float32 (magnitude pruning; LTH, open_lth, jaxpruner).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.magnitude_scores({"w": jnp.array([-2.0, 1.0])})["w"].tolist()
      [2.0, 1.0]
    """
    return jax.tree.map(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)), params)


def random_scores(key: jax.Array, params: Any) -> Any:
    """Uniform [0, 1) scores from an explicit key, one fresh subkey per leaf (random pruning).

    Example:
      >>> import jax
      >>> from pruneax import weights as W
      >>> s = W.random_scores(jax.random.key(0), {"w": jax.numpy.zeros((2, 3))})["w"]
      >>> s.shape, bool(((s >= 0) & (s < 1)).all())
      ((2, 3), True)
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(1, len(leaves)))
    return jax.tree.unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(w)) for k, w in zip(keys, leaves, strict=False)]
    )


def saliency_scores(params: Any, grads: Any) -> Any:
    """``|w * g|`` per weight (SNIP's connection sensitivity at initialisation).

    References:
      Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.

    Raises:
      ValueError: if ``grads`` does not have the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, 0.5])}
      >>> W.saliency_scores(params, grads)["w"].tolist()
      [3.0, 1.0]
    """
    try:
        return jax.tree.map(_saliency, params, grads)
    except ValueError as e:
        if "saliency_scores" in str(e):
            raise
        raise ValueError(f"saliency_scores: grads must match the structure of params: {e}") from e


def _saliency(w, g):
    if np.shape(w) != np.shape(g):
        raise ValueError(
            f"saliency_scores: a gradient of shape {np.shape(g)} for a weight of shape "
            f"{np.shape(w)}"
        )
    return jnp.abs(jnp.asarray(w, jnp.float32) * jnp.asarray(g, jnp.float32))
