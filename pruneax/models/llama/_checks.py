"""Argument checks of ``LlamaLM.__call__`` and the static plan of one call.

Everything here runs at trace time on static shapes (and, outside jit, on concrete cache
lengths); every failure is a ``ValueError`` prefixed ``"LlamaLM: "`` naming the argument.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.models.llama._cache import KVCache
from pruneax.models.llama._config import LlamaConfig
from pruneax.models.llama._prune import check_prune, transition_layers
from pruneax.models.llama._scores import prune_form
from pruneax.models.llama._spec_helpers import contiguous_positions


class CallPlan(NamedTuple):
    """What one ``LlamaLM`` call does, known before tracing the layers.

    Attributes:
      asked: layers whose attention probabilities are returned (``return_attention_at``).
      explicit: layers that compute explicit probabilities (asked, or read whole by the spec).
      events: layers at whose input the pruning spec acts.
      tokens: tokens each layer processes (and appends to its cache).
      forms: {layer: form} in which the spec reads each of its ``attention_layers``
        (``"probs"``, ``"last_query"``, ``("key_mass", start, stop)``: see ``_scores``).
      transitions: layers that measure their per-token transition statistics for the spec
        (its optional ``transition_layers``).
    """

    asked: frozenset[int]
    explicit: frozenset[int]
    events: tuple[int, ...]
    tokens: tuple[int, ...]
    forms: dict[int, Any]
    transitions: frozenset[int] = frozenset()


def plan_call(
    config: LlamaConfig,
    b: int,
    t: int,
    cache: Any,
    prune: Any,
    return_attention_at: Any,
    logits_to_keep: Any,
) -> CallPlan:
    """Checks the cache, the attention layers, the spec and ``logits_to_keep`` of a call of
    ``b`` rows of ``t`` tokens, and returns its ``CallPlan``.

    Raises:
      ValueError: for a malformed cache, layers out of range, a spec that is not a
        ``PruneSpec`` or does not fit, a bad ``logits_to_keep``, or (outside jit) a cache
        without room for the new tokens.
    """
    n = config.num_layers
    if cache is not None:
        check_cache(cache, config, b)
    asked = frozenset(attention_layers(return_attention_at, n))
    explicit, events, tokens, forms, transitions = asked, (), (t,) * n, {}, frozenset()
    if prune is not None:
        check_prune(prune, n, t, "LlamaLM")
        forms = {int(i): prune_form(prune, int(i), n, "LlamaLM") for i in prune.attention_layers(n)}
        explicit = asked | frozenset(i for i, f in forms.items() if f == "probs")
        events = tuple(int(i) for i in prune.pruning_layers(n))
        tokens = tuple(int(v) for v in prune.tokens_per_layer(n, t))
        transitions = transition_layers(prune, n, "LlamaLM")
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int):
        raise ValueError(f"LlamaLM: logits_to_keep must be an int; got {logits_to_keep!r}")
    if logits_to_keep < 0:
        raise ValueError(f"LlamaLM: logits_to_keep must be >= 0; got {logits_to_keep}")
    if cache is not None:
        check_room(cache, tokens)
    return CallPlan(asked, explicit, events, tokens, forms, transitions)


def token_inputs(model: Any, input_ids: Any, inputs_embeds: Any) -> jax.Array:
    """The embeddings [B, T, D] (in ``model.dtype``) of exactly one of the two inputs."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("LlamaLM: pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape[1] < 1:
            raise ValueError(
                f"LlamaLM: input_ids must be integer [B, T] with T >= 1; got shape "
                f"{tuple(ids.shape)} dtype {ids.dtype}"
            )
        return model.embed(ids)
    emb = jnp.asarray(inputs_embeds)
    d = model.config.hidden_size
    if emb.ndim != 3 or emb.shape[2] != d or emb.shape[1] < 1:
        raise ValueError(
            f"LlamaLM: inputs_embeds must be [B, T, D={d}] with T >= 1; got shape "
            f"{tuple(emb.shape)}"
        )
    if not jnp.issubdtype(emb.dtype, jnp.floating):
        raise ValueError(f"LlamaLM: inputs_embeds must be floating; got dtype {emb.dtype}")
    return emb.astype(model.dtype)


def token_mask(attention_mask: Any, b: int, t: int) -> jax.Array:
    """The validity bool [B, T] of the new tokens (all True when ``attention_mask`` is None)."""
    if attention_mask is None:
        return jnp.ones((b, t), bool)
    m = jnp.asarray(attention_mask)
    if m.shape != (b, t) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(
            f"LlamaLM: attention_mask must be bool or 0/1 integers of shape [B, T] = "
            f"{(b, t)}; got shape {tuple(m.shape)} dtype {m.dtype}"
        )
    return m.astype(bool)


def token_flags(bidirectional: Any, b: int, t: int) -> jax.Array | None:
    """The bidirectional-prefix flags bool [B, T] of the new tokens, or None."""
    if bidirectional is None:
        return None
    m = jnp.asarray(bidirectional)
    if m.shape != (b, t) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(
            f"LlamaLM: bidirectional must be bool or 0/1 integers of shape [B, T] = {(b, t)}; "
            f"got shape {tuple(m.shape)} dtype {m.dtype}"
        )
    return m.astype(bool)


def token_positions(positions: Any, valid: jax.Array, start: jax.Array, b: int, t: int):
    """The int32 RoPE positions [B, T]: given ([B, T] or [T]), or ``start`` plus the running
    count of valid tokens (HF's rule for left padding)."""
    if positions is None:
        return contiguous_positions(start, valid)
    p = jnp.asarray(positions)
    if p.ndim == 1:
        p = jnp.broadcast_to(p, (b, p.shape[0]))
    if p.shape != (b, t) or not jnp.issubdtype(p.dtype, jnp.integer):
        raise ValueError(
            f"LlamaLM: positions must be integer [B, T] = {(b, t)} (or [T]); got shape "
            f"{tuple(jnp.shape(positions))} dtype {p.dtype}"
        )
    return p.astype(jnp.int32)


def check_cache(cache: Any, config: LlamaConfig, b: int) -> None:
    """Raises unless ``cache`` is a ``KVCache`` of ``config``'s layers for ``b`` rows."""
    if not isinstance(cache, KVCache):
        raise ValueError(f"LlamaLM: cache must be a KVCache; got {type(cache).__name__}")
    if len(cache.keys) != config.num_layers:
        raise ValueError(
            f"LlamaLM: cache has {len(cache.keys)} layers; the model has {config.num_layers}"
        )
    for i, (k, v, p, m) in enumerate(
        zip(cache.keys, cache.values, cache.positions, cache.valid, strict=True)
    ):
        s = k.shape[1] if k.ndim == 4 else -1
        want = (b, s, config.kv_heads_per_layer[i], config.head_dim)
        if k.shape != want or v.shape != want or p.shape != (b, s) or m.shape != (b, s):
            raise ValueError(
                f"LlamaLM: cache layer {i} must hold keys / values [B, S, KV, hd] = {want} "
                f"and positions / valid [B, S]; got {k.shape}, {v.shape}, {p.shape}, "
                f"{m.shape}"
            )


def attention_layers(layers: Any, num_layers: int) -> set[int]:
    """``return_attention_at`` as a set of layer indices in ``[0, num_layers)``."""
    try:
        out = set(layers)
    except TypeError:
        raise ValueError(
            f"LlamaLM: return_attention_at must be a tuple of layer indices; got {layers!r}"
        ) from None
    for i in out:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < num_layers:
            raise ValueError(
                f"LlamaLM: return_attention_at entries must be ints in [0, {num_layers}); got {i!r}"
            )
    return {int(i) for i in out}


def check_room(cache: KVCache, tokens: tuple[int, ...]) -> None:
    """Raises if some layer's cache cannot take its new tokens: always when the tokens exceed
    the slots, and outside jit (concrete lengths) when they exceed the free slots."""
    try:
        lengths = np.asarray(cache.lengths)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        lengths = np.zeros(len(tokens), np.int64)  # traced: an overflow makes the logits NaN
    for i, (n, tl, s) in enumerate(zip(lengths, tokens, cache.sizes, strict=True)):
        if n + tl > s:
            raise ValueError(
                f"LlamaLM: cache layer {i} holds {n} of {s} slots and cannot take {tl} more "
                "tokens; size it with init_cache(..., max_len, prune=...)"
            )
