"""Rotary position embedding (RoPE) of ``LlamaLM``, as transformers computes it.

Angles ``position * inv_freq`` in float32, the ``[freqs, freqs]`` layout and the rotate-half
(not interleaved) rotation of transformers' ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb``;
the ``"linear"`` and ``"llama3"`` scalings of ``modeling_rope_utils.py``.

References: Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021
(arXiv:2104.09864); Grattafiori et al., "The Llama 3 Herd of Models", 2024 (arXiv:2407.21783)
for the "llama3" scaling.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.models.llama._config import LlamaConfig

_F32 = jnp.float32


@functools.lru_cache(maxsize=64)
def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies ``[head_dim / 2]`` float32, as transformers computes them.

    Plain: ``1 / theta ** (arange(0, hd, 2) / hd)`` in float32; ``"linear"``: divided by
    ``factor``; ``"llama3"``: wavelengths above ``original / low_freq_factor`` divided by
    ``factor``, below ``original / high_freq_factor`` unchanged, smoothly interpolated in between
    (``_compute_llama3_parameters``). The attention scaling of these types is 1.

    Args:
      config: the ``LlamaConfig`` (``head_dim``, ``rope_theta``, ``rope_scaling``).

    Returns:
      float32 NumPy array ``[head_dim / 2]`` (cached per config).

    Example:
      >>> from pruneax.models.llama import llm_config
      >>> rope_inv_freq(llm_config("tiny"))[:2]
      array([1.        , 0.31622776], dtype=float32)
    """
    hd = config.head_dim
    f32 = np.float32
    inv = f32(1.0) / (f32(config.rope_theta) ** (np.arange(0, hd, 2, dtype=f32) / f32(hd)))
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv.astype(f32)
    factor = f32(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return (inv / factor).astype(f32)
    old = f32(scaling["original_max_position_embeddings"])
    low, high = f32(scaling["low_freq_factor"]), f32(scaling["high_freq_factor"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = f32(2 * math.pi) / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv).astype(f32)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out).astype(f32)


def rope_cos_sin(
    positions: jax.Array, config: LlamaConfig, dtype: Any = _F32
) -> tuple[jax.Array, jax.Array]:
    """Cosines and sines of the RoPE angles at integer ``positions``.

    Args:
      positions: [...] integer positions (e.g. [B, T]).
      config: the ``LlamaConfig``.
      dtype: dtype of the results (the angles are float32 whatever it is).

    Returns:
      ``(cos, sin)``, each [..., head_dim] in the ``[freqs, freqs]`` layout.

    Example:
      >>> from pruneax.models.llama import llm_config
      >>> cos, sin = rope_cos_sin(jnp.arange(3)[None], llm_config("tiny"))
      >>> cos.shape, float(cos[0, 0, 0]), float(sin[0, 0, 0])
      ((1, 3, 16), 1.0, 0.0)
    """
    freqs = positions.astype(_F32)[..., None] * jnp.asarray(rope_inv_freq(config))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates query or key heads by their RoPE angles.

    Args:
      x: [B, T, heads, hd].
      cos, sin: [B, T, hd] (``rope_cos_sin``).

    Returns:
      ``x * cos + rotate_half(x) * sin`` [B, T, heads, hd] in ``x``'s dtype, with
      ``rotate_half(x) = [-x2, x1]`` (halves, not interleaved).

    Example:
      >>> x = jnp.ones((1, 1, 2, 4))
      >>> cos, sin = jnp.ones((1, 1, 4)), jnp.zeros((1, 1, 4))
      >>> bool(jnp.all(apply_rope(x, cos, sin) == x))
      True
    """
    c, s = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * c + jnp.concatenate([-x2, x1], axis=-1) * s
