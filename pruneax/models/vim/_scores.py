"""ToP-ViM token importance (``vim_token_scores``) and one pruning stage's selection.

References: Zhan et al., "Exploring Token Pruning in Vision State Space Models" (ToP-ViM),
NeurIPS 2024 (arXiv:2409.18962), Sec. 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models.vim._config import VIM_METRICS
from pruneax.models.vim._plan import VimPruneStage

_F32 = jnp.float32


def vim_token_scores(y: jax.typing.ArrayLike, metric: str = "clipped") -> jax.Array:
    """ToP-ViM token importance from a mixer output ``y`` [..., T, E] -> [..., T] float32.

    ``"clipped"``: ``sum_e max(0, y_te)`` (ToP-ViM's clipped output); ``"unclipped"``:
    ``sum_e y_te``; ``"l1"``: ``sum_e |y_te|``; ``"l2"``: ``sqrt(sum_e y_te^2)``. ``y`` is the
    gated scan output of BOTH directions in original token order, ``(y_f + flip(y_b)) / 2``
    (``BiMambaMixer(..., return_y=True)``); the released ToP-ViM code scores with the backward
    branch alone and forgets to flip it back.

    Raises:
      ValueError: for an unknown metric (``"random"`` is not a score) or ``y`` of rank < 2.

    Args:
      y: [..., T, E] mixer outputs; metric: one of ``VIM_METRICS`` except ``"random"``.

    Returns:
      [..., T] float32 scores (higher = more important).

    Example:
      >>> import jax.numpy as jnp
      >>> vim_token_scores(jnp.array([[1.0, -2.0], [3.0, 0.5]])).tolist()
      [1.0, 3.5]

    References: Zhan et al., "Exploring Token Pruning in Vision State Space Models", NeurIPS
      2024, Sec. 4 (token importance).
    """
    metrics = [m for m in VIM_METRICS if m != "random"]
    if metric not in metrics:
        raise ValueError(f"vim_token_scores: metric must be one of {metrics}; got {metric!r}")
    if jnp.ndim(y) < 2:
        raise ValueError(f"vim_token_scores: y must be [..., T, E]; got shape {jnp.shape(y)}")
    y = jnp.asarray(y, _F32)
    if metric == "clipped":
        return jnp.sum(jnp.maximum(y, 0.0), axis=-1)
    if metric == "unclipped":
        return jnp.sum(y, axis=-1)
    if metric == "l1":
        return jnp.sum(jnp.abs(y), axis=-1)
    return jnp.sqrt(jnp.sum(y * y, axis=-1))


def _take(v: jax.Array, idx: jax.Array) -> jax.Array:
    """``v[b, idx[b]]`` along axis 1 for [B, T] or [B, T, ...] ``v``."""
    idx = idx.reshape(idx.shape + (1,) * (v.ndim - 2))
    return jnp.take_along_axis(v, idx, axis=1)


def _select(
    stage: VimPruneStage,
    y: jax.Array,
    positions: jax.Array,
    cls_pos: int,
    key: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs one stage: ``(sequence indices, their positions, kept patch ids)``.

    ``y`` [B, T, E] / ``positions`` [B, T]: the current tokens in sequence order. Returns the
    indices into the current sequence of the new sequence [B, k + 1], their token positions
    and the kept patch ids [B, k] sorted.
    """
    b, t = positions.shape
    n = t - 1
    k = stage.kept(n)
    is_cls = (positions == cls_pos).astype(jnp.int32)
    order = jnp.argsort(is_cls, axis=1, stable=True)  # patches (sequence order), then cls
    patches, cls_idx = order[:, :n], order[:, n:]
    if stage.metric == "random":
        if key is None:
            raise ValueError(
                f"Vim: the stage at layer {stage.layer} has metric='random' and needs a PRNG key "
                "(Vim(..., key=...))"
            )
        sel = jax.vmap(lambda kk: T.random(kk, n, k))(jax.random.split(key, b))
    else:
        scores = _take(vim_token_scores(y, stage.metric), patches)
        sel = jax.vmap(lambda s: T.topk(s, k))(scores)
    seq = _take(patches, sel)
    pos = _take(positions, seq)
    by_pos = jnp.argsort(pos, axis=1)
    seq, pos = _take(seq, by_pos), _take(pos, by_pos)
    ids = jnp.where(pos > cls_pos, pos - 1, pos).astype(jnp.int32)
    cls_col = jnp.full((b, 1), cls_pos, positions.dtype)
    if stage.cls_position == "middle":
        h = k // 2
        new_seq = jnp.concatenate([seq[:, :h], cls_idx, seq[:, h:]], axis=1)
        new_pos = jnp.concatenate([pos[:, :h], cls_col, pos[:, h:]], axis=1)
    else:
        seq = jnp.concatenate([seq, cls_idx], axis=1)
        pos = jnp.concatenate([pos, cls_col], axis=1)
        by_pos = jnp.argsort(pos, axis=1)
        new_seq, new_pos = _take(seq, by_pos), _take(pos, by_pos)
    return new_seq, new_pos.astype(jnp.int32), ids
