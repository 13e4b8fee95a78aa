"""Layers the language and state-space models share: the RMSNorm they all use and the LM head,
tied to the embedding or untied."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def rms_norm(dim: int, eps: float, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """An ``nnx.RMSNorm`` over ``dim`` whose statistics are float32 whatever ``dtype`` is (as
    transformers' ``LlamaRMSNorm`` / ``MambaRMSNorm``): scale initialised to 1."""
    return nnx.RMSNorm(
        dim,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def lm_head(
    dim: int, vocab: int, *, tied: bool, init: Any, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.Linear | None:
    """The untied LM head (``[dim, vocab]`` kernel, no bias), or None when tied."""
    if tied:
        return None
    return nnx.Linear(
        dim,
        vocab,
        use_bias=False,
        kernel_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def lm_logits(hidden: jax.Array, embed: nnx.Embed, head: nnx.Linear | None) -> jax.Array:
    """Float32 logits of final-normed ``hidden``: ``head(hidden)``, or ``hidden @ embedding^T``
    when the head is tied (``head`` None)."""
    out = embed.attend(hidden) if head is None else head(hidden)
    return out.astype(jnp.float32)
