"""Wanda: pruning by |weight| x input-activation norm, per output unit, from calibration data.

Layout: every function here takes a kernel in pruneax's (Flax ``nnx.Linear``) layout, ``[d_in,
d_out]`` (``y = x @ kernel``), i.e. the TRANSPOSE of the PyTorch ``weight`` ``[d_out, d_in]`` the
published code reads. Masks are bool arrays of the kernel's shape, True = kept (as every mask in
``pruneax.weights``). "Output unit" = a column of the kernel.

- ``input_sq_norms(x)``: the activation statistic ``s_j = sum over tokens of x_j^2`` (float32
  ``[d_in]``) of one batch; statistics of several batches (or devices) are SUMMED. The published
  code keeps a running mean over sequences instead, which differs by a constant factor per layer
  that the per-output comparison ignores.
- ``wanda_scores(kernel, s) = |kernel| * sqrt(s)[:, None]``.
- ``wanda_mask``: unstructured -- in every output column prune the ``int(d_in * sparsity)``
  lowest scores (stable sort: ties prune the lower input index first, as the published
  ``torch.sort(..., stable=True)``); N:M -- in every output column and every group of ``M``
  consecutive INPUT rows, prune the ``N`` lowest (N is the number PRUNED, as in the published
  ``--sparsity_type 2:4``).
- ``magnitude_mask``: the published magnitude baseline, one threshold over the whole matrix
  (exactly ``int(numel * sparsity)`` pruned, ties toward the lower flat index, where the
  published ``<=`` threshold prunes every tie), or N:M by ``|W|``.

References: Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language
Models" (Wanda), ICLR 2024 (arXiv:2306.11695); code locuslab/wanda ``lib/prune.py``
(``prune_wanda``, ``prune_magnitude``) and ``lib/layerwrapper.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks
from pruneax.weights._masks import _prune_lowest

_F32 = jnp.float32


def check_pattern(
    sparsity: object, n_m: object, d_in: int | None = None, where: str = "prune"
) -> tuple[float, int, int]:
    """Validates ``sparsity`` / ``n_m`` (exactly one given); returns ``(sparsity, n, m)`` with
    ``n = m = 0`` for unstructured pruning and ``sparsity = n / m`` for N:M. ``d_in``, when
    given, must be divisible by ``m``."""
    if n_m is None:
        if sparsity is None:
            raise ValueError(f"{where}: give sparsity (a fraction in [0, 1)) or n_m=(N, M)")
        if isinstance(sparsity, bool) or not isinstance(
            sparsity, int | float | np.integer | np.floating
        ):
            raise ValueError(f"{where}: sparsity must be a float in [0, 1); got {sparsity!r}")
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"{where}: sparsity must be in [0, 1); got {sparsity}")
        return float(sparsity), 0, 0
    if sparsity is not None:
        raise ValueError(
            f"{where}: give sparsity OR n_m, not both (N:M fixes the sparsity at N/M); "
            f"got sparsity={sparsity!r}, n_m={n_m!r}"
        )
    ok = isinstance(n_m, tuple | list) and len(n_m) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in n_m)
    if not ok:
        raise ValueError(f"{where}: n_m must be a pair of ints (N pruned, of every M); got {n_m!r}")
    n, m = int(n_m[0]), int(n_m[1])
    if not 1 <= n < m:
        raise ValueError(f"{where}: n_m=(N, M) needs 1 <= N < M (N pruned of M); got {n_m!r}")
    if d_in is not None and d_in % m:
        raise ValueError(f"{where}: n_m=({n}, {m}): M must divide the input dimension d_in={d_in}")
    return n / m, n, m


def _check_kernel(kernel: jax.Array, where: str) -> None:
    if len(_checks.shape_of(kernel, "kernel", where)) != 2:
        raise ValueError(f"{where}: kernel must be 2-D [d_in, d_out]; got shape {np.shape(kernel)}")


def _lowest_along_inputs(scores: jax.Array, count: int) -> jax.Array:
    """Bool keep-mask: in every column of ``scores`` [k, ...] the ``count`` lowest rows (stable:
    ties toward the lower row; NaN lowest) are False."""
    s = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    order = jnp.argsort(s, axis=0, stable=True)
    rank = jnp.argsort(order, axis=0, stable=True)
    return rank >= count


@functools.partial(jax.jit, static_argnames=("sparsity", "n", "m", "layerwise"))
def _keep(scores: jax.Array, sparsity: float, n: int, m: int, layerwise: bool) -> jax.Array:
    """The keep-mask of ``scores`` [d_in, d_out]: per output column (or, ``layerwise`` and
    unstructured, over the whole matrix), or N:M along the inputs."""
    d_in, d_out = scores.shape
    if layerwise and n == 0:
        return _prune_lowest(scores, int(d_in * d_out * sparsity))
    if n == 0:
        return _lowest_along_inputs(scores, int(d_in * sparsity))
    groups = scores.reshape(d_in // m, m, d_out).transpose(1, 0, 2)  # [m, groups, d_out]
    keep = _lowest_along_inputs(groups, n)
    return keep.transpose(1, 0, 2).reshape(d_in, d_out)


def input_sq_norms(x: jax.Array) -> jax.Array:
    """Wanda's activation statistic of one batch: ``sum over every leading axis of x^2``.

    Args:
      x: [..., d_in] the inputs of a linear layer (e.g. [n_seq, t, d_in]).

    Returns:
      float32 [d_in]; add the results of several batches (or ``psum`` them over devices).

    Raises:
      ValueError: if ``x`` has no feature axis.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.input_sq_norms(jnp.array([[[1.0, 2.0], [3.0, 0.0]]])).tolist()
      [10.0, 4.0]
    """
    shape = _checks.shape_of(x, "x", "input_sq_norms")
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"input_sq_norms: x must be [..., d_in], d_in >= 1; got shape {shape}")
    x = jnp.asarray(x, _F32)
    return jnp.sum(jnp.square(x).reshape(-1, x.shape[-1]), axis=0)


def wanda_scores(kernel: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Wanda's score ``|kernel| * sqrt(sq_norms)`` per weight.

    Args:
      kernel: [d_in, d_out] (pruneax / Flax layout).
      sq_norms: [d_in] ``input_sq_norms`` of the layer's inputs (summed over batches).

    Returns:
      float32 [d_in, d_out].

    Raises:
      ValueError: for a kernel that is not 2-D or norms of the wrong shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.wanda_scores(jnp.array([[1.0, -2.0], [3.0, 1.0]]), jnp.array([4.0, 1.0])).tolist()
      [[2.0, 4.0], [3.0, 1.0]]
    """
    _check_kernel(kernel, "wanda_scores")
    if _checks.shape_of(sq_norms, "sq_norms", "wanda_scores") != (np.shape(kernel)[0],):
        raise ValueError(
            f"wanda_scores: sq_norms must be [d_in] = [{np.shape(kernel)[0]}]; "
            f"got shape {np.shape(sq_norms)}"
        )
    return _scores(jnp.asarray(kernel), jnp.asarray(sq_norms))


@jax.jit
def _scores(kernel: jax.Array, sq_norms: jax.Array) -> jax.Array:
    return jnp.abs(kernel.astype(_F32)) * jnp.sqrt(sq_norms.astype(_F32))[:, None]


def wanda_mask(
    kernel: jax.Array,
    sq_norms: jax.Array,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
) -> jax.Array:
    """Wanda's mask: per output unit, the lowest ``|W| * ||X||`` weights pruned.

    Args:
      kernel: [d_in, d_out] (pruneax / Flax layout).
      sq_norms: [d_in] ``input_sq_norms`` of the layer's calibration inputs.
      sparsity: fraction in [0, 1): ``int(d_in * sparsity)`` weights pruned in every output
        column (ties: lower input index first).
      n_m: ``(N, M)`` instead: N pruned in every M consecutive inputs of every output column.

    Returns:
      bool [d_in, d_out], True = kept.

    Raises:
      ValueError: for a bad kernel / ``sq_norms`` shape, ``sparsity`` outside [0, 1), both or
        neither of ``sparsity`` / ``n_m``, or ``n_m`` not ``1 <= N < M`` with M dividing d_in.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> kernel = jnp.array([[1.0, 1.0], [2.0, -1.0], [3.0, 2.0], [0.5, 4.0]])  # [d_in=4, 2]
      >>> W.wanda_mask(kernel, jnp.ones(4), sparsity=0.5).T.tolist()
      [[False, True, True, False], [False, False, True, True]]
      >>> W.wanda_mask(kernel, jnp.ones(4), n_m=(1, 2)).T.tolist()
      [[False, True, True, False], [False, True, False, True]]
    """
    _check_kernel(kernel, "wanda_mask")
    sparsity, n, m = check_pattern(sparsity, n_m, np.shape(kernel)[0], "wanda_mask")
    return _keep(wanda_scores(kernel, sq_norms), sparsity, n, m, False)


def magnitude_mask(
    kernel: jax.Array, sparsity: float | None = None, n_m: tuple[int, int] | None = None
) -> jax.Array:
    """The magnitude baseline of the Wanda / SparseGPT papers: the smallest ``|W|`` pruned with
    ONE threshold over the whole matrix (or N:M along the inputs of every output column).

    Args:
      kernel: [d_in, d_out].
      sparsity: fraction in [0, 1): exactly ``int(d_in * d_out * sparsity)`` weights pruned
        (ties toward the lower flat index).
      n_m: ``(N, M)`` instead: N pruned in every M consecutive inputs of every output column.

    Returns:
      bool [d_in, d_out], True = kept.

    Raises:
      ValueError: as ``wanda_mask``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.magnitude_mask(jnp.array([[1.0, -5.0], [2.0, 0.5]]), sparsity=0.5).tolist()
      [[False, True], [True, False]]
    """
    _check_kernel(kernel, "magnitude_mask")
    sparsity, n, m = check_pattern(sparsity, n_m, np.shape(kernel)[0], "magnitude_mask")
    return _keep(jnp.abs(jnp.asarray(kernel, _F32)), sparsity, n, m, True)
