"""An optax wrapper that keeps pruned weights exactly zero, with the masks in its state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pruneax.weights import _checks, _paths


class MaskedState(NamedTuple):
    """State of :func:`masked_optimizer`: the mask tree and the inner optimizer's state."""

    masks: Any
    inner_state: optax.OptState


def _full(masks, like, where):
    """Full-shape bool masks for every leaf of ``like`` (True where no mask or no masks), so
    the optimizer state keeps one structure and shape whatever masks are installed.

    Raises:
      ValueError: (prefixed with ``where``) if ``masks`` does not have the structure of
        ``like`` or a mask's shape differs from its leaf's (no broadcasting: a ``(16, 1)`` mask
        would otherwise prune whole rows of a ``(16, 8)`` kernel).
    """
    if masks is None:
        return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), like)

    def leaf(name, x, m):
        if m is None:
            return jnp.ones(jnp.shape(x), bool)
        if np.shape(m) != np.shape(x):
            raise ValueError(
                f"{where}: mask for {name!r} has shape {np.shape(m)}, parameter {np.shape(x)}"
            )
        return jnp.asarray(m, bool)

    try:
        return _paths.map_named(leaf, like, masks)
    except (ValueError, TypeError) as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: masks do not match the structure of the parameters: {e}") from e


def _apply_full(tree, full_masks):
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), tree, full_masks)


def _mask_moments(inner, inner_state, full_masks):
    """Zeroes ``inner``'s per-parameter state (moments, momentum) at pruned positions."""
    return optax.tree_utils.tree_map_params(
        inner,
        lambda v, m: jnp.where(m, v, jnp.zeros((), v.dtype)),
        inner_state,
        full_masks,
        transform_non_params=lambda v: v,
    )


def masked_optimizer(
    inner: optax.GradientTransformation, masks: Any = None
) -> optax.GradientTransformation:
    """Wraps ``inner`` so that pruned weights stay exactly zero through training.

    Each update: gradients of pruned weights are zeroed before ``inner`` sees them, so
    ``inner``'s per-parameter state (Adam's moments, SGD's momentum), zeroed at pruned positions
    by ``init`` and :func:`set_masks`, stays zero there for elementwise optimizers; the
    outgoing update of a pruned weight is ``-param`` when ``params`` are passed (so a finite
    weight lands on exactly 0 even if it was not zero) and 0 otherwise.

    A pruned weight that is NaN or infinite cannot be cleared by an additive update (``NaN + u``
    is NaN for every ``u``): its update is 0, so no NaN enters the update tree, and
    ``W.apply_masks(optax.apply_updates(params, updates), state.masks)`` sets it to exactly 0
    (``apply_masks`` selects with ``where``; on finite weights it changes nothing).

    Args:
      inner: any optax transformation (e.g. ``optax.adam(1.2e-3)``).
      masks: a mask tree for the parameters (see ``layerwise_masks``); None keeps every weight
        until masks are installed with :func:`set_masks`.

    Returns:
      A ``GradientTransformation`` whose state is a :class:`MaskedState`. Change masks between
      rounds with :func:`set_masks` (one optimizer object then serves every round, so a jitted
      step that takes it as a static argument compiles once).

    Raises:
      ValueError: from ``init``, if ``masks`` does not have the structure of the parameters or
        a mask's shape differs from its leaf's (the message names the leaf and both shapes).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> import optax
      >>> masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
      >>> opt = W.masked_optimizer(optax.sgd(0.1), masks)
      >>> grads = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> (optax.apply_updates(params, updates)["dense"]["kernel"] == 0).tolist()
      [[True, False], [False, True]]
    """
    _checks.transformation(inner, "inner", "masked_optimizer")

    def init(params):
        full = _full(masks, params, "masked_optimizer")
        return MaskedState(full, inner.init(_apply_full(params, full)))

    def update(updates, state, params=None):
        grads = _apply_full(updates, state.masks)
        # The gradients of pruned weights are 0, so the moments of an elementwise optimizer
        # (Adam's mu/nu, SGD's trace), zeroed when the masks were installed, stay exactly 0:
        # no per-step pass over the optimizer state is needed.
        out, inner_state = inner.update(grads, state.inner_state, params)
        if params is None:
            out = _apply_full(out, state.masks)
        else:
            out = jax.tree.map(_reset_pruned, out, state.masks, params)
        return out, MaskedState(state.masks, inner_state)

    return optax.GradientTransformation(init, update)


def _reset_pruned(u, m, p):
    """The update of one leaf: ``u`` where kept, ``-p`` where pruned (0 if ``p`` is not finite)."""
    p = jnp.asarray(p)
    reset = jnp.where(jnp.isfinite(p), -p, jnp.zeros((), p.dtype))
    return jnp.where(m, u, reset)


def set_masks(state: MaskedState, masks: Any, inner: optax.GradientTransformation) -> MaskedState:
    """New masks for a :func:`masked_optimizer` state; the inner moments of newly pruned weights
    are zeroed so no stale momentum reaches them.

    Args:
      state: the current :class:`MaskedState` (from ``init`` or a previous ``update``).
      masks: the new mask tree (None for a leaf keeps it whole).
      inner: the inner transformation ``masked_optimizer`` wraps (to find its per-parameter
        state).

    Returns:
      a :class:`MaskedState` with the new masks and the inner state zeroed where pruned.

    Raises:
      ValueError: if ``masks`` does not have the structure of the parameters or a mask's shape
        differs from its leaf's (the message names the leaf and both shapes).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> import optax
      >>> inner = optax.adam(1e-3)
      >>> opt = W.masked_optimizer(inner)  # no masks yet: every weight trains
      >>> masks = W.layerwise_masks(W.magnitude_scores(params), 0.75)
      >>> W.set_masks(opt.init(params), masks, inner).masks["dense"]["kernel"].tolist()
      [[False, True], [False, False]]
    """
    if not isinstance(state, MaskedState):
        raise ValueError(f"set_masks: state must be the MaskedState of masked_optimizer; got "
                         f"{type(state).__name__}")  # fmt: skip
    _checks.transformation(inner, "inner", "set_masks")
    full = _full(masks, state.masks, "set_masks")
    return MaskedState(full, _mask_moments(inner, state.inner_state, full))
