"""ISS-P (iterative soft shrinkage by percentage, Wang et al.): during training the smallest
weights of each layer are multiplied by a factor below one after every optimizer step instead of
being zeroed, so they can still grow back; after the soft phase the last selection becomes a
fixed binary mask and pruned weights stay exactly zero.

Reference code: Jiamian-Wang/Iterative-Soft-Shrinkage-SR, ``basicsr/pruner/ist_pruner.py``
(``_iht``) and ``basicsr/pruner/utils.py`` (``pick_pruned_layer``). It prunes every conv /
linear weight except layers named ``*mean*`` / ``*tail*``; pass a ``prunable`` predicate for that.

Differences from the reference code: ties in |w| go to the lower flat index (it uses NumPy's
unstable ``argsort``); ``ceil(ratio * n)`` is taken after rounding to 6 decimals (its float
product can add one weight: ``0.07 * 100``); N:M groups run along the kernel's input axis -2 and a
leaf whose axis does not divide by M is an error (it silently increases N and M until M divides
the gcd of the layer sizes, changing the ratio).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pruneax.weights import _checks, _masks, _paths
from pruneax.weights._optax import _reset_pruned
from pruneax.weights._paths import Selector

_CAP = 0.995  # the reference code never shrinks more than 99.5% of a layer (ratio path)


class ISSState(NamedTuple):
    """State of :func:`iss_p`.

    Attributes:
      count: int32 scalar, the number of updates taken.
      masks: mask tree (True = kept): the last soft selection during the soft phase, the fixed
        hard mask after it; None for leaves that are not prunable.
      inner_state: the inner optimizer's state.
    """

    count: jax.Array
    masks: Any
    inner_state: optax.OptState


def _check_ratio(ratio: object) -> float | tuple[int, int]:
    if isinstance(ratio, tuple | list):
        if len(ratio) != 2:
            raise ValueError(f"ratio as N:M must be a pair (N, M); got {ratio!r}")
        n, m = (_masks._static_int(v, "ratio (N, M)") for v in ratio)
        if not 0 <= n < m:
            raise ValueError(f"ratio (N, M) needs ints 0 <= N < M; got N={n}, M={m}")
        return n, m
    return _masks._check_fraction(ratio, "ratio")


def _check_shrink(shrink: object) -> float:
    if isinstance(shrink, bool) or not isinstance(shrink, int | float | np.floating | np.integer):
        raise ValueError(
            f"shrink must be a float in [0, 1]; got {type(shrink).__name__} {shrink!r}"
        )
    if not 0.0 <= float(shrink) <= 1.0:
        raise ValueError(f"shrink must be in [0, 1] (0 = IHT, 1 = no shrinkage); got {shrink}")
    return float(shrink)


def _shrink_count(ratio: float, n: int) -> int:
    """``min(ceil(ratio * n), floor(0.995 * n))``; both products rounded to 6 decimals first so
    a float artefact (``0.07 * 100 == 7.000000000000001``) does not add a weight."""
    return min(math.ceil(round(ratio * n, 6)), math.floor(round(_CAP * n, 6)))


def _names(params: Any, prunable: Selector, where: str) -> list[str]:
    names = _paths.prunable_names(params, prunable)
    flat = _paths.by_name(params)
    for name in names:
        dtype = jnp.result_type(flat[name])
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{where}: prunable leaf {name!r} must be a float array; got {dtype}")
    return names


def _check_nm_leaf(name: str, w: Any, m: int, where: str) -> None:
    shape = np.shape(w)
    if len(shape) < 2:
        raise ValueError(
            f"{where}: N:M groups run along axis -2; leaf {name!r} of shape {shape} has fewer "
            f"than 2 dimensions"
        )
    if shape[-2] % m:
        raise ValueError(
            f"{where}: leaf {name!r} has {shape[-2]} entries along axis -2 (shape {shape}), not "
            f"divisible by M={m}; pad the layer or choose another M"
        )


def _keep_nm(w: jax.Array, n: int, m: int) -> jax.Array:
    """False at the ``n`` smallest ``|w|`` of every ``m`` consecutive entries along axis -2 (NaN
    smallest, ties toward the lower position)."""
    a = jnp.abs(jnp.asarray(w, jnp.float32))
    a = jnp.where(jnp.isnan(a), -jnp.inf, a)
    moved = jnp.moveaxis(a, -2, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    rank = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1, stable=True)
    return jnp.moveaxis((rank >= n).reshape(moved.shape), -1, -2)


def _keep(name: str, w: jax.Array, ratio: float | tuple[int, int], where: str) -> jax.Array:
    """Bool mask of ``w``'s shape: False at the entries to shrink."""
    if isinstance(ratio, tuple):
        _check_nm_leaf(name, w, ratio[1], where)
        return _keep_nm(w, *ratio)
    return _masks._prune_lowest(jnp.abs(w), _shrink_count(ratio, int(np.size(w))))


def _selection(params: Any, ratio, names: list[str], where: str) -> Any:
    """Mask tree (True = kept, None for leaves outside ``names``) of one soft selection."""
    chosen = set(names)
    return _paths.map_named(lambda n, w: _keep(n, w, ratio, where) if n in chosen else None, params)


def _shrunk(w: jax.Array, keep: jax.Array, shrink: float) -> jax.Array:
    return jnp.where(keep, w, w * jnp.asarray(shrink, jnp.result_type(w)))


def soft_shrink(
    params: Any,
    ratio: float | tuple[int, int],
    *,
    shrink: float = 0.95,
    prunable: Selector = None,
) -> Any:
    """One ISS-P shrinkage: in every prunable leaf, the smallest-``|w|`` entries times ``shrink``.

    Per leaf of ``n`` entries, the ``min(ceil(ratio * n), floor(0.995 * n))`` entries of
    smallest magnitude are shrunk (NaN counts as smallest; ties toward the lower flat index);
    all others are returned unchanged. ``shrink=0.0`` is the IHT baseline (zeroing).

    Args:
      params: parameter pytree.
      ratio: fraction in ``[0, 1)`` of every prunable leaf to shrink, or a pair ``(N, M)``:
        the ``N`` smallest of every ``M`` consecutive entries along axis -2 (the input axis of a
        ``[..., in, out]`` kernel; the 99.5% cap does not apply).
      shrink: factor in ``[0, 1]`` for the selected entries (0.95, the paper's default).
      prunable: which leaves (predicate, glob(s) or None: dense/conv kernels).

    Returns:
      ``params`` with the selected entries multiplied by ``shrink``.

    Raises:
      ValueError: if ``ratio`` is not in ``[0, 1)`` (or not ``0 <= N < M`` ints), ``shrink`` is
        not in ``[0, 1]``, ``prunable`` selects no leaf, a prunable leaf is not a float array,
        or (N:M) a leaf's axis -2 is missing or not divisible by ``M``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.125, -3], [2, 0.5]]), "bias": jnp.ones(2)}}
      >>> W.soft_shrink(params, 0.5, shrink=0.5)["dense"]["kernel"].tolist()
      [[0.0625, -3.0], [2.0, 0.25]]
    """
    ratio = _check_ratio(ratio)
    shrink = _check_shrink(shrink)
    names = _names(params, prunable, "soft_shrink")
    keep = _selection(params, ratio, names, "soft_shrink")
    return _paths.map_named(lambda n, w, k: w if k is None else _shrunk(w, k, shrink), params, keep)


def iss_p(
    inner: optax.GradientTransformation,
    ratio: float | tuple[int, int],
    *,
    shrink: float = 0.95,
    soft_steps: int,
    prunable: Selector = None,
) -> optax.GradientTransformation:
    """ISS-P training: ``inner``'s step followed by :func:`soft_shrink`, then a fixed mask.

    ``update(grads, state, params)`` returns updates such that
    ``optax.apply_updates(params, updates)`` is:

    - during the first ``soft_steps`` updates: ``soft_shrink(params + inner_updates, ...)``,
      the selection recomputed every step (so shrunk weights can recover); the update of an
      entry that is not shrunk is exactly ``inner``'s;
    - afterwards: the hard mask is the last soft selection (the selection on the initial
      params if ``soft_steps == 0``); pruned weights get zero gradients and land on exactly 0
      every step (update ``-param``, as in :func:`masked_optimizer`), kept weights take
      ``inner``'s step.

    The reference code ends the soft phase with a clock: ``reg += 1e-4`` every 20 iterations
    until ``max(reg) > 0.5``, about 5,000 updates, i.e. ``soft_steps=100_000`` iterations.

    Args:
      inner: the optimizer (e.g. ``optax.adam(2e-4)``, the paper's).
      ratio: fraction in ``[0, 1)`` per layer, or ``(N, M)`` (see :func:`soft_shrink`).
      shrink: factor in ``[0, 1]`` (0.95 by default; 0 is IHT).
      soft_steps: length of the soft phase in updates, an int ``>= 0``.
      prunable: which leaves (predicate, glob(s) or None: dense/conv kernels).

    Returns:
      a ``GradientTransformation`` with an :class:`ISSState`; read the masks with
      :func:`iss_masks`. ``update`` needs ``params``.

    Raises:
      ValueError: on a bad ``ratio``, ``shrink`` or ``soft_steps`` (here); from ``init``, if
        ``prunable`` selects no leaf, a prunable leaf is not float or (N:M) does not divide;
        from ``update``, if ``params`` is None.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.125, -3], [2, 0.5]]), "bias": jnp.ones(2)}}
      >>> opt = W.iss_p(optax.sgd(1.0), 0.5, shrink=0.5, soft_steps=1)
      >>> grads = jax.tree.map(jnp.zeros_like, params)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(grads, state, params)  # soft step: shrink
      >>> params = optax.apply_updates(params, updates)
      >>> params["dense"]["kernel"].tolist()
      [[0.0625, -3.0], [2.0, 0.25]]
      >>> updates, state = opt.update(grads, state, params)  # hard phase: zero
      >>> optax.apply_updates(params, updates)["dense"]["kernel"].tolist()
      [[0.0, -3.0], [2.0, 0.0]]
      >>> W.iss_masks(state)["dense"]["kernel"].tolist()
      [[False, True], [True, False]]
    """
    ratio = _check_ratio(ratio)
    shrink = _check_shrink(shrink)
    soft_steps = _masks._static_int(soft_steps, "soft_steps")
    if not 0 <= soft_steps < 2**31:
        raise ValueError(f"soft_steps must be an int in [0, 2**31); got {soft_steps}")
    _checks.transformation(inner, "inner", "iss_p")
    _paths.as_predicate(prunable)  # a bad selector fails here, not at init

    def init(params):
        names = _names(params, prunable, "iss_p")
        masks = _selection(params, ratio, names, "iss_p")
        return ISSState(jnp.zeros((), jnp.int32), masks, inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("iss_p: update needs params (opt.update(grads, state, params))")
        hard = state.count >= soft_steps
        grads = _paths.map_named(
            lambda n, g, m: g if m is None else jnp.where(hard & ~m, jnp.zeros((), g.dtype), g),
            updates,
            state.masks,
        )
        out, inner_state = inner.update(grads, state.inner_state, params)

        def soft(_):
            new = optax.apply_updates(params, out)
            keep = _paths.map_named(
                lambda n, w, m: None if m is None else _keep(n, w, ratio, "iss_p"),
                new,
                state.masks,
            )
            shrunk = _paths.map_named(
                lambda n, u, k, w, p: (
                    u if k is None else jnp.where(k, u, (_shrunk(w, k, shrink) - p).astype(u.dtype))
                ),
                out,
                keep,
                new,
                params,
            )
            return shrunk, keep

        def fixed(_):
            kept = _paths.map_named(
                lambda n, u, m, p: u if m is None else _reset_pruned(u, m, p),
                out,
                state.masks,
                params,
            )
            return kept, state.masks

        out, masks = jax.lax.cond(hard, fixed, soft, None)
        return out, ISSState(optax.safe_int32_increment(state.count), masks, inner_state)

    return optax.GradientTransformation(init, update)


def iss_masks(state: ISSState) -> Any:
    """The current mask tree of an :func:`iss_p` state (True = kept, None = not prunable).

    During the soft phase it is the last selection (False = shrunk at the last step); after it,
    the fixed hard mask.

    Raises:
      ValueError: if ``state`` is not an :class:`ISSState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> state = W.iss_p(optax.sgd(0.1), 0.5, soft_steps=10).init(params)
      >>> masks = W.iss_masks(state)
      >>> masks["dense"]["kernel"].tolist(), masks["dense"]["bias"]
      ([[False, True], [True, False]], None)
    """
    if not isinstance(state, ISSState):
        raise ValueError(
            f"iss_masks: state must be the ISSState of iss_p; got {type(state).__name__}"
        )
    return state.masks
