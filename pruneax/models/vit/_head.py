"""SigLIP's multihead attention-pooling (MAP) head: a learned probe attends over the tokens.

Transcribed from transformers' ``models/siglip/modeling_siglip.py``
(``SiglipMultiheadAttentionPoolingHead``): ``torch.nn.MultiheadAttention(probe, x, x)`` with
the packed ``in_proj`` (query / key / value rows stacked), then ``h + mlp(layernorm(h))`` and
the probe's row. Written here in JAX idiom, float32 logits and softmax.

References: Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), ICCV 2023
(arXiv:2303.15343); Lee et al., "Set Transformer", ICML 2019 (pooling by multihead attention).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models.vit._config import ViTConfig
from pruneax.models.vit._layers import Mlp, _layer_norm, _trunc02, _zeros


class MapHead(nnx.Module):
    """Multihead attention pooling: ``[B, T, D]`` tokens -> ``[B, D]`` (SigLIP's vision head).

    Leaves: ``probe`` [1, 1, D]; ``in_proj`` ``nnx.Linear(D, 3D)`` (query, key, value columns
    in that order, as PyTorch's packed ``in_proj_weight``); ``out`` ``nnx.Linear(D, D)``;
    ``norm`` LayerNorm; ``mlp`` ``Mlp(D, config.mlp_dim)``. Heads: ``config.num_heads`` (the
    head is never structurally pruned).

    Shapes:
      ``x`` [B, T, D] (after the final LayerNorm); optional ``size`` [B, T] token sizes, which
      add ``log(size)`` to the probe's logits over the keys (ToMe's proportional attention,
      so a merged token weighs as the patches it holds). Returns [B, D].

    Args:
      config: the ``ViTConfig`` (width, heads, MLP width, activation, LayerNorm epsilon).
      dtype: computation dtype; logits and softmax are float32.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: if ``size`` is not ``[B, T]``.

    References: Zhai et al. (SigLIP), ICCV 2023; transformers'
      ``SiglipMultiheadAttentionPoolingHead``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import MapHead, ViTConfig
      >>> cfg = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_heads=2, mlp_dim=32,
      ...                 class_token=False, pool="mean", map_head=True)
      >>> MapHead(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))(
      ...     jnp.ones((2, 4, 16))).shape
      (2, 16)
    """

    def __init__(self, config: ViTConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.probe = nnx.Param(_trunc02(rngs.params(), (1, 1, d), param_dtype))
        kw = dict(
            kernel_init=_trunc02, bias_init=_zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.in_proj = nnx.Linear(d, 3 * d, **kw)
        self.out = nnx.Linear(d, d, **kw)
        self.norm = _layer_norm(config, dtype, param_dtype, rngs)
        self.mlp = Mlp(
            d,
            config.mlp_dim,
            act=config.hidden_act,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, size: jax.Array | None = None) -> jax.Array:
        """The pooled [B, D]; see the class docstring."""
        b, t, d = x.shape
        h = self.num_heads
        hd = d // h
        w = self.in_proj.kernel[...]
        bias = self.in_proj.bias[...]
        dt = self.in_proj.dtype or x.dtype
        probe = self.probe[...].astype(dt)
        q = probe[0] @ w[:, :d].astype(dt) + bias[:d].astype(dt)  # [1, D]
        kv = x.astype(dt) @ w[:, d:].astype(dt) + bias[d:].astype(dt)  # [B, T, 2D]
        k = kv[..., :d].reshape(b, t, h, hd)
        v = kv[..., d:].reshape(b, t, h, hd)
        logits = jnp.einsum("hd,bkhd->bhk", q.reshape(h, hd), k, preferred_element_type=jnp.float32)
        logits = logits * hd**-0.5
        if size is not None:
            if size.shape != (b, t):
                raise ValueError(
                    f"MapHead: size must be [B, T] = {(b, t)}; got shape {tuple(size.shape)}"
                )
            logits = logits + jnp.log(size.astype(jnp.float32))[:, None, :]
        probs = jax.nn.softmax(logits, axis=-1)
        pooled = jnp.einsum("bhk,bkhd->bhd", probs.astype(v.dtype), v).reshape(b, d)
        pooled = self.out(pooled)
        return pooled + self.mlp(self.norm(pooled))
