"""FlowCut: multi-layer visual-token pruning inside the vision encoder by cumulative scores.

Each scoring block of a ViT with a [CLS] token gives every alive patch a score from that block's
attention and value states; an exponential moving average of the scores over the blocks decides
which patches survive. Pruning happens at every other block, by an amount set from the entropy
of the [CLS] attention, and the last pruning block leaves exactly ``k`` patches.

Functions of ONE example (``jax.vmap`` them over a batch), float32 whatever the input dtype:

- ``flowcut_scores``: the per-block score ``(relevance + semantic) * magnitude``;
- ``flowcut_prune_count``: how many patches a block removes (the adaptive amount);
- ``flowcut_step``: one block of the schedule on a fixed-size token array with an alive mask;
- ``flowcut_select``: the whole schedule given every scoring block's attention and values.

The published code shortens the token sequence at each pruning block. Here the token array keeps
its size and carries an ``alive`` mask instead (static shapes under ``jax.jit``): a model that
masks the dead tokens out of the attention keys computes, for every alive token, exactly what the
published model computes on the shortened sequence, so the same patches are selected. The
published code prunes a batch by the LARGEST adaptive amount of its examples; these functions
work per example (pass ``count`` to ``flowcut_step`` to impose a common amount).

References: Tong et al., "FlowCut: Rethinking Redundancy via Information Flow for Efficient
Vision-Language Models", NeurIPS 2025 (arXiv:2505.19536); code TungChintao/FlowCut
(``flowcut/modeling_clip_flowcut.py``, ``flowcut/utils_flowcut.py``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks
from pruneax.tokens._numerics import rank_key

_HI = jax.lax.Precision.HIGHEST


def _shapes(a_shape, v_shape, alive_shape, fn: str, a: str = "attn") -> tuple[int, int]:
    """Checks ``attn`` ([H, T, T] or the CLS row [H, T]; named ``a``), ``values`` [H, T, dh]
    and the optional ``alive`` [T - 1] by their shapes; returns (H, T)."""
    a_shape, v_shape = tuple(a_shape), tuple(v_shape)
    if len(a_shape) not in (2, 3) or 0 in a_shape:
        raise ValueError(
            f"{fn}: {a} must have shape [H, T, T] (or the CLS row [H, T]); got shape {a_shape}"
        )
    if len(v_shape) != 3 or 0 in v_shape:
        raise ValueError(f"{fn}: values must have shape [H, T, dh]; got shape {v_shape}")
    h, t = v_shape[:2]
    if len(a_shape) == 3 and a_shape[1] != a_shape[2]:
        raise ValueError(f"{fn}: {a} must be square over the tokens [H, T, T]; got {a_shape}")
    if (a_shape[0], a_shape[-1]) != (h, t):
        raise ValueError(
            f"{fn}: {a} {a_shape} and values {v_shape} must share the heads H and the tokens T"
        )
    if t < 2:
        raise ValueError(f"{fn}: values must hold the CLS token and >= 1 patch; got T = {t}")
    if alive_shape is not None and tuple(alive_shape) != (t - 1,):
        raise ValueError(
            f"{fn}: alive must have shape [T - 1] = ({t - 1},); got {tuple(alive_shape)}"
        )
    return h, t


def _real(x: object, name: str, fn: str) -> None:
    _, dtype = _checks.shape_dtype(x, name)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{fn}: {name} must be a real floating or integer array; got {dtype}")


def _cls_row(attn, values, alive, fn: str) -> tuple[int, int]:
    """Validates one block's ``attn``, ``values`` and optional ``alive``; returns (H, T)."""
    _real(attn, "attn", fn)
    _real(values, "values", fn)
    shape = None if alive is None else _checks.shape_dtype(alive, "alive", lists=True)[0]
    return _shapes(jnp.shape(attn), jnp.shape(values), shape, fn)


def _rpl(value: object) -> int:
    rpl = _checks.static_int(value, "rpl")
    if rpl < 0:
        raise ValueError(f"rpl must be >= 0 (scoring blocks left after this one); got {rpl}")
    return rpl


def flowcut_scores(
    attn: jax.typing.ArrayLike,
    values: jax.typing.ArrayLike,
    alive: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """FlowCut's score of every patch at one block: ``(relevance + semantic) * magnitude``.

    With the [CLS] token at position 0 and ``j`` over the patches:
    ``relevance_j = mean_h A[h, 0, j]``, renormalised to sum 1 over the patches;
    ``semantic_j = mean_h softmax_t(V[h, 0] . V[h, t])`` (softmax over every token, CLS
    included, unscaled), renormalised over the patches; ``magnitude_j = || mean_h V[h, j] ||_1``.

    Args:
      attn: [H, T, T] attention probabilities of the block (T = 1 CLS + T - 1 patches), or
        only the CLS query's row [H, T]; dead tokens must already be masked out of the keys.
      values: [H, T, dh] the block's value states.
      alive: optional [T - 1] bool, the patches still in the sequence; dead ones are left out
        of both renormalisations and of the semantic softmax and score 0. None: all alive.

    Returns:
      float32 [T - 1] scores of the patches (0 for dead ones). A live patch whose attention
      or value holds NaN / inf scores NaN and is left out of the others' normalisation.

    Raises:
      ValueError: if ``attn`` is not [H, T, T] / [H, T], ``values`` not [H, T, dh], they
        disagree on H or T, T < 2, or ``alive`` is not [T - 1].

    References:
      Tong et al., "FlowCut", NeurIPS 2025 (arXiv:2505.19536); ``compute_score`` and
      ``CLIPAttention_forward`` of TungChintao/FlowCut.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> a = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 5, 5)), -1)
      >>> v = jax.random.normal(jax.random.key(1), (2, 5, 4))
      >>> s = T.flowcut_scores(a, v)
      >>> s.shape, s.dtype, bool((s > 0).all())
      ((4,), dtype('float32'), True)
    """
    _cls_row(attn, values, alive, "flowcut_scores")
    t = jnp.shape(values)[1]
    mask = jnp.ones((t - 1,), bool) if alive is None else jnp.asarray(alive, bool)
    return _scores(jnp.asarray(attn), jnp.asarray(values), mask)


@jax.jit
def _scores(attn, values, alive):
    row = attn[:, 0] if attn.ndim == 3 else attn
    row = row.astype(jnp.float32)
    v = values.astype(jnp.float32)
    rel = jnp.mean(row[:, 1:], axis=0)
    # A patch whose attention or value holds NaN / inf is left out of the normalisations (as
    # a dead one) and scored NaN, so it ranks last instead of turning every score into NaN.
    ok = alive & _finite_patches(rel, v)
    rel = jnp.where(ok, rel, 0.0)
    rel = rel / jnp.sum(rel)
    logits = jnp.einsum("hd,htd->ht", v[:, 0], v, precision=_HI)
    keys = jnp.concatenate([jnp.ones((1,), bool), ok])
    sem = jnp.mean(jax.nn.softmax(jnp.where(keys, logits, -jnp.inf), axis=-1), axis=0)[1:]
    sem = jnp.where(ok, sem, 0.0)
    sem = sem / jnp.sum(sem)
    # The head mean as a sum of the H slices: XLA:CPU reduces [H, T, dh] over its leading
    # axis ~12x slower (5.6 ms vs 0.47 ms at LLaVA's 16 x 577 x 64; benchmarks/selection.py).
    v_mean = functools.reduce(jnp.add, [v[h, 1:] for h in range(v.shape[0])]) / v.shape[0]
    mag = jnp.sum(jnp.abs(v_mean), axis=-1)
    return jnp.where(alive, jnp.where(ok, (rel + sem) * mag, jnp.nan), 0.0)


def _finite_patches(rel, v):
    """[N] patches whose head-mean [CLS] attention and value vectors are all finite."""
    finite_v = functools.reduce(
        jnp.logical_and, [jnp.all(jnp.isfinite(v[h, 1:]), axis=-1) for h in range(v.shape[0])]
    )
    return jnp.isfinite(rel) & finite_v


def flowcut_prune_count(
    rel: jax.typing.ArrayLike, n: int | jax.typing.ArrayLike | None, k: int, rpl: int
) -> jax.Array:
    """How many patches a FlowCut pruning block removes (the published adaptive amount).

    ``p = rel / sum(rel)`` over the current patches, ``H = -sum p log p`` (0 log 0 = 0),
    ``r = round((n - k) / sqrt(rpl) * (1 - (H / log n) ** 2))``, rounding half to even. A flat
    [CLS] attention (high entropy) prunes little, a peaked one much; ``rpl == 0`` (the last
    pruning block) returns ``n - k``: everything above the budget. The block keeps
    ``max(n - r, k)`` patches.

    Args:
      rel: [N] the [CLS] attention over the patches (head mean; need not sum to 1); entries of
        dead patches must be 0.
      n: the number of current (alive) patches, a Python int or a traced int scalar (e.g.
        ``alive.sum()``); None means N.
      k: the patch budget (the published ``target_num`` argument: the target without CLS), a
        Python int >= 1.
      rpl: the published ``remain_prune_layer`` of this block (scoring blocks left after it),
        a Python int >= 0.

    Returns:
      int32 scalar ``r`` (the published value: it may exceed ``n - k``; the caller keeps at
      least ``k``).

    Raises:
      ValueError: if ``rel`` is not rank 1, ``n`` (when a Python int) is not in [1, N], or
        ``k`` / ``rpl`` are not Python ints in range.

    References:
      ``adaptive_prune_ratio`` of TungChintao/FlowCut (``flowcut/utils_flowcut.py``).

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> int(T.flowcut_prune_count(jnp.array([0.7, 0.1, 0.1, 0.1]), 4, 1, 4))
      1
      >>> int(T.flowcut_prune_count(jnp.ones(4), 4, 1, 4))  # flat attention: nothing
      0
    """
    (size,) = _checks.real_array(rel, "rel", 1, "[N]")
    if n is None:
        n = size
    elif isinstance(n, bool) or (not hasattr(n, "dtype") and not isinstance(n, int)):
        raise ValueError(f"n must be an int or an int array scalar; got {type(n).__name__}")
    elif isinstance(n, int) and not 1 <= n <= size:
        raise ValueError(f"n must satisfy 1 <= n <= {size} (the patches); got {n}")
    elif hasattr(n, "dtype") and jnp.shape(n) != ():
        raise ValueError(f"n must be a scalar; got shape {jnp.shape(n)}")
    k = _checks.budget(k, size)
    return _prune_count(jnp.asarray(rel), jnp.asarray(n, jnp.int32), k, _rpl(rpl))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _prune_count(rel, n, k, rpl):
    if rpl == 0:
        return n - k
    rel = rel.astype(jnp.float32)
    p = rel / jnp.sum(rel)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    nf = n.astype(jnp.float32)
    ratio = jnp.where(n > 1, entropy / jnp.log(jnp.maximum(nf, 2.0)), 1.0)
    r = (nf - k) / jnp.float32(math.sqrt(rpl)) * (1.0 - ratio**2)
    return jnp.round(r).astype(jnp.int32)


def flowcut_step(
    attn: jax.typing.ArrayLike,
    values: jax.typing.ArrayLike,
    alive: jax.typing.ArrayLike,
    cum: jax.typing.ArrayLike | None,
    k: int,
    rpl: int,
    count: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One scoring block of FlowCut on a fixed-size token array: update, and maybe prune.

    While more than ``k`` patches are alive: the cumulative score becomes the block's
    ``flowcut_scores`` (first block, ``cum`` None) or ``0.5 * cum + 0.5 * score``; when ``rpl``
    is even the block keeps the ``max(n - r, k)`` alive patches of highest cumulative score
    (``r = count`` or ``flowcut_prune_count``; ties to the lower index), so ``rpl == 0`` leaves
    exactly ``k``. Otherwise nothing changes.

    Args:
      attn: [H, T, T] (or the CLS row [H, T]) attention of the block, dead keys masked out.
      values: [H, T, dh] its value states.
      alive: [T - 1] bool, the patches alive before the block.
      cum: [T - 1] cumulative scores so far, or None at the first scoring block.
      k: the patch budget, a Python int in [1, T - 1].
      rpl: scoring blocks left after this one (the published ``remain_prune_layer``), >= 0.
      count: optional int scalar imposing the pruned amount (e.g. the max over a batch, as
        the published code); None: this example's adaptive amount.

    Returns:
      ``(alive [T - 1] bool, cum [T - 1] float32)`` after the block.

    Raises:
      ValueError: as ``flowcut_scores``, or if ``cum`` is not [T - 1], ``k`` or ``rpl`` are
        out of range.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> a = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 7, 7)), -1)
      >>> v = jax.random.normal(jax.random.key(1), (2, 7, 4))
      >>> alive, cum = T.flowcut_step(a, v, jnp.ones(6, bool), None, 2, 0)
      >>> int(alive.sum()), cum.shape
      (2, (6,))
    """
    _, t = _cls_row(attn, values, alive, "flowcut_step")
    if alive is None:
        raise ValueError("flowcut_step: alive must be a [T - 1] bool array; got None")
    if cum is not None and (shape := _checks.shape_dtype(cum, "cum", lists=True)[0]) != (t - 1,):
        raise ValueError(f"flowcut_step: cum must have shape [T - 1] = ({t - 1},); got {shape}")
    k = _checks.budget(k, t - 1)
    if count is not None:
        _count(count)
    return _step(
        jnp.asarray(attn),
        jnp.asarray(values),
        jnp.asarray(alive, bool),
        None if cum is None else jnp.asarray(cum),
        k,
        _rpl(rpl),
        None if count is None else jnp.asarray(count, jnp.int32),
    )


def _count(count: object) -> None:
    shape, dtype = _checks.shape_dtype(count, "count")
    if shape != ():
        raise ValueError(f"flowcut_step: count must be a scalar; got shape {shape}")
    if isinstance(count, bool) or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"flowcut_step: count must be an int scalar; got {count!r}")
    if isinstance(count, int) and not 0 <= count < 2**31:
        raise ValueError(f"flowcut_step: count must be in [0, 2**31); got {count}")


@functools.partial(jax.jit, static_argnums=(4, 5))
def _step(attn, values, alive, cum, k, rpl, count):
    n = jnp.sum(alive, dtype=jnp.int32)
    score = _scores(attn, values, alive)
    new = score if cum is None else 0.5 * cum.astype(jnp.float32) + 0.5 * score
    active = n > k
    cum = new if cum is None else jnp.where(active, new, cum.astype(jnp.float32))
    if rpl % 2:
        return alive, cum
    if count is None:
        row = attn[:, 0] if attn.ndim == 3 else attn
        rel = jnp.mean(row[:, 1:].astype(jnp.float32), axis=0)
        count = _prune_count(jnp.where(alive & jnp.isfinite(rel), rel, 0.0), n, k, rpl)
    m = jnp.clip(n - count, k, n)
    order = jnp.lexsort((jnp.arange(alive.shape[0]), -rank_key(cum), ~alive))
    rank = jnp.zeros(alive.shape, jnp.int32).at[order].set(jnp.arange(alive.shape[0]))
    return jnp.where(active, alive & (rank < m), alive), cum


def flowcut_select(
    attns: jax.typing.ArrayLike, values: jax.typing.ArrayLike, k: int
) -> tuple[jax.Array, jax.Array]:
    """FlowCut's whole schedule over ``S`` scoring blocks: the ``k`` patches that survive.

    Block ``i`` (0-based) has ``rpl = S - 1 - i``: every block updates the cumulative score,
    the blocks with even ``rpl`` prune (``flowcut_step``) and the last one leaves ``k``. With
    the published LLaVA setting (features of block 22 of 24, ``select_layer = 22``) ``S = 22``.

    The tensors of block ``i`` must be those of the model run on the tokens alive before it
    (dead keys masked out): record them from a masked forward (``PruningPlan.flowcut``) or
    drive ``flowcut_step`` from your own loop.

    Args:
      attns: [S, H, T, T] attention probabilities of the scoring blocks (or their CLS rows
        [S, H, T]); T = 1 CLS + N patches.
      values: [S, H, T, dh] their value states.
      k: patches kept, a Python int in [1, N].

    Returns:
      ``(idx, alive)``: int32 [k] the kept patches (0-based patch numbering, CLS excluded),
      unique and sorted ascending; bool [S, N] the alive patches after each block.

    Raises:
      ValueError: if ``attns`` / ``values`` do not have matching shapes [S, H, T, T] /
        [S, H, T, dh], T < 2, or ``k`` is not an int in [1, N].

    References:
      Tong et al., "FlowCut", NeurIPS 2025 (arXiv:2505.19536); ``CLIPEncoderLayer_forward``
      and ``CLIPEncoder_forward`` of TungChintao/FlowCut.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> a = jax.nn.softmax(jax.random.normal(jax.random.key(0), (4, 2, 9, 9)), -1)
      >>> v = jax.random.normal(jax.random.key(1), (4, 2, 9, 4))
      >>> idx, alive = T.flowcut_select(a, v, 3)
      >>> idx.dtype, idx.shape, alive.sum(axis=1)[-1].tolist()
      (dtype('int32'), (3,), 3)
    """
    a_shape = _checks.shape_dtype(attns, "attns")[0]
    if len(a_shape) not in (3, 4):
        raise ValueError(
            f"flowcut_select: attns must have shape [S, H, T, T] (or [S, H, T]); got {a_shape}"
        )
    v_shape = _checks.shape_dtype(values, "values")[0]
    if len(v_shape) != 4:
        raise ValueError(f"flowcut_select: values must have shape [S, H, T, dh]; got {v_shape}")
    if a_shape[0] != v_shape[0]:
        raise ValueError(
            f"flowcut_select: attns {a_shape} and values {v_shape} must have the same number "
            "of blocks S"
        )
    _real(attns, "attns", "flowcut_select")
    _real(values, "values", "flowcut_select")
    _, t = _shapes(a_shape[1:], v_shape[1:], None, "flowcut_select", "attns")
    k = _checks.budget(k, t - 1)
    return _select(jnp.asarray(attns), jnp.asarray(values), k)


@functools.partial(jax.jit, static_argnums=2)
def _select(attns, values, k):
    s, n = attns.shape[0], values.shape[2] - 1
    alive, cum, history = jnp.ones((n,), bool), None, []
    for i in range(s):
        alive, cum = _step(attns[i], values[i], alive, cum, k, s - 1 - i, None)
        history.append(alive)
    idx = jnp.flatnonzero(alive, size=k).astype(jnp.int32)
    return idx, jnp.stack(history)
