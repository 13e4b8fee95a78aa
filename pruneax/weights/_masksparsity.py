"""MaskSparsity (pruning-aware sparse regularisation of batch-norm scales): an L1 subgradient
``s * sign(gamma)`` added to the gradients of BN scales, either on every channel (global
sparsity training) or only on the channels selected for pruning (MaskSparsity), and the
threshold rule that selects those channels.

Reference code: CASIA-IVA-Lab/MaskSparsity, ``netslim/sparse.py`` (``update_bn_by_names_dict``)
and ``netslim/prune.py``. Unlike pruneax's keep-masks, the masks here mark channels TO PRUNE
(True = selected for pruning), as the reference code saves them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pruneax.weights import _checks, _paths
from pruneax.weights._paths import Selector


def _is_bn_scale(name: str, leaf: Any) -> bool:
    """The default scale filter: a 1-d leaf named ``scale`` whose module is a batch norm (its
    name starts with ``bn`` or contains ``batchnorm`` / ``batch_norm``, any case):
    ``"blocks/0/bn1/scale"``, ``"shortcut/bn/scale"``, ``"BatchNorm_0/scale"``."""
    parts = name.split("/")
    if len(parts) < 2 or parts[-1] != "scale" or np.ndim(leaf) != 1:
        return False
    module = parts[-2].lower()
    return module.startswith("bn") or "batchnorm" in module or "batch_norm" in module


def _positive(value: object, name: str, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a float; got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        need = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be a finite float {need}; got {value!r}")
    return v


def _scale_names(params: Any, scale_filter: Selector, where: str) -> list[str]:
    pred = (
        _is_bn_scale if scale_filter is None else _paths.as_predicate(scale_filter, "scale_filter")
    )
    try:
        names = _paths.prunable_names(params, pred)
    except ValueError as e:
        raise ValueError(f"{where}: scale_filter selects no BN scale ({e})") from e
    flat = _paths.by_name(params)
    for name in names:
        dtype = _checks.numeric(flat[name], f"params {name!r}", where)[1]
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{where}: BN scale {name!r} must be a float array; got {dtype}")
    return names


def _check_masks(params: Any, masks: Any, names: list[str], where: str) -> dict[str, Any]:
    """``{name: bool array}`` of the non-None masks (all of them on selected scales)."""
    try:
        by_name = {
            n: m for n, m in zip(_paths.leaf_names(params), _flat_up_to(params, masks), strict=True)
        }
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: masks do not match the structure of params: {e}") from e
    flat = _paths.by_name(params)
    out = {}
    for name, m in by_name.items():
        if m is None:
            continue
        if name not in names:
            raise ValueError(
                f"{where}: masks has an array for {name!r}, which is not a BN scale selected by "
                f"scale_filter (selected: {names})"
            )
        if np.shape(m) != np.shape(flat[name]):
            raise ValueError(
                f"{where}: mask for {name!r} has shape {np.shape(m)}, scale {np.shape(flat[name])}"
            )
        out[name] = jnp.asarray(m, bool)
    return out


def _flat_up_to(params: Any, masks: Any) -> list[Any]:
    return jax.tree_util.tree_structure(params).flatten_up_to(masks)


def bn_l1_gradient(
    params: Any,
    s: float,
    *,
    masks: Any = None,
    scale_filter: Selector = None,
    smooth_l1: bool = False,
    lr: float | None = None,
) -> Any:
    """The sparsity term to add to the gradients: ``s * sign(gamma)`` on BN scales.

    With ``masks=None`` every channel of every selected scale gets the term (global sparsity
    training, step 2 of the pipeline); with a mask tree only the channels marked True
    (selected for pruning) get it and a scale whose mask is None gets none (MaskSparsity,
    step 4). ``smooth_l1=True`` uses ``s * gamma`` instead where ``|gamma| < lr * s`` (the
    reference code's ``smoothL1``). ``sign(0) = 0``.

    Args:
      params: parameter pytree.
      s: regularisation strength, a float ``>= 0`` (5e-4 for ImageNet in the paper).
      masks: None, or a tree with the structure of ``params``: bool arrays of the scale's
        shape (True = to prune) on selected BN scales, None elsewhere (e.g. from
        :func:`bn_prune_masks`).
      scale_filter: which leaves are BN scales (predicate, glob(s)); None: leaves named
        ``scale`` in a module whose name starts with ``bn`` or contains ``batchnorm``.
      smooth_l1: switch to the L2 term ``s * gamma`` where ``|gamma| < lr * s``.
      lr: the learning rate, a float ``> 0``; required with (and only with) ``smooth_l1``.

    Returns:
      a tree with the structure of ``params``: the term on BN scales, zeros elsewhere.

    Raises:
      ValueError: on a bad ``s`` or ``lr``, ``lr`` missing with ``smooth_l1`` or given
        without it, no BN scale selected, a non-float scale, or masks whose structure or
        shapes differ or that mark a leaf that is not a selected scale.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"bn1": {"scale": jnp.array([0.5, -0.2, 0.0]), "bias": jnp.zeros(3)}}
      >>> W.bn_l1_gradient(params, 0.25)["bn1"]["scale"].tolist()
      [0.25, -0.25, 0.0]
      >>> masks = {"bn1": {"scale": jnp.array([False, True, True]), "bias": None}}
      >>> W.bn_l1_gradient(params, 0.25, masks=masks)["bn1"]["scale"].tolist()
      [0.0, -0.25, 0.0]
    """
    where = "bn_l1_gradient"
    s = _positive(s, "s", zero_ok=True)
    if _checks.flag(smooth_l1, "smooth_l1", where):
        if lr is None:
            raise ValueError(f"{where}: smooth_l1=True needs lr (the learning rate, > 0)")
        lr = _positive(lr, "lr", zero_ok=False)
    elif lr is not None:
        raise ValueError(f"{where}: lr is used only with smooth_l1=True; got lr={lr!r}")
    names = _scale_names(params, scale_filter, where)
    selected = None if masks is None else _check_masks(params, masks, names, where)

    def term(name, g):
        if name not in names or (selected is not None and name not in selected):
            return jnp.zeros_like(g)
        g = jnp.asarray(g)
        out = s * jnp.sign(g)
        if smooth_l1:
            out = jnp.where(jnp.abs(g) < lr * s, s * g, out)
        if selected is not None:
            out = jnp.where(selected[name], out, 0)
        return out.astype(g.dtype)

    return _paths.map_named(term, params)


def mask_sparsity(
    s: float,
    masks: Any = None,
    *,
    scale_filter: Selector = None,
    smooth_l1: bool = False,
    lr: float | None = None,
) -> optax.GradientTransformation:
    """Adds :func:`bn_l1_gradient` to the gradients; chain it before the optimizer.

    ``optax.chain(W.mask_sparsity(s, masks), optax.sgd(lr, momentum=0.9))`` is the reference
    training step (the term is added to ``.grad`` before ``optimizer.step()``, so momentum and
    weight decay see it). ``masks=None`` is global sparsity training; a mask tree (True = to
    prune, e.g. from :func:`bn_prune_masks` after global sparsity training) is MaskSparsity.

    Args:
      s, masks, scale_filter, smooth_l1, lr: as in :func:`bn_l1_gradient` (``lr`` is a fixed
        float: the smooth-L1 switch does not follow a schedule).

    Returns:
      a stateless ``GradientTransformation``; ``update`` needs ``params``.

    Raises:
      ValueError: on a bad ``s`` or ``lr`` (here); from ``init``/``update``, as
        :func:`bn_l1_gradient`, or if ``update`` gets no ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from pruneax import weights as W
      >>> params = {"bn": {"scale": jnp.array([0.5, -0.2]), "bias": jnp.zeros(2)}}
      >>> opt = optax.chain(W.mask_sparsity(0.25), optax.sgd(1.0))
      >>> grads = jax.tree.map(jnp.zeros_like, params)
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates["bn"]["scale"].tolist()
      [-0.25, 0.25]
    """
    s = _positive(s, "s", zero_ok=True)
    if _checks.flag(smooth_l1, "smooth_l1", "mask_sparsity") and lr is None:
        raise ValueError("mask_sparsity: smooth_l1=True needs lr (the learning rate, > 0)")
    if lr is not None:
        if not smooth_l1:
            raise ValueError(f"mask_sparsity: lr is used only with smooth_l1=True; got {lr!r}")
        lr = _positive(lr, "lr", zero_ok=False)
    kw = dict(masks=masks, scale_filter=scale_filter, smooth_l1=smooth_l1, lr=lr)

    def init(params):
        bn_l1_gradient(params, s, **kw)  # validates the masks against the parameters
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("mask_sparsity: update needs params (opt.update(grads, state, p))")
        extra = bn_l1_gradient(params, s, **kw)
        return jax.tree.map(lambda g, e: g + e.astype(jnp.result_type(g)), updates, extra), state

    return optax.GradientTransformation(init, update)


def bn_prune_masks(params: Any, threshold: float = 0.01, *, scale_filter: Selector = None) -> Any:
    """Channels to prune: ``|gamma| < threshold`` per BN scale (True = to prune).

    Step 3 (mask for MaskSparsity) and step 5 (the prune) of the pipeline use this rule with
    the reference default ``PRUNE.FACTOR = 0.01``; its optional percent / OT thresholds are
    not reproduced. The keep-mask of the channels is ``~mask``.

    Args:
      params: parameter pytree.
      threshold: a finite float ``> 0``.
      scale_filter: which leaves are BN scales (see :func:`bn_l1_gradient`).

    Returns:
      a tree with the structure of ``params``: bool arrays (True = to prune) on BN scales,
      None elsewhere.

    Raises:
      ValueError: on a bad ``threshold``, no BN scale selected, or a non-float scale.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"bn1": {"scale": jnp.array([0.5, -0.005, 0.01]), "bias": jnp.zeros(3)}}
      >>> masks = W.bn_prune_masks(params, 0.01)
      >>> masks["bn1"]["scale"].tolist(), masks["bn1"]["bias"]
      ([False, True, False], None)
    """
    threshold = _positive(threshold, "threshold", zero_ok=False)
    names = set(_scale_names(params, scale_filter, "bn_prune_masks"))
    return _paths.map_named(
        lambda n, g: jnp.abs(jnp.asarray(g)) < threshold if n in names else None, params
    )
