"""The key / value cache of ``LlamaLM``: ``KVCache`` (all layers), ``LayerCache`` (one layer).

Per layer, keys (RoPE applied) and values ``[B, S_l, KV, hd]`` plus the RoPE position and the
validity of every slot, and the number of filled slots. Slots are filled in sequence order, so
causality is by slot index: a query at chunk index ``i`` of a layer whose cache held ``n``
entries before the call sees the valid slots ``j <= n + i``. Each layer has its own length,
which is what lets an in-LLM pruning spec shorten the caches of the layers after it acts.
``LlamaLM`` threads one ``LayerCache`` through each layer and reassembles the ``KVCache``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pruneax.models._shared.common import is_size
from pruneax.models.llama._config import LlamaConfig
from pruneax.models.llama._prune import PruneSpec, check_prune


class LayerCache(NamedTuple):
    """The cache of one layer (a pytree).

    Attributes:
      keys: [B, S, KV, hd] keys with RoPE applied.
      values: [B, S, KV, hd].
      positions: [B, S] int32 RoPE position of each slot.
      valid: [B, S] bool: the slot holds a real token.
      length: int32 scalar, the filled slots.
    """

    keys: jax.Array
    values: jax.Array
    positions: jax.Array
    valid: jax.Array
    length: jax.Array

    def write(
        self, positions: jax.Array, valid: jax.Array, bidirectional: jax.Array | None = None
    ) -> tuple[LayerCache, jax.Array]:
        """Writes the positions / validity of T new tokens at slots ``[length, length + T)``.

        Args:
          positions: [B, T] int32 RoPE positions of the new tokens.
          valid: [B, T] bool validity of the new tokens.
          bidirectional: [B, T] bool or None: new tokens flagged here also see the flagged new
            tokens after them (a bidirectional prefix block inside this call's tokens).

        Returns:
          ``(cache, mask)``: the cache with those slots written (keys / values and ``length``
          unchanged: the attention writes the keys at ``length``, ``advance`` moves it), and
          the attention mask bool [B, T, S] of the new queries over every slot (valid, and
          causal by slot index or both flagged ``bidirectional``).

        Example:
          >>> from pruneax.models.llama import init_cache, llm_config
          >>> layer = init_cache(llm_config("tiny"), 1, 4).layer(0)
          >>> _, mask = layer.write(jnp.arange(2)[None], jnp.ones((1, 2), bool))
          >>> mask[0].astype(int).tolist()
          [[1, 0, 0, 0], [1, 1, 0, 0]]
        """
        t = valid.shape[1]
        slot_valid = jax.lax.dynamic_update_slice_in_dim(self.valid, valid, self.length, 1)
        slot_pos = jax.lax.dynamic_update_slice_in_dim(self.positions, positions, self.length, 1)
        s = slot_valid.shape[1]
        allowed = (jnp.arange(s)[None, :] <= self.length + jnp.arange(t)[:, None])[None]
        if bidirectional is not None:
            slot_bidir = jnp.zeros_like(slot_valid)
            slot_bidir = jax.lax.dynamic_update_slice_in_dim(
                slot_bidir, bidirectional, self.length, 1
            )
            allowed = allowed | (bidirectional[:, :, None] & slot_bidir[:, None, :])
        return self._replace(positions=slot_pos, valid=slot_valid), slot_valid[:, None] & allowed

    def advance(self, keys: jax.Array, values: jax.Array, t: int) -> LayerCache:
        """The cache after the attention wrote ``t`` new keys / values: ``length + t``."""
        return self._replace(keys=keys, values=values, length=self.length + t)


class KVCache(NamedTuple):
    """The key / value cache of a ``LlamaLM`` (a pytree; pass it through ``jax.jit``).

    Per layer l (tuples of ``num_layers`` arrays), with ``S_l`` slots filled in sequence order:

    Attributes:
      keys: [B, S_l, KV, hd] keys with RoPE applied.
      values: [B, S_l, KV, hd].
      positions: [B, S_l] int32 RoPE position of each slot (0 where empty).
      valid: [B, S_l] bool: the slot holds a real (not padding) token.
      lengths: [num_layers] int32 filled slots per layer. After a FastV prefill the layers >=
        K hold fewer entries than the layers < K.
      next_position: [B] int32 the position given to the next token when the caller passes no
        ``positions`` (one past the last token seen).

    Example:
      >>> from pruneax.models.llama import init_cache, llm_config
      >>> cache = init_cache(llm_config("tiny"), 2, 8)
      >>> cache.sizes, cache.layer(0).keys.shape
      ((8, 8, 8, 8), (2, 8, 2, 16))
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    positions: tuple[jax.Array, ...]
    valid: tuple[jax.Array, ...]
    lengths: jax.Array
    next_position: jax.Array

    @property
    def sizes(self) -> tuple[int, ...]:
        """``S_l`` of every layer (static)."""
        return tuple(int(k.shape[1]) for k in self.keys)

    def layer(self, i: int) -> LayerCache:
        """The ``LayerCache`` of layer ``i``."""
        return LayerCache(
            self.keys[i], self.values[i], self.positions[i], self.valid[i], self.lengths[i]
        )

    @classmethod
    def from_layers(cls, layers: list[LayerCache], next_position: jax.Array) -> KVCache:
        """Reassembles a ``KVCache`` from every layer's ``LayerCache``.

        Args:
          layers: ``num_layers`` ``LayerCache``.
          next_position: [B] int32.

        Returns:
          The ``KVCache``.
        """
        return cls(
            keys=tuple(c.keys for c in layers),
            values=tuple(c.values for c in layers),
            positions=tuple(c.positions for c in layers),
            valid=tuple(c.valid for c in layers),
            lengths=jnp.stack([c.length for c in layers]).astype(jnp.int32),
            next_position=next_position.astype(jnp.int32),
        )


def init_cache(
    config: LlamaConfig,
    batch: int,
    max_len: int,
    dtype: Any = jnp.float32,
    *,
    prune: PruneSpec | None = None,
) -> KVCache:
    """An empty ``KVCache`` for ``batch`` sequences of up to ``max_len`` tokens.

    With ``prune`` (any ``PruneSpec``: ``FastVSpec``, ``FeatherSpec``, ``TodreSpec`` or one of
    your own), layer l gets ``prune.tokens_per_layer(num_layers, max_len)[l]`` slots: the layers
    after a pruning layer never see the dropped image tokens (FastV: ``max_len - num_dropped``
    from ``layer`` on).

    Args:
      config: the model's ``LlamaConfig``.
      batch: rows B.
      max_len: tokens per row the cache must hold (prompt + generated).
      dtype: dtype of the keys / values.
      prune: the spec the prefill will use, or None.

    Returns:
      A ``KVCache`` with ``lengths`` 0 and ``next_position`` 0.

    Raises:
      ValueError: for a non-``LlamaConfig``, a non-positive batch / max_len, or a ``prune``
        that is not a ``PruneSpec`` or does not fit.

    Example:
      >>> from pruneax.models.llama import FastVSpec, llm_config
      >>> init_cache(llm_config("tiny"), 1, 24, prune=FastVSpec(start=2, stop=18)).sizes
      (24, 24, 16, 16)
    """
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"init_cache: config must be a LlamaConfig; got {type(config).__name__}")
    for name, value in (("batch", batch), ("max_len", max_len)):
        if not is_size(value):
            raise ValueError(f"init_cache: {name} must be a positive int; got {value!r}")
    sizes = [int(max_len)] * config.num_layers
    if prune is not None:
        check_prune(prune, config.num_layers, int(max_len), "init_cache")
        sizes = [int(s) for s in prune.tokens_per_layer(config.num_layers, int(max_len))]
    kv_heads = config.kv_heads_per_layer  # per layer: structured pruning may differ
    kv_shape = lambda s, i: (batch, s, kv_heads[i], config.head_dim)
    return KVCache(
        keys=tuple(jnp.zeros(kv_shape(s, i), dtype) for i, s in enumerate(sizes)),
        values=tuple(jnp.zeros(kv_shape(s, i), dtype) for i, s in enumerate(sizes)),
        positions=tuple(jnp.zeros((batch, s), jnp.int32) for s in sizes),
        valid=tuple(jnp.zeros((batch, s), bool) for s in sizes),
        lengths=jnp.zeros((config.num_layers,), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def layer_shifts(cache: KVCache) -> jax.Array:
    """How far each layer's numbering lags layer 0's: int32 [L, B].

    Layer l's lag is (highest RoPE position among layer 0's valid cache slots) - (the same in
    layer l), 0 where layer l holds no valid slot. It is 0 for every layer unless a pruning
    spec renumbered the shortened sequence (``PruneStep.positions``: VisionDrop), whose
    later tokens then continue each layer's own numbering, as the published code shifts its
    decode positions by the tokens removed before each layer.
    """
    top = jnp.stack(
        [
            jnp.max(jnp.where(v, p, -1), axis=1)
            for p, v in zip(cache.positions, cache.valid, strict=True)
        ]
    )
    return jnp.where(top >= 0, top[:1] - top, 0).astype(jnp.int32)
