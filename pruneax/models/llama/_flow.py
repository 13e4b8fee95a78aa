"""The token stream of one ``LlamaLM`` call: the tokens flowing through the layers, one layer
run on them (with or without a KV cache), and the per-layer transition statistics a pruning
spec asked for (``PruneSpec.transition_layers``), kept aligned with the current tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pruneax.models.llama._cache import LayerCache
from pruneax.models.llama._layers import LlamaBlock
from pruneax.models.llama._prune import TransitionStats


class Tokens(NamedTuple):
    """The tokens flowing through the layers: hidden states [B, T_l, D], RoPE positions, their
    cos / sin, validity [B, T_l], indices into the call's tokens (None without pruning) and
    the bidirectional-prefix flags [B, T_l] (None: plain causal)."""

    x: jax.Array
    positions: jax.Array
    cos: jax.Array
    sin: jax.Array
    valid: jax.Array
    kept: jax.Array | None
    bidir: jax.Array | None = None


def measured(stats: jax.Array, valid: jax.Array) -> TransitionStats:
    """The ``TransitionStats`` of a layer that just measured ``stats`` [B, T_l, 6] over tokens
    of validity ``valid`` [B, T_l] (the current tokens are its own: identity index)."""
    b, t = valid.shape
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return TransitionStats(stats, valid, index)


def follow_keep(
    stored: dict[int, TransitionStats], keep: jax.Array | None
) -> dict[int, TransitionStats]:
    """Every stored layer's index gathered with a pruning step's ``keep`` [B, T'] (None: kept
    all), so that it keeps pointing at the current tokens."""
    if keep is None:
        return stored
    return {
        i: s._replace(index=jnp.take_along_axis(s.index, keep, axis=1)) for i, s in stored.items()
    }


def run_layer(
    layer: LlamaBlock,
    seq: Tokens,
    cache: LayerCache | None,
    explicit: bool,
    form: Any,
    transition: bool = False,
) -> tuple[jax.Array, jax.Array | None, LayerCache | None, jax.Array | None]:
    """One decoder layer on ``seq``: causal attention (plus the bidirectional prefix block)
    without a cache; with one, the new tokens are written at the layer's next free slots and
    attend over every valid earlier slot. Returns the hidden states, the probabilities
    (``explicit``; else the spec's reduced ``form`` of them, if any), the updated cache and
    (``transition``) the layer's per-token transition statistics [B, T, 6], else None."""
    scores = None if explicit or form in (None, "probs") else form
    kw = dict(return_attention=explicit, scores=scores, transition=transition)
    if cache is None:
        t = seq.x.shape[1]
        allowed = jnp.tril(jnp.ones((t, t), bool))[None]
        if seq.bidir is not None:
            allowed = allowed | (seq.bidir[:, :, None] & seq.bidir[:, None, :])
        mask = seq.valid[:, None, :] & allowed
        x, probs, _, *stats = layer(seq.x, seq.cos, seq.sin, mask, **kw)
        return x, probs, None, (stats[0] if stats else None)
    cache, mask = cache.write(seq.positions, seq.valid, seq.bidir)
    kv = (cache.keys, cache.values)
    x, probs, (k, v), *stats = layer(
        seq.x, seq.cos, seq.sin, mask, kv_cache=kv, offset=cache.length, **kw
    )
    return x, probs, cache.advance(k, v, seq.x.shape[1]), (stats[0] if stats else None)
