"""Importance of heads (GQA groups) and MLP channels: weight magnitude or first-order Taylor.

``"magnitude"`` is the L2 norm of all the unit's weights; ``"taylor"`` is the first-order Taylor
estimate of the loss change when the unit is removed, ``|sum_w w * dL/dw|`` over the unit's
weights, with ``dL/dw`` averaged over calibration batches (``taylor_grads``).

References: Michel et al., NeurIPS 2019 (arXiv:1905.10650); Molchanov et al., CVPR 2019
(arXiv:1906.10771); Ma et al., "LLM-Pruner", NeurIPS 2023 (arXiv:2305.11627).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models.structured._arch import Slice, arch_of_model
from pruneax.weights._paths import by_name

METHODS = ("magnitude", "taylor")


def _units_of(x: jax.Array, s: Slice) -> jax.Array:
    """[units, entries per unit] view of the slice ``s`` of leaf ``x``."""
    x = jnp.moveaxis(jnp.asarray(x), s.axis, 0)
    n = x.shape[0] // s.width
    return x.reshape(n, s.width * int(np.prod(x.shape[1:])))


def _importance(model: Any, method: str, grads: Any, which: int, where: str):
    arch = arch_of_model(model, where)
    config = model.config
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {list(METHODS)}; got {method!r}")
    params = by_name(nnx.state(model, nnx.Param))
    if method == "taylor":
        if grads is None:
            raise ValueError(
                f"{where}: method='taylor' needs grads (the mean gradient of the loss, e.g. "
                "from taylor_grads)"
            )
        g = by_name(grads)
        missing = sorted(set(params) - set(g))
        if missing:
            raise ValueError(
                f"{where}: grads must have the model's parameter leaves; missing {missing[:4]}"
            )
    elif grads is not None:
        raise ValueError(f"{where}: grads is only used by method='taylor'; got method={method!r}")
    counts = arch.unit_counts(config)[which]
    out = []
    for i, slices in enumerate(arch.layout(config)[which]):
        total = jnp.zeros((counts[i],), jnp.float32)
        for s in slices:
            w = _units_of(params[s.name], s).astype(jnp.float32)
            if method == "magnitude":
                total = total + jnp.sum(w * w, axis=1)
            else:
                d = _units_of(g[s.name], s).astype(jnp.float32)
                total = total + jnp.sum(w * d, axis=1)
        out.append(jnp.sqrt(total) if method == "magnitude" else jnp.abs(total))
    return tuple(out)


def head_importance(
    model: nnx.Module, *, method: str = "magnitude", grads: Any = None
) -> tuple[jax.Array, ...]:
    """Importance of every attention head (ViT) or GQA group (``LlamaLM``) of every layer.

    ``"magnitude"``: the L2 norm of the unit's weights (the query / key / value columns and
    their biases, the output-projection rows). ``"taylor"``: ``|sum_w w * g_w|`` over the same
    weights, with ``g`` the loss gradient (averaged over calibration batches): the first-order
    Taylor estimate of the loss change when the unit is set to zero.

    Args:
      model: a ``ViT`` or a ``LlamaLM`` (pruned or not).
      method: ``"magnitude"`` or ``"taylor"``.
      grads: for ``"taylor"``, gradients with the leaves of ``nnx.state(model, nnx.Param)``
        (``taylor_grads``).

    Returns:
      One float32 array per layer, [heads of that layer] (ViT) or [key / value heads] (Llama).

    Raises:
      ValueError: for a model that is neither, an unknown method, or missing / unexpected
        ``grads``.

    References: Michel et al., NeurIPS 2019; Molchanov et al., "Importance Estimation for
      Neural Network Pruning", CVPR 2019, Eq. 3-4 (first-order Taylor, group sum); Ma et al.,
      "LLM-Pruner", NeurIPS 2023, Sec. 3.2 (vector-wise first-order importance).

    Example:
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=2), rngs=nnx.Rngs(0))
      >>> [s.shape for s in M.head_importance(model)]  # one score per head, per layer
      [(4,), (4,)]
    """
    return _importance(model, method, grads, 0, "head_importance")


def mlp_importance(
    model: nnx.Module, *, method: str = "magnitude", grads: Any = None
) -> tuple[jax.Array, ...]:
    """Importance of every MLP channel of every layer (same methods as ``head_importance``).

    A channel's weights: the ``fc1`` column and bias and the ``fc2`` row (ViT); the
    ``gate_proj`` and ``up_proj`` columns (and biases) and the ``down_proj`` row (SwiGLU).

    Returns:
      One float32 array per layer, [MLP width of that layer].

    Raises:
      ValueError: as ``head_importance``.

    References: Molchanov et al., CVPR 2019; Ma et al., "LLM-Pruner", NeurIPS 2023.

    Example:
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=2), rngs=nnx.Rngs(0))
      >>> [s.shape for s in M.mlp_importance(model)]  # one score per channel, per layer
      [(256,), (256,)]
    """
    return _importance(model, method, grads, 1, "mlp_importance")


def taylor_grads(
    model: nnx.Module, loss_fn: Callable[[Any, Any], jax.Array], batches: Iterable[Any]
) -> nnx.State:
    """The gradient of ``loss_fn`` w.r.t. the model's parameters, averaged over ``batches``.

    Pure ``jax.grad`` over the ``nnx.Param`` state (the model is not modified); one jitted
    gradient function, retraced only for batches of a new shape.

    Args:
      model: any Flax NNX module (a ``ViT`` or a ``LlamaLM`` for the importance functions).
      loss_fn: ``loss_fn(model, batch) -> scalar`` (e.g. cross-entropy of the logits).
      batches: an iterable of at least one batch (any pytree ``loss_fn`` accepts).

    Returns:
      An ``nnx.State`` of the mean gradients, with the structure of ``nnx.state(model,
      nnx.Param)``.

    Raises:
      ValueError: if ``batches`` is empty or ``loss_fn`` does not return a scalar.

    References: Molchanov et al., CVPR 2019 (importance accumulated over mini-batches).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=1), rngs=nnx.Rngs(0))
      >>> loss = lambda m, b: optax.softmax_cross_entropy_with_integer_labels(
      ...     m(b[0]).logits, b[1]).mean()
      >>> batch = (jnp.zeros((2, 28, 28, 1)), jnp.array([3, 7]))
      >>> g = M.taylor_grads(model, loss, [batch])
      >>> [s.shape for s in M.head_importance(model, method="taylor", grads=g)]
      [(4,)]
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, batch):
        value = loss_fn(nnx.merge(graphdef, p, rest), batch)
        if jnp.shape(value) != ():
            raise ValueError(
                f"taylor_grads: loss_fn must return a scalar; got shape {jnp.shape(value)}"
            )
        return value

    grad = jax.jit(jax.grad(loss))
    total, n = None, 0
    for batch in batches:
        g = grad(params, batch)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
        n += 1
    if n == 0:
        raise ValueError("taylor_grads: batches must hold at least one batch; got none")
    return jax.tree.map(lambda x: x / n, total)
