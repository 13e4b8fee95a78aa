"""The layers of ``LlamaLM``: grouped-query attention with RoPE and a KV cache, the gated MLP
(SwiGLU; GeGLU for Gemma), RMSNorm (Llama's, or Gemma's unit-offset one) and the pre-norm
decoder block.

Every projection is an ``nnx.Linear`` (a ``kernel`` leaf, so ``pruneax.weights``' default
predicate selects it) of the per-layer width a structurally pruned config gives
(``heads_per_layer`` / ``kv_heads_per_layer`` / ``mlp_per_layer``).

References: transformers' ``LlamaAttention`` / ``LlamaMLP`` / ``LlamaRMSNorm`` /
``LlamaDecoderLayer``, ``GemmaMLP`` / ``GemmaRMSNorm`` (``models/gemma/modeling_gemma.py``);
Ainslie et al., "GQA", EMNLP 2023 (arXiv:2305.13245).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models._shared.layers import rms_norm as shared_rms_norm
from pruneax.models.llama._config import LlamaConfig
from pruneax.models.llama._rope import apply_rope
from pruneax.models.llama._scores import attention_scores

# HF's init for training from scratch: N(0, initializer_range = 0.02), zero biases.
normal02 = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros
_F32 = jnp.float32


def _attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, explicit: bool
) -> tuple[jax.Array, jax.Array | None]:
    """Grouped-query attention. ``q`` [B, T, H, hd], ``k`` / ``v`` [B, S, KV, hd], ``mask``
    bool [B, T, S]. Returns ``(out [B, T, H, hd], probs [B, H, T, S] float32 or None)``.

    ``explicit``: float32 logits and softmax, probabilities returned (query head h uses key
    head h // (H / KV), as HF's ``repeat_kv``); else ``jax.nn.dot_product_attention``. Fully
    masked rows (padding queries) get uniform weights, never NaN.
    """
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    scale = hd**-0.5
    if not explicit:
        out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
        return out, None
    qg = q.reshape(b, t, kv, h // kv, hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=_F32) * scale
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v).reshape(b, t, h, hd)
    return out, probs.reshape(b, h, t, s)


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache.

    Attributes ``q_proj`` Linear(D, H*hd), ``k_proj`` / ``v_proj`` Linear(D, KV*hd),
    ``o_proj`` Linear(H*hd, D) (biases as the config says), with H / KV the heads of layer
    ``layer`` (``config.heads_per_layer`` / ``kv_heads_per_layer``: structured pruning may
    leave fewer, or none: then the output is the ``o_proj`` bias).
    """

    def __init__(
        self,
        config: LlamaConfig,
        *,
        layer: int = 0,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        cfg = config
        self.config = cfg
        self.num_heads = cfg.heads_per_layer[layer]
        self.num_kv_heads = cfg.kv_heads_per_layer[layer]

        def linear(i: int, o: int, bias: bool) -> nnx.Linear:
            return nnx.Linear(
                i,
                o,
                use_bias=bias,
                kernel_init=normal02,
                bias_init=_zeros,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

        d, h, kv, hd = cfg.hidden_size, self.num_heads, self.num_kv_heads, cfg.head_dim
        self.q_proj = linear(d, h * hd, cfg.attention_bias)
        self.k_proj = linear(d, kv * hd, cfg.attention_bias)
        self.v_proj = linear(d, kv * hd, cfg.attention_bias)
        self.o_proj = linear(h * hd, d, cfg.attention_out_bias)

    def project_qk(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Queries [B, T, H, hd] and keys [B, T, KV, hd] of ``x`` [B, T, D] (biases included)
        WITHOUT RoPE: FEATHER's criterion reads them at its pruning layers only."""
        cfg = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, cfg.head_dim)
        return q, k

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        *,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        offset: jax.Array | int = 0,
        return_attention: bool = False,
        scores: Any = None,
    ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array]]:
        """``x`` [B, T, D], ``cos`` / ``sin`` [B, T, hd] of the tokens' positions, ``mask`` bool
        [B, T, S] over the keys (S = T without a cache, the cache size with one). With
        ``kv_cache = (keys, values)`` [B, S, KV, hd] the new keys / values are written at slots
        ``[offset, offset + T)`` and attention runs over the whole cache. Returns ``(out [B, T,
        D], probs [B, H, T, S] or None, (keys, values))``. ``scores``: a reduced form
        (``"last_query"``, ``("key_mass", start, stop)``; see ``_scores``) returned instead of
        the probabilities while the output uses the fused attention (ignored when
        ``return_attention``)."""
        cfg = self.config
        b, t, _ = x.shape
        q, k = self.project_qk(x)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            kc, vc = kv_cache
            k = jax.lax.dynamic_update_slice_in_dim(kc, k.astype(kc.dtype), offset, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(vc, v.astype(vc.dtype), offset, axis=1)
        if self.num_heads == 0:  # every group pruned away: nothing to attend with
            out = jnp.zeros((b, t, 0, cfg.head_dim), q.dtype)
            probs = jnp.zeros((b, 0, t, k.shape[1]), _F32) if return_attention else None
            if scores is not None and not return_attention:
                shape = (1, k.shape[1]) if scores == "last_query" else (t, 1)
                probs = jnp.zeros((b, 0, *shape), _F32)
        else:
            out, probs = _attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, return_attention)
            if scores is not None and not return_attention:
                probs = attention_scores(q, k.astype(q.dtype), mask, scores, offset)
        return self.o_proj(out.reshape(b, t, self.num_heads * cfg.head_dim)), probs, (k, v)


class LlamaMlp(nnx.Module):
    """Gated MLP ``down_proj(act(gate_proj(x)) * up_proj(x))`` with ``act`` the config's
    ``hidden_act`` (SiLU: SwiGLU; tanh-approximated GELU: Gemma's GeGLU), of width
    ``config.mlp_per_layer[layer]`` (0 after structured pruning leaves the ``down_proj`` bias)."""

    def __init__(
        self,
        config: LlamaConfig,
        *,
        layer: int = 0,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        kw = dict(
            use_bias=config.mlp_bias,
            kernel_init=normal02,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        d, f = config.hidden_size, config.mlp_per_layer[layer]
        self.gate_proj = nnx.Linear(d, f, **kw)
        self.up_proj = nnx.Linear(d, f, **kw)
        self.down_proj = nnx.Linear(f, d, **kw)
        self.hidden_act = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = self.gate_proj(x)
        if self.hidden_act == "gelu_tanh":
            gate = jax.nn.gelu(gate, approximate=True)
        else:
            gate = jax.nn.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class UnitOffsetRMSNorm(nnx.Module):
    """Gemma's RMSNorm: ``x * rsqrt(mean(x^2) + eps) * (1 + scale)`` computed in float32 and
    cast to ``dtype`` afterwards (Llama's casts before the scale). ``scale`` [dim] starts at 0
    (the identity), as transformers' ``GemmaRMSNorm.weight``."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
        self.epsilon = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(_F32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        dtype = x.dtype if self.dtype is None else self.dtype
        return (normed * (1.0 + self.scale[...].astype(_F32))).astype(dtype)


def rms_norm(
    config: LlamaConfig, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.RMSNorm | UnitOffsetRMSNorm:
    """The RMSNorm over ``hidden_size`` with the config's epsilon (float32 statistics): the
    shared ``nnx.RMSNorm``, or ``UnitOffsetRMSNorm`` when ``config.rms_norm_unit_offset``."""
    if config.rms_norm_unit_offset:
        return UnitOffsetRMSNorm(
            config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
    return shared_rms_norm(
        config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )


TRANSITION_EPS = 1e-8  # torch's cosine_similarity eps; also guards ||b|| = 0


def transition_stats(before: jax.Array, after: jax.Array) -> jax.Array:
    """Per-token ``(||b||, ||a||, cos(b, a))`` float32 [..., 3] of a sub-block's normalised
    input ``before`` = b and its output ``after`` = a (before the residual add), both [..., D].

    The cosine is ``b . a / (max(||b||, eps) * max(||a||, eps))`` with eps = 1e-8 (torch's
    ``cosine_similarity``), computed in float32 whatever the inputs' dtype.

    Example:
      >>> b, a = jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 2.0]])
      >>> transition_stats(b, a).tolist()
      [[5.0, 2.0, 0.800000011920929]]
    """
    b32, a32 = before.astype(_F32), after.astype(_F32)
    nb = jnp.sqrt(jnp.sum(b32 * b32, axis=-1))
    na = jnp.sqrt(jnp.sum(a32 * a32, axis=-1))
    dot = jnp.sum(b32 * a32, axis=-1)
    cos = dot / (jnp.maximum(nb, TRANSITION_EPS) * jnp.maximum(na, TRANSITION_EPS))
    return jnp.stack([nb, na, cos], axis=-1)


class LlamaBlock(nnx.Module):
    """Pre-norm decoder layer: ``x + self_attn(input_layernorm(x))``, then
    ``x + mlp(post_attention_layernorm(x))``. Same arguments and returns as
    ``LlamaAttention``; ``layer`` picks the sizes of a structurally pruned config.

    With ``transition=True`` the call returns a fourth item, the per-token transition
    statistics float32 [B, T, 6] of its two sub-blocks (``transition_stats`` of the attention's
    ``(input_layernorm(x), self_attn output)``, then of the MLP's
    ``(post_attention_layernorm(h), mlp output)``): what a pruning spec's
    ``transition_layers`` asks for (TransPrune's token transition variation)."""

    def __init__(
        self,
        config: LlamaConfig,
        *,
        layer: int = 0,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        kw = dict(layer=layer, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = rms_norm(config, dtype, param_dtype, rngs)
        self.self_attn = LlamaAttention(config, **kw)
        self.post_attention_layernorm = rms_norm(config, dtype, param_dtype, rngs)
        self.mlp = LlamaMlp(config, **kw)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        *,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        offset: jax.Array | int = 0,
        return_attention: bool = False,
        scores: Any = None,
        transition: bool = False,
    ) -> tuple[Any, ...]:
        normed = self.input_layernorm(x)
        y, probs, kv = self.self_attn(
            normed,
            cos,
            sin,
            mask,
            kv_cache=kv_cache,
            offset=offset,
            return_attention=return_attention,
            scores=scores,
        )
        x = x + y
        normed_mlp = self.post_attention_layernorm(x)
        z = self.mlp(normed_mlp)
        if not transition:
            return x + z, probs, kv
        stats = jnp.concatenate(
            [transition_stats(normed, y), transition_stats(normed_mlp, z)], axis=-1
        )
        return x + z, probs, kv, stats
