"""An optax wrapper that keeps pruned weights exactly zero, with the masks in its state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pruneax.weights import _paths


class MaskedState(NamedTuple):
    """State of :func:`masked_optimizer`: the mask tree and the inner optimizer's state."""

    masks: Any
    inner_state: optax.OptState


def _full(masks, like):
    """Full-shape bool masks for every leaf of ``like`` (True where no mask or no masks), so
    the optimizer state keeps one structure and shape whatever masks are installed."""
    if masks is None:
        return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), like)
    return _paths.map_named(
        lambda _, x, m: jnp.ones(jnp.shape(x), bool) if m is None else jnp.asarray(m, bool),
        like,
        masks,
    )


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
    outgoing update of a pruned weight is ``-param`` when ``params`` are passed (so the weight
    lands on exactly 0 even if it was not zero) and 0 otherwise.

    Args:
      inner: any optax transformation (e.g. ``optax.adam(1.2e-3)``).
      masks: a mask tree for the parameters (see ``layerwise_masks``); None keeps every weight
        until masks are installed with :func:`set_masks`.

    Returns:
      A ``GradientTransformation`` whose state is a :class:`MaskedState`. Change masks between
      rounds with :func:`set_masks` (one optimizer object then serves every round, so a jitted
      step that takes it as a static argument compiles once).

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

    def init(params):
        full = _full(masks, params)
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
            out = jax.tree.map(lambda u, m, p: jnp.where(m, u, -p), out, state.masks, params)
        return out, MaskedState(state.masks, inner_state)

    return optax.GradientTransformation(init, update)


def set_masks(state: MaskedState, masks: Any, inner: optax.GradientTransformation) -> MaskedState:
    """New masks for a :func:`masked_optimizer` state; the inner moments of newly pruned weights
    are zeroed so no stale momentum reaches them.

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
    full = _full(masks, state.masks)
    return MaskedState(full, _mask_moments(inner, state.inner_state, full))
