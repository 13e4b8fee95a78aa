"""Token scores from attention: what FasterVLM, HiPrune, FastV and FEATHER rank tokens by.

Each scorer takes one example's attention probabilities ``[heads, queries, keys]`` (or queries
and keys) and returns float32 scores over the tokens to choose from. Batch with ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks

_HIGHEST = jax.lax.Precision.HIGHEST


def _attention(attn, name="attn"):
    shape = _checks.real_array(attn, name, 3, "[heads, queries, keys]")
    return jnp.asarray(attn, jnp.float32), shape


def _prefix(num_prefix, keys):
    p = _checks.static_int(num_prefix, "num_prefix")
    if not 0 <= p < keys:
        raise ValueError(f"num_prefix must be in [0, {keys}) (keys = {keys}); got {p}")
    return p


def cls_attention(
    attn: jax.typing.ArrayLike, *, cls_index: int = 0, num_prefix: int = 1
) -> jax.Array:
    """FasterVLM / EViT score: the [CLS] query's attention over the patch keys, head-averaged.

    The CLS row is taken from the attention probabilities (the penultimate vision layer in
    FasterVLM), the prefix keys (CLS, registers) are dropped, and the result is NOT
    renormalised.

    Args:
      attn: [heads, L, L] attention probabilities of one example.
      cls_index: the position of the [CLS] query (0).
      num_prefix: number of leading keys that are not patches (1 for CLS only).

    Returns:
      float32 [L - num_prefix].

    Raises:
      ValueError: on a wrong rank, or ``cls_index`` / ``num_prefix`` out of range.

    References:
      Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning:
      Make VLM Inference Faster" (FasterVLM), 2024; Liang et al., "Not All Patches are What
      You Need: Expediting Vision Transformers via Token Reorganizations" (EViT), ICLR 2022.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> attn = jnp.array([[[0.5, 0.125, 0.375], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
      >>> T.cls_attention(attn).tolist()  # the CLS row, CLS key dropped
      [0.125, 0.375]
    """
    a, (_, q, kv) = _attention(attn)
    c = _checks.static_int(cls_index, "cls_index")
    if not 0 <= c < q:
        raise ValueError(f"cls_index must be in [0, {q}) (queries = {q}); got {c}")
    return jnp.mean(a[:, c, _prefix(num_prefix, kv) :], axis=0)


def received_attention(attn: jax.typing.ArrayLike, *, num_prefix: int = 1) -> jax.Array:
    """HiPrune's score: attention each patch RECEIVES, averaged over heads and all queries.

    Args:
      attn: [heads, L, L] attention probabilities of one example.
      num_prefix: number of leading keys that are not patches; their columns are dropped
        (every query row, prefix queries included, is averaged).

    Returns:
      float32 [L - num_prefix].

    References:
      HiPrune: "Training-Free Visual Token Pruning via Hierarchical Attention in Vision
      Encoders", 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> attn = jnp.array([[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
      >>> [round(s, 4) for s in T.received_attention(attn).tolist()]  # patch column means
      [0.5833, 0.0833]
    """
    a, (_, _, kv) = _attention(attn)
    return jnp.mean(a[:, :, _prefix(num_prefix, kv) :], axis=(0, 1))


def last_query_attention(attn: jax.typing.ArrayLike, *, start: int, stop: int) -> jax.Array:
    """FastV's score: the last query's attention over a key span (the image), head-averaged.

    Args:
      attn: [heads, L, L] attention probabilities of one example, from the layer before the
        pruning layer.
      start, stop: the image tokens' span ``[start, stop)`` among the keys.

    Returns:
      float32 [stop - start].

    References:
      Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
      Acceleration for Large Vision-Language Models" (FastV), ECCV 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> attn = jnp.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.5, 0.25]]])
      >>> T.last_query_attention(attn, start=1, stop=3).tolist()
      [0.5, 0.25]
    """
    a, (_, _, kv) = _attention(attn)
    lo, hi = _checks.static_int(start, "start"), _checks.static_int(stop, "stop")
    if not 0 <= lo < hi <= kv:
        raise ValueError(f"need 0 <= start < stop <= {kv} (keys); got start={lo}, stop={hi}")
    return jnp.mean(a[:, -1, lo:hi], axis=0)


def query_key_attention(query: jax.typing.ArrayLike, keys: jax.typing.ArrayLike) -> jax.Array:
    """FEATHER's criterion: one query against the image keys only, softmax, head-averaged.

    Pass the last token's query and the image tokens' keys computed WITHOUT rotary position
    embedding (the point of FEATHER: RoPE's long-range decay biases the last query against
    early image rows). The softmax runs over the image keys alone, at scale 1/sqrt(head_dim).
    Grouped-query attention is supported: each key head serves ``heads / kv_heads`` query heads.

    Args:
      query: [heads, head_dim] the last token's query.
      keys: [kv_heads, N, head_dim] the image tokens' keys; ``heads % kv_heads == 0``.

    Returns:
      float32 [N].

    Raises:
      ValueError: on wrong ranks, different head dims, or heads not a multiple of kv_heads.

    References:
      Endo et al., "Feather the Throttle: Revisiting Visual Token Pruning for Vision-Language
      Model Acceleration", 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> query = jnp.ones((4, 2))  # 4 query heads
      >>> keys = jnp.array([[[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]]] * 2)  # 2 key heads (GQA)
      >>> s = T.query_key_attention(query, keys)
      >>> s.shape, int(s.argmax()), round(float(s.sum()), 4)
      ((3,), 1, 1.0)
    """
    h, dh = _checks.real_array(query, "query", 2, "[heads, head_dim]")
    hk, _, dk = _checks.real_array(keys, "keys", 3, "[kv_heads, N, head_dim]")
    if dk != dh or h % hk:
        raise ValueError(
            f"keys [kv_heads, N, head_dim] must share head_dim with query and divide its heads; "
            f"got query {(h, dh)}, keys {jnp.shape(keys)}"
        )
    q = jnp.asarray(query, jnp.float32).reshape(hk, h // hk, dh)
    k = jnp.asarray(keys, jnp.float32)
    logits = jnp.einsum("gqd,gnd->gqn", q, k, precision=_HIGHEST) / jnp.sqrt(jnp.float32(dh))
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=(0, 1))
