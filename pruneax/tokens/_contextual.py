"""VisionZip / VisionDrop contextual merging: the tokens left after a dominant selection are
folded into a few contextual tokens.

Published algorithm (VisionZip's ``CLIPVisionTower_VisionZip.forward``, reused unchanged as
VisionDrop's vision stage, ``Ruixxxx/VisionDrop@b9d5df9 llava/visionzip/clip_encoder.py``):

1. Dominant tokens: the top patches by the [CLS] attention row of the penultimate block, summed
   over heads (``topk`` on ``cls_attention``: the mean has the same ranking), kept in original
   order together with the CLS token.
2. The R remaining tokens (original order) are compared through a *metric*: the block's key
   states averaged over heads (``utils.py``: ``raw_key_states.mean(1)``), L2-normalised.
3. Targets: every ``step``-th remaining token, ``step = max(1, R // c)``, the first ``c`` of
   them. Every other remaining token goes to its most cosine-similar target (``argmax``: the
   first target on a tie).
4. Contextual token j = target j's hidden state + the MEAN of the hidden states assigned to it
   (the target is added, not averaged in; a target nothing joins stays itself).

Deviations (pruneax): the metric is normalised with ``l2_normalize`` (a zero or non-finite
metric row is treated as zero instead of producing NaN that would poison the argmax); ``R < c``
is refused (the published code crashes on a shape mismatch there). The CLS token is not handled
here: the VisionZip / VisionDrop pipelines pass the CLS hidden state as one of the dominant
tokens (``--dominant d`` counts it).

References: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
Models", CVPR 2025 (arXiv:2412.04467); Xu et al., "Rethinking Visual Token Reduction in LVLMs
under Cross-modal Misalignment" (VisionDrop), AAAI 2026 (arXiv:2506.22283).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.tokens import _checks
from pruneax.tokens._numerics import features, l2_normalize
from pruneax.tokens._ops import keep_mask
from pruneax.tokens._topk import topk

_HIGHEST = jax.lax.Precision.HIGHEST


def contextual_targets(remaining: int, num_contextual: int) -> np.ndarray:
    """Positions (among the ``remaining`` tokens) of the ``num_contextual`` targets.

    Raises:
      ValueError: unless ``1 <= num_contextual <= remaining``.

    Example:
      >>> contextual_targets(10, 3).tolist()
      [0, 3, 6]
    """
    c = _checks.budget(num_contextual, remaining, "num_contextual")
    step = max(1, remaining // c)
    return np.arange(0, remaining, step)[:c]


def contextual_merge(
    x: jax.typing.ArrayLike,
    metric: jax.typing.ArrayLike,
    idx: jax.typing.ArrayLike,
    num_contextual: int,
) -> tuple[jax.Array, jax.Array]:
    """The contextual tokens summarising the tokens ``idx`` does not keep (VisionZip).

    Args:
      x: [N, D] token hidden states (patches; the same tokens ``idx`` numbers).
      metric: [N, Dm] the similarity features (VisionZip: the block's key states averaged over
        heads).
      idx: int [k] kept (dominant) token indices, unique; ``R = N - k`` tokens remain.
      num_contextual: c, static, ``1 <= c <= R``.

    Returns:
      ``(tokens [c, D] in the dtype of x, targets [c] int32)``: contextual token j is remaining
      token ``targets[j]`` (original index) plus the mean of the remaining tokens assigned to it;
      targets ascend. Computed in float32.

    Raises:
      ValueError: for wrong ranks, ``metric`` of another length, or ``c`` out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 0.5], [5.0, 5.0]])
      >>> tokens, targets = T.contextual_merge(x, x, jnp.array([4]), 2)
      >>> targets.tolist(), tokens.tolist()
      ([0, 2], [[1.5, 0.0], [0.0, 1.5]])
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    nm, _ = _checks.real_array(metric, "metric", 2, "[N, Dm]")
    _checks.same_length(n, nm, "metric", jnp.shape(metric), "N =")
    (k,) = _checks.index_array(idx)
    if k >= n:
        raise ValueError(f"idx must be [k] with k < N = {n}; got shape {(k,)}")
    remaining = n - k
    t_pos = contextual_targets(remaining, num_contextual)
    o_pos = np.setdiff1d(np.arange(remaining), t_pos)
    c = len(t_pos)
    rest = jnp.nonzero(~keep_mask(idx, n), size=remaining)[0]  # original order
    m = l2_normalize(features(jnp.asarray(metric)[rest])[0])
    h = jnp.asarray(x)[rest].astype(jnp.float32)
    if len(o_pos):
        sim = jnp.matmul(m[o_pos], m[t_pos].T, precision=_HIGHEST)  # [R - c, c]
        assign = jax.nn.one_hot(jnp.argmax(sim, axis=1), c, dtype=jnp.float32)
        counts = jnp.maximum(jnp.sum(assign, axis=0), 1.0)[:, None]
        merged = jnp.matmul(assign.T, h[o_pos], precision=_HIGHEST) / counts
    else:
        merged = jnp.zeros((c, h.shape[1]), jnp.float32)
    tokens = h[t_pos] + merged
    return tokens.astype(jnp.asarray(x).dtype), rest[t_pos].astype(jnp.int32)


def dominant_contextual(
    scores: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    metric: jax.typing.ArrayLike,
    dominant: int,
    contextual: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """VisionZip / VisionDrop's stage for one example: the ``dominant`` top tokens by score
    (``topk``: original order, ties to the lower index), then ``contextual`` tokens merged from
    the rest (``contextual_merge``).

    Args:
      scores: [N] real scores (VisionZip: the [CLS] row summed over heads; VisionDrop's LLM
        stages: the image queries' attention).
      x: [N, D] token hidden states.
      metric: [N, Dm] the similarity features of the merge (the block's keys averaged over
        heads).
      dominant: d, static, ``1 <= d <= N``.
      contextual: c, static, ``0 <= c <= N - d`` (0: plain top-k, no merge).

    Returns:
      ``(tokens [d + c, D] in x's dtype, dominant [d] int32 ascending, targets [c] int32)``:
      the dominant tokens' rows, then the contextual tokens; ``targets`` are the original
      indices of the contextual tokens' targets.

    Raises:
      ValueError: as ``topk`` / ``contextual_merge`` (shapes, ``d`` or ``c`` out of range).

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 0.5], [5.0, 5.0]])
      >>> tokens, dom, targets = T.dominant_contextual(x.sum(1), x, x, 1, 2)
      >>> dom.tolist(), targets.tolist(), tokens.tolist()
      ([4], [0, 2], [[5.0, 5.0], [1.5, 0.0], [0.0, 1.5]])
    """
    (n,) = _checks.real_array(scores, "scores", 1, "[N]")
    d = _checks.budget(dominant, n, "dominant")
    c = _checks.static_int(contextual, "contextual")
    nx, _ = _checks.real_array(x, "x", 2, "[N, D]")
    _checks.same_length(n, nx, "x", (nx,), "as many rows as scores has entries,")
    if not 0 <= c <= n - d:
        raise ValueError(
            f"contextual (num_contextual) must satisfy 0 <= contextual <= N - dominant = "
            f"{n - d}; got {c}"
        )
    dom = topk(scores, d)
    xs = jnp.asarray(x)
    if c == 0:
        _checks.real_array(metric, "metric", 2, "[N, Dm]")
        return xs[dom], dom, dom[:0]
    merged, targets = contextual_merge(xs, metric, dom, c)
    return jnp.concatenate([xs[dom], merged]), dom, targets
