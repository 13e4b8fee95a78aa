"""Mamba's causal depthwise conv, position aware for pruned sequences, and gap counts.

References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); Zhan et al., "Exploring Token Pruning
in Vision State Space Models" (ToP-ViM), NeurIPS 2024 (arXiv:2409.18962), Sec. 4.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_NO_POS = -(2**30)  # padding of shifted positions: never equals a real position minus a lag


def _shift(v: jax.Array, m: int, fill: Any = 0) -> jax.Array:
    """``v`` moved ``m`` steps later along axis 1 (``out[:, t] = v[:, t - m]``), ``fill`` first."""
    pad = [(0, 0)] * v.ndim
    pad[1] = (m, 0)
    return jnp.pad(v, pad, constant_values=fill)[:, : v.shape[1]]


def causal_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, positions: jax.Array | None = None
) -> jax.Array:
    """Causal depthwise conv1d ``out_t = b + sum_j kernel[K-1-j] * x[t - j]`` (zero padded).

    With ``positions`` (the strictly increasing original positions of the tokens of a pruned
    sequence) a tap reads the token at position ``pos_t - j`` when it is in ``x`` and zero
    otherwise: the conv of the full-length sequence with zeros at the missing positions,
    evaluated at the present ones, at the cost of the compact conv (``K (K - 1) / 2`` masked
    shifts instead of ``K - 1``).

    Shapes:
      x: [B, T, E]; kernel: [K, E] (nnx's ``[K, 1, E]`` depthwise kernel squeezed); bias: [E];
      positions: [B, T] int. Returns [B, T, E].

    Args:
      x: the tokens, in sequence order.
      kernel: the depthwise kernel; ``kernel[K - 1]`` multiplies the current token.
      bias: the bias, or None.
      positions: None (contiguous tokens) or their original positions (strictly increasing:
        not checked here, values are only known at run time).

    Returns:
      The conv output in ``x``'s dtype.

    Raises:
      ValueError: if ``x`` is not [B, T, E], ``kernel`` not [K, E] or ``positions`` not [B, T].

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 3, 1))
      >>> causal_conv(x, jnp.ones((2, 1)), None)[0, :, 0].tolist()
      [1.0, 2.0, 2.0]
      >>> causal_conv(x, jnp.ones((2, 1)), None, jnp.array([[0, 2, 3]]))[0, :, 0].tolist()
      [1.0, 1.0, 2.0]
    """
    if x.ndim != 3 or kernel.ndim != 2 or kernel.shape[1] != x.shape[2]:
        raise ValueError(
            f"causal_conv: x must be [B, T, E] and kernel [K, E]; got shapes {tuple(x.shape)} "
            f"and {tuple(kernel.shape)}"
        )
    if positions is not None and tuple(positions.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"causal_conv: positions must be [B, T] = {tuple(x.shape[:2])}; got shape "
            f"{tuple(positions.shape)}"
        )
    k = kernel.shape[0]
    kernel = kernel.astype(x.dtype)
    out = x * kernel[k - 1]
    for j in range(1, k):
        if positions is None:
            tap = _shift(x, j)
        else:
            tap = jnp.zeros_like(x)
            for m in range(1, j + 1):  # strictly increasing: pos_{t-m} <= pos_t - m
                hit = _shift(positions, m, _NO_POS) == positions - j
                tap = tap + jnp.where(hit[..., None], _shift(x, m), 0)
        out = out + tap * kernel[k - 1 - j]
    if bias is not None:
        out = out + bias.astype(x.dtype)
    return out


def gap_counts(positions: jax.Array) -> jax.Array:
    """Pruned positions right before each kept token: ``pos_j - pos_{j-1} - 1`` (``pos_{-1} = -1``).

    Shapes:
      positions: [B, T] int, strictly increasing along T. Returns [B, T] int32.

    Args:
      positions: the original positions of the kept tokens.

    Returns:
      The length of the run of pruned positions before each kept token.

    Raises:
      ValueError: if ``positions`` is not [B, T].

    Example:
      >>> import jax.numpy as jnp
      >>> gap_counts(jnp.array([[1, 2, 5]])).tolist()
      [[1, 0, 2]]
    """
    if positions.ndim != 2:
        raise ValueError(f"gap_counts: positions must be [B, T]; got shape {positions.shape}")
    prev = _shift(positions, 1, -1)
    return (positions - prev - 1).astype(jnp.int32)
