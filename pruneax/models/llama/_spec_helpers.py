"""Helpers shared by the built-in in-LLM pruning specs (FastV, FEATHER, ToDRE, VisionDrop,
TransPrune): field checks, the kept-token indices of an image span, position renumbering and
per-layer token counts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pruneax.models._shared.fields import is_int


def check_span(owner: str, spec: Any) -> None:
    """Checks and normalises the ``start`` / ``stop`` fields of a spec (in place)."""
    for name in ("start", "stop"):
        value = getattr(spec, name)
        if not is_int(value):
            raise ValueError(f"{owner}: {name} must be an int; got {value!r}")
        object.__setattr__(spec, name, int(value))
    if not 0 <= spec.start < spec.stop:
        raise ValueError(
            f"{owner}: need 0 <= start < stop; got start={spec.start}, stop={spec.stop}"
        )


def check_length(spec: Any, t: int, where: str) -> None:
    """Raises unless the spec's image span lies inside the ``t`` tokens of the call."""
    if spec.stop > t:
        raise ValueError(
            f"{where}: the image span [{spec.start}, {spec.stop}) must lie inside the {t} input "
            "tokens"
        )


def check_layer(name: str, layer: int, num_layers: int, where: str) -> None:
    """Raises unless ``layer < num_layers``."""
    if layer >= num_layers:
        raise ValueError(f"{where}: {name} must be < num_layers = {num_layers}; got {layer}")


def contiguous_positions(start: jax.Array, valid: jax.Array) -> jax.Array:
    """int32 [B, T]: ``start`` [B] plus the running count of ``valid`` [B, T] tokens before
    each one (padding gets the position of the next valid token: HF's rule for left padding).
    ``LlamaLM``'s default positions and the renumbering of a shortened sequence."""
    count = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    return (start[:, None] + jnp.maximum(count, 0)).astype(jnp.int32)


def renumber(positions: jax.Array, valid: jax.Array) -> jax.Array:
    """Contiguous positions [B, T'] over the ``valid`` [B, T'] tokens of a shortened sequence
    from each row's first position (padding carries it): VisionDrop's, TransPrune's rule."""
    return contiguous_positions(positions[:, 0], valid)


def context_positions(ctx: Any) -> jax.Array:
    """``ctx.positions``, or ``arange(T)`` per row for a ``PruneContext`` built without them."""
    if ctx.positions is not None:
        return ctx.positions
    b, t = ctx.valid.shape
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def staged_tokens(
    layers: tuple[int, ...], num_image: int, kept: tuple[int, ...], num_layers: int, t: int
) -> tuple[int, ...]:
    """``tokens_per_layer`` of a spec that leaves ``kept[s]`` of its ``num_image`` image tokens
    from ``layers[s]`` on: ``t`` before ``layers[0]``, then ``t - num_image + kept[s]``."""
    out = []
    for i in range(num_layers):
        s = sum(i >= lay for lay in layers)
        out.append(t if s == 0 else t - num_image + kept[s - 1])
    return tuple(out)


def span_keep(picked: jax.Array, start: int, n: int, t: int) -> jax.Array:
    """``arange(start)``, ``start + picked`` [B, k], ``arange(start + n, t)`` per row: the local
    indices of the tokens kept when ``picked`` (ascending) are kept of the n image tokens."""
    b = picked.shape[0]
    head = jnp.broadcast_to(jnp.arange(start, dtype=jnp.int32), (b, start))
    tail = jnp.broadcast_to(jnp.arange(start + n, t, dtype=jnp.int32), (b, t - start - n))
    return jnp.concatenate([head, picked.astype(jnp.int32) + start, tail], axis=1)
