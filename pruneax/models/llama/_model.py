"""Llama-family decoder (Llama 2 / 3, Qwen2) in Flax NNX, with a KV cache and in-LLM pruning.

``LlamaLM`` is the decoder-only transformer of Llama as transformers' ``LlamaForCausalLM``
computes it: token embedding (or caller-supplied ``inputs_embeds``, so that a VLM can splice
projected image tokens into the sequence), ``num_layers`` x [RMSNorm -> grouped-query attention
with rotary position embedding (RoPE, rotate-half layout) at EXPLICIT position ids -> residual
-> RMSNorm -> SwiGLU MLP -> residual], a final RMSNorm and an LM head (tied to the embedding or
not). Qwen2 is the same network with biases on the query / key / value projections.

KV cache (``KVCache``, ``init_cache``): per layer, keys (RoPE applied) and values
``[B, S_l, KV, hd]`` plus the RoPE position and the validity of every slot and the number of
filled slots. Slots are filled in sequence order, so causality is by slot index: a query at
chunk index ``i`` of a layer whose cache held ``n`` entries before the call sees the valid
slots ``j <= n + i``. Each layer has its own length, which is what lets FastV shorten the
caches of the layers after the pruning layer.

In-LLM visual token pruning (``prune=``, one frozen spec per call, defined in
``_llm_prune``): ``FastVSpec`` (at layer K the image tokens ``[start, stop)`` of the sequence
are ranked by layer K-1's last-query attention and the top ``k`` kept), ``FeatherSpec``
(FEATHER's uniform grid + no-RoPE criterion at two layers), ``TodreSpec`` (ToDRE's stage 2:
all image tokens leave deep layers when text and image stop attending to each other). Pruned
tokens leave the sequence of the later layers and their KV caches; text tokens are never
dropped; kept tokens keep their ORIGINAL RoPE position ids. Later decode steps then attend over
fewer entries in the pruned layers.

References: Touvron et al., "Llama 2: Open Foundation and Fine-Tuned Chat Models", 2023
(arXiv:2307.09288); Grattafiori et al., "The Llama 3 Herd of Models", 2024 (arXiv:2407.21783)
for the "llama3" RoPE scaling; Yang et al., "Qwen2 Technical Report", 2024 (arXiv:2407.10671);
Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021
(arXiv:2104.09864); Ainslie et al., "GQA", EMNLP 2023 (arXiv:2305.13245); Chen et al., "An
Image is Worth 1/2 Tokens After Layer 2" (FastV), ECCV 2024 (arXiv:2403.06764); Endo et al.,
"Feather the Throttle", 2024 (arXiv:2412.13180); transformers' ``modeling_llama.py``,
``modeling_qwen2.py``, ``modeling_rope_utils.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pruneax.models._shared.common import is_size, layer_sizes
from pruneax.models.llama._prune import (  # the specs live there; re-exported from here
    FastVSpec,  # noqa: F401
    FeatherSpec,  # noqa: F401
    PruneSpec,
    TodreSpec,  # noqa: F401
    check_prune,
    fastv_keep_indices,  # noqa: F401
)

ROPE_TYPES = ("linear", "llama3")  # besides None ("default")
_ROPE_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}

# HF's init for training from scratch: N(0, initializer_range = 0.02), zero biases.
_normal02 = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros
_F32 = jnp.float32


def _is_float(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(value)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a ``LlamaLM`` (frozen, hashable: usable as a static jit argument).

    Field names follow transformers' ``LlamaConfig`` where they can (``num_layers`` is its
    ``num_hidden_layers``, ``num_heads`` / ``num_kv_heads`` its ``num_attention_heads`` /
    ``num_key_value_heads``).

    Attributes:
      vocab_size: embedding rows V.
      hidden_size: model width D.
      intermediate_size: SwiGLU hidden width.
      num_layers: decoder layers.
      num_heads: query heads H.
      num_kv_heads: key / value heads (grouped-query attention; H % num_kv_heads == 0); None
        means ``num_heads`` (multi-head attention). Stored resolved.
      head_dim: width of one head; None means ``hidden_size // num_heads``. Stored resolved.
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: RoPE base wavelength.
      rope_scaling: None (plain RoPE), or a mapping with ``rope_type`` (or ``type``)
        ``"linear"`` (key ``factor``: inverse frequencies / factor) or ``"llama3"`` (keys
        ``factor``, ``low_freq_factor``, ``high_freq_factor``,
        ``original_max_position_embeddings``; the last defaults to
        ``max_position_embeddings``). Stored as a sorted tuple of ``(key, value)`` pairs so the
        config stays hashable; read it back with ``rope_scaling_dict``.
      max_position_embeddings: the context length the model was trained for (informational;
        RoPE is not cut off there).
      tie_word_embeddings: logits = hidden @ embedding^T (no ``lm_head`` parameter).
      attention_bias: biases on the query / key / value projections (Llama: off; Qwen2: on).
      attention_out_bias: bias on the output projection; None means ``attention_bias``
        (Llama's single flag covers all four projections; Qwen2 has none on ``o_proj``).
        Stored resolved.
      mlp_bias: biases on the SwiGLU projections.
      layer_heads: query heads of every layer after structured pruning (``num_layers`` ints,
        each a multiple of ``num_groups`` in ``[0, num_heads]``: pruning removes whole GQA
        groups, a key / value head with its ``num_groups`` query heads), or None: ``num_heads``
        everywhere. ``num_heads`` / ``num_kv_heads`` / ``head_dim`` stay the unpruned values.
        A layer with 0 heads adds only the ``o_proj`` bias (a residual identity without one).
      layer_kv_heads: key / value heads of every layer, ``layer_heads[i] // num_groups``. Give
        either of the two (the other is derived) or both (consistent); stored resolved.
      layer_mlp: SwiGLU width of every layer (``num_layers`` ints in ``[0,
        intermediate_size]``), or None: ``intermediate_size`` everywhere.

    ``num_kv_heads``, ``head_dim`` and ``attention_out_bias`` are stored resolved, so
    ``dataclasses.replace(config, hidden_size=...)`` keeps the old values: pass them again (or
    build with ``llm_config(name, **overrides)``, which resolves after overriding).

    Raises:
      ValueError: for non-positive sizes, heads that do not divide, an odd head_dim, a
        non-positive epsilon / theta, non-bool flags, or an unsupported / incomplete
        ``rope_scaling``.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool | None = None
    mlp_bias: bool = False
    layer_heads: tuple[int, ...] | None = None
    layer_kv_heads: tuple[int, ...] | None = None
    layer_mlp: tuple[int, ...] | None = None

    def __post_init__(self):
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        for name in (*sizes, "max_position_embeddings"):
            value = getattr(self, name)
            if not is_size(value):
                raise ValueError(f"LlamaConfig: {name} must be a positive int; got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, default in (
            ("num_kv_heads", self.num_heads),
            ("head_dim", self.hidden_size // self.num_heads),
        ):
            value = getattr(self, name)
            value = default if value is None else value
            if not is_size(value):
                raise ValueError(
                    f"LlamaConfig: {name} must be a positive int or None; got {value!r}"
                )
            object.__setattr__(self, name, int(value))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig: num_heads {self.num_heads} must be a multiple of num_kv_heads "
                f"{self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be even (RoPE); got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not _is_float(value) or not value > 0:
                raise ValueError(f"LlamaConfig: {name} must be a float > 0; got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.attention_out_bias is None:
            object.__setattr__(self, "attention_out_bias", self.attention_bias)
        for name in ("tie_word_embeddings", "attention_bias", "attention_out_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LlamaConfig: {name} must be a bool; got {getattr(self, name)!r}")
        object.__setattr__(self, "rope_scaling", self._normalize_rope_scaling(self.rope_scaling))
        self._resolve_layer_sizes()

    def _resolve_layer_sizes(self) -> None:
        n, g, where = self.num_layers, self.num_groups, "LlamaConfig"
        heads = layer_sizes(self.layer_heads, n, self.num_heads, "layer_heads", where)
        kv = layer_sizes(self.layer_kv_heads, n, self.num_kv_heads, "layer_kv_heads", where)
        if heads is not None:
            for i, h in enumerate(heads):
                if h % g:
                    raise ValueError(
                        f"LlamaConfig: layer_heads[{i}] = {h} must be a multiple of num_groups "
                        f"= {g} (whole GQA groups are pruned)"
                    )
            derived = tuple(h // g for h in heads)
            if kv is not None and kv != derived:
                raise ValueError(
                    f"LlamaConfig: layer_kv_heads {kv} must equal layer_heads // num_groups = "
                    f"{derived}"
                )
            kv = derived
        elif kv is not None:
            heads = tuple(k * g for k in kv)
        object.__setattr__(self, "layer_heads", heads)
        object.__setattr__(self, "layer_kv_heads", kv)
        mlp = layer_sizes(self.layer_mlp, n, self.intermediate_size, "layer_mlp", where)
        object.__setattr__(self, "layer_mlp", mlp)

    def _normalize_rope_scaling(self, value: Any) -> tuple[tuple[str, Any], ...] | None:
        if value is None:
            return None
        if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            value = dict(value)
        if not isinstance(value, Mapping):
            raise ValueError(
                f"LlamaConfig: rope_scaling must be None or a mapping with a 'rope_type'; got "
                f"{value!r}"
            )
        d = dict(value)
        rope_type = d.pop("rope_type", d.pop("type", None))
        if rope_type in (None, "default"):
            if d:
                raise ValueError(f"LlamaConfig: rope_scaling without a rope_type has keys {d}")
            return None
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"LlamaConfig: rope_scaling rope_type {rope_type!r} is not supported; supported: "
                f"None / 'default', {', '.join(repr(t) for t in ROPE_TYPES)}"
            )
        if rope_type == "llama3":
            d.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        d.pop("rope_theta", None)  # transformers>=5 keeps theta inside rope_parameters
        need = _ROPE_KEYS[rope_type]
        if set(d) != need:
            raise ValueError(
                f"LlamaConfig: rope_scaling of type {rope_type!r} needs exactly the keys "
                f"{sorted(need)}; got {sorted(d)}"
            )
        for key, v in d.items():
            if not _is_float(v) or not v > 0:
                raise ValueError(f"LlamaConfig: rope_scaling {key} must be > 0; got {v!r}")
        if rope_type == "llama3" and not d["high_freq_factor"] > d["low_freq_factor"]:
            raise ValueError(
                "LlamaConfig: llama3 rope_scaling needs high_freq_factor > low_freq_factor; got "
                f"{d['high_freq_factor']} <= {d['low_freq_factor']}"
            )
        return (("rope_type", rope_type), *sorted((k, float(v)) for k, v in d.items()))

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        """``rope_scaling`` as a dict (None for plain RoPE)."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def num_groups(self) -> int:
        """Query heads per key / value head, H / KV."""
        return self.num_heads // self.num_kv_heads

    @property
    def heads_per_layer(self) -> tuple[int, ...]:
        """Query heads of every layer (``layer_heads``, or ``num_heads`` repeated)."""
        return self.layer_heads or (self.num_heads,) * self.num_layers

    @property
    def kv_heads_per_layer(self) -> tuple[int, ...]:
        """Key / value heads of every layer (``layer_kv_heads``, or ``num_kv_heads`` repeated)."""
        return self.layer_kv_heads or (self.num_kv_heads,) * self.num_layers

    @property
    def mlp_per_layer(self) -> tuple[int, ...]:
        """SwiGLU width of every layer (``layer_mlp``, or ``intermediate_size`` repeated)."""
        return self.layer_mlp or (self.intermediate_size,) * self.num_layers


LLM_VARIANTS: dict[str, dict[str, Any]] = {
    # for tests and quick experiments
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=1024,
    ),
    # Llama-2-7B = Vicuna-7B v1.5, the LLM of LLaVA-1.5-7B (FastV's main setting).
    "llama2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    ),
    "llama3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        attention_bias=True,
        attention_out_bias=False,
    ),
}


def llm_config(name: str, **overrides: Any) -> LlamaConfig:
    """The ``LlamaConfig`` of a named variant of ``LLM_VARIANTS``, with fields overridden.

    ``"tiny"`` (D=64, 4 layers, 4 heads / 2 KV heads, V=256) is for tests and quick
    experiments; ``"llama2-7b"`` (= Vicuna-7B v1.5, LLaVA-1.5's LLM), ``"llama3.2-1b"`` and
    ``"qwen2.5-0.5b"`` are the published sizes (weights come from ``load_llm``).

    Raises:
      ValueError: for an unknown variant name or override field, or an invalid result.
    """
    if name not in LLM_VARIANTS:
        raise ValueError(f"llm_config: name must be one of {list(LLM_VARIANTS)}; got {name!r}")
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"llm_config: unknown LlamaConfig fields {unknown}; expected some of {sorted(fields)}"
        )
    return LlamaConfig(**{**LLM_VARIANTS[name], **overrides})


# ------------------------------------------------------------------------------ RoPE


@functools.lru_cache(maxsize=64)
def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies ``[head_dim / 2]`` float32, as transformers computes them.

    Plain: ``1 / theta ** (arange(0, hd, 2) / hd)`` in float32; ``"linear"``: divided by
    ``factor``; ``"llama3"``: wavelengths above ``original / low_freq_factor`` divided by
    ``factor``, below ``original / high_freq_factor`` unchanged, smoothly interpolated in between
    (``_compute_llama3_parameters``). The attention scaling of these types is 1.
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
    """``(cos, sin)`` [..., head_dim] of the RoPE angles ``positions * inv_freq`` (float32
    angles, ``[freqs, freqs]`` layout as HF's ``LlamaRotaryEmbedding``), cast to ``dtype``."""
    freqs = positions.astype(_F32)[..., None] * jnp.asarray(rope_inv_freq(config))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` [B, T, heads, hd] by ``cos`` / ``sin`` [B, T, hd]: ``x * cos +
    rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]`` (halves, not interleaved)."""
    c, s = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * c + jnp.concatenate([-x2, x1], axis=-1) * s


# ------------------------------------------------------------------------------ modules


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
                kernel_init=_normal02,
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
    ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array]]:
        """``x`` [B, T, D], ``cos`` / ``sin`` [B, T, hd] of the tokens' positions, ``mask`` bool
        [B, T, S] over the keys (S = T without a cache, the cache size with one). With
        ``kv_cache = (keys, values)`` [B, S, KV, hd] the new keys / values are written at slots
        ``[offset, offset + T)`` and attention runs over the whole cache. Returns ``(out [B, T,
        D], probs [B, H, T, S] or None, (keys, values))``."""
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
        else:
            out, probs = _attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, return_attention)
        return self.o_proj(out.reshape(b, t, self.num_heads * cfg.head_dim)), probs, (k, v)


class LlamaMlp(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, of width
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
            kernel_init=_normal02,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        d, f = config.hidden_size, config.mlp_per_layer[layer]
        self.gate_proj = nnx.Linear(d, f, **kw)
        self.up_proj = nnx.Linear(d, f, **kw)
        self.down_proj = nnx.Linear(f, d, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def _rms_norm(config: LlamaConfig, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.RMSNorm:
    # statistics in float32 whatever ``dtype`` is (as HF's LlamaRMSNorm)
    return nnx.RMSNorm(
        config.hidden_size,
        epsilon=config.rms_norm_eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class LlamaBlock(nnx.Module):
    """Pre-norm decoder layer: ``x + self_attn(input_layernorm(x))``, then
    ``x + mlp(post_attention_layernorm(x))``. Same arguments and returns as
    ``LlamaAttention``; ``layer`` picks the sizes of a structurally pruned config."""

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
        self.input_layernorm = _rms_norm(config, dtype, param_dtype, rngs)
        self.self_attn = LlamaAttention(config, **kw)
        self.post_attention_layernorm = _rms_norm(config, dtype, param_dtype, rngs)
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
    ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array]]:
        y, probs, kv = self.self_attn(
            self.input_layernorm(x),
            cos,
            sin,
            mask,
            kv_cache=kv_cache,
            offset=offset,
            return_attention=return_attention,
        )
        x = x + y
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, probs, kv


# ------------------------------------------------------------------------------ cache


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


def init_cache(
    config: LlamaConfig,
    batch: int,
    max_len: int,
    dtype: Any = jnp.float32,
    *,
    prune: PruneSpec | None = None,
) -> KVCache:
    """An empty ``KVCache`` for ``batch`` sequences of up to ``max_len`` tokens.

    With ``prune`` (a ``FastVSpec``, ``FeatherSpec`` or ``TodreSpec``), layer l gets
    ``prune.tokens_per_layer(num_layers, max_len)[l]`` slots: the layers after a pruning layer
    never see the dropped image tokens (FastV: ``max_len - num_dropped`` from ``layer`` on).

    Raises:
      ValueError: for a non-positive batch / max_len, or a ``prune`` that does not fit.
    """
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"init_cache: config must be a LlamaConfig; got {type(config).__name__}")
    for name, value in (("batch", batch), ("max_len", max_len)):
        if not is_size(value):
            raise ValueError(f"init_cache: {name} must be a positive int; got {value!r}")
    sizes = [int(max_len)] * config.num_layers
    if prune is not None:
        check_prune(prune, config.num_layers, int(max_len), "init_cache")
        sizes = list(prune.tokens_per_layer(config.num_layers, int(max_len)))
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


# ------------------------------------------------------------------------------ model


@struct.dataclass
class LlamaOutput:
    """What ``LlamaLM.__call__`` returns (a pytree: it passes through ``jax.jit``).

    T' is the number of tokens that reach the last layer: T, or
    ``prune.tokens_per_layer(num_layers, T)[-1]`` after pruning.

    Attributes:
      logits: [B, T', V] float32 (only the last ``logits_to_keep`` tokens when that is > 0).
        With an overflowing cache under jit (more tokens than slots) every logit is NaN.
      hidden: [B, T', D] the last hidden state, after the final RMSNorm.
      positions: [B, T'] int32 RoPE positions of the last layer's tokens.
      kept: [B, T'] int32 ascending indices (into the call's tokens) of the tokens the last
        layer processes; None without pruning (``arange(T)`` for a masking ``TodreSpec``).
      attentions: {layer: [B, H, T_l, S_l] float32 probabilities} for the layers in
        ``return_attention_at`` (S_l = T_l without a cache, the layer's cache size with one).
      hidden_states: when asked, the residual stream entering layer 0 and after each layer
        (``num_layers + 1`` arrays, the last before the final norm; lengths shrink after
        pruning: entry l is the input of layer l BEFORE that layer prunes).
      cache: the updated ``KVCache``, or None when called without one.
      prune_info: what the spec reports, or None without pruning / for FastV:
        ``FeatherSpec``: ``"scores_{l}"`` float32 [B, N_l] the criterion over the image tokens
        entering pruning layer l; ``TodreSpec``: ``"drop"`` bool [B], ``"text_to_visual"``,
        ``"visual_to_text"`` float32 [B].
    """

    logits: jax.Array
    hidden: jax.Array
    positions: jax.Array
    kept: jax.Array | None = None
    attentions: dict[int, jax.Array] = struct.field(default_factory=dict)
    hidden_states: tuple[jax.Array, ...] | None = None
    cache: KVCache | None = None
    prune_info: dict[str, jax.Array] | None = None


class LlamaLM(nnx.Module):
    """Llama-family causal language model: embedding, decoder layers, final RMSNorm, LM head.

    Leaf names mirror transformers' (so that ``load_llm`` maps them one to one):
    ``embed_tokens/embedding`` [V, D], ``layers/{i}/input_layernorm/scale``,
    ``layers/{i}/self_attn/{q,k,v,o}_proj/{kernel,bias}``,
    ``layers/{i}/post_attention_layernorm/scale``, ``layers/{i}/mlp/{gate,up,down}_proj/kernel``,
    ``norm/scale``, ``lm_head/kernel`` [D, V] (absent when tied). Every dense weight is a
    ``kernel``, so ``pruneax.weights``' default predicate selects the projections and the
    untied head. From scratch (HF's init): weights and the embedding N(0, 0.02^2), biases 0,
    norm scales 1.

    Args:
      config: a ``LlamaConfig`` (``llm_config("tiny")`` for a named variant).
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype; RMSNorm statistics, RoPE angles, explicit attention softmax and
        the logits are float32 whatever it is.
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``LlamaConfig``; at call time for bad
        inputs (see ``__call__``).

    References: Touvron et al., "Llama 2", 2023 (arXiv:2307.09288); transformers'
      ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``.
    """

    def __init__(
        self,
        config: LlamaConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"LlamaLM: config must be a LlamaConfig; got {type(config).__name__}")
        cfg = config
        self.config = cfg
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=_normal02,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.List([LlamaBlock(cfg, layer=i, **kw) for i in range(cfg.num_layers)])
        self.norm = _rms_norm(cfg, dtype, param_dtype, rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nnx.Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                use_bias=False,
                kernel_init=_normal02,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, D] of ``input_ids`` [B, T] (what ``inputs_embeds`` replaces)."""
        return self.embed_tokens(input_ids)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(cos, sin)`` [B, T, head_dim] for positions [B, T] (see ``rope_cos_sin``)."""
        return rope_cos_sin(positions, self.config, self.dtype)

    def head(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits of final-normed hidden states (tied or untied LM head)."""
        if self.lm_head is None:
            return self.embed_tokens.attend(hidden).astype(_F32)
        return self.lm_head(hidden).astype(_F32)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        attention_mask: jax.Array | None = None,
        return_attention_at: tuple[int, ...] = (),
        return_hidden_states: bool = False,
        prune: PruneSpec | None = None,
        logits_to_keep: int = 0,
    ) -> LlamaOutput:
        """Runs the decoder on T new tokens (a whole prompt, or a prefill / decode chunk).

        Args:
          input_ids: [B, T] integer token ids; or
          inputs_embeds: [B, T, D] floating embeddings instead (exactly one of the two).
          positions: [B, T] (or [T]) integer RoPE positions; default: continue from
            ``cache.next_position`` (0 without a cache) over the valid tokens, i.e.
            ``next_position + cumsum(attention_mask) - 1`` (HF's rule for left padding;
            padding tokens get ``next_position``).
          cache: a ``KVCache`` (``init_cache``) to read the past from and write the new keys /
            values to; None runs without one (plain causal attention over the T tokens).
          attention_mask: [B, T] bool / 0-1 validity of the NEW tokens (False = padding; the
            cache remembers the past ones). Batches must be LEFT-padded: the last token of
            every row is real (FastV scores with it, ``next_position`` follows it).
          return_attention_at: layers whose attention probabilities to return (static).
          return_hidden_states: also return the residual stream before / after each layer.
          prune: a ``FastVSpec``, ``FeatherSpec`` or ``TodreSpec`` (static) pruning the image
            tokens ``[prune.start, prune.stop)`` of this call at its ``pruning_layers``; the
            cache, if any, must have room (``init_cache(..., prune=prune)`` sizes it). Decode
            calls after a pruned prefill pass None.
          logits_to_keep: compute logits for the last n tokens only (0: all; static).

        Returns:
          A ``LlamaOutput``.

        Raises:
          ValueError: for missing / both / malformed inputs, a mask, positions or cache of the
            wrong shape, layers out of range, a ``prune`` that does not fit, or (outside jit)
            a cache without room for the new tokens.
        """
        cfg = self.config
        x = self._inputs(input_ids, inputs_embeds)
        b, t = x.shape[:2]
        valid = self._mask(attention_mask, b, t)
        if cache is not None:
            self._check_cache(cache, b)
        asked = _layers(return_attention_at, cfg.num_layers)
        want = set(asked)  # the layers whose probabilities are computed explicitly
        events: tuple[int, ...] = ()  # the layers at whose input the spec acts
        if prune is not None:
            check_prune(prune, cfg.num_layers, t, "LlamaLM")
            want = want | prune._attention_layers(cfg.num_layers)
            events = prune.pruning_layers(cfg.num_layers)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int):
            raise ValueError(f"LlamaLM: logits_to_keep must be an int; got {logits_to_keep!r}")
        if logits_to_keep < 0:
            raise ValueError(f"LlamaLM: logits_to_keep must be >= 0; got {logits_to_keep}")
        start = cache.next_position if cache is not None else jnp.zeros((b,), jnp.int32)
        positions = self._positions(positions, valid, start, b, t)
        next_position = positions[:, -1] + 1
        # tokens each layer processes (and appends to its cache)
        tokens = [t] * cfg.num_layers
        if prune is not None:
            tokens = list(prune.tokens_per_layer(cfg.num_layers, t))
        if cache is not None:
            _check_room(cache, tokens)

        cos, sin = self.rope(positions)
        kept = None if prune is None else jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        info: dict[str, jax.Array] = {}
        attentions: dict[int, jax.Array] = {}
        hidden_states = [x]
        new = {"keys": [], "values": [], "positions": [], "valid": []}
        overflow = jnp.zeros((), bool)
        for i, layer in enumerate(self.layers):
            if i in events:
                step = prune._apply(
                    i,
                    cfg.num_layers,
                    x=x,
                    valid=valid,
                    attn=attentions.get(i - 1),
                    offset=cache.lengths[i - 1] if cache is not None and i > 0 else 0,
                    block=layer,
                )
                info.update(step.info)
                if step.keep is not None:  # tokens leave: gather, ORIGINAL positions kept
                    kept = jnp.take_along_axis(kept, step.keep, axis=1)
                    x = jnp.take_along_axis(x, step.keep[..., None], axis=1)
                    positions = jnp.take_along_axis(positions, step.keep, axis=1)
                    valid = jnp.take_along_axis(valid, step.keep, axis=1)
                    cos, sin = self.rope(positions)
                if step.hide is not None:  # out of the keys (and cache) of this layer on
                    valid = valid & ~step.hide
            tl = x.shape[1]
            if cache is not None:
                offset = cache.lengths[i]
                slot_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid[i], valid, offset, 1)
                slot_pos = jax.lax.dynamic_update_slice_in_dim(
                    cache.positions[i], positions, offset, 1
                )
                s = slot_valid.shape[1]
                causal = jnp.arange(s)[None, :] <= offset + jnp.arange(tl)[:, None]
                mask = slot_valid[:, None, :] & causal[None]
                kv = (cache.keys[i], cache.values[i])
                overflow = overflow | (offset + tl > s)
                new["positions"].append(slot_pos)
                new["valid"].append(slot_valid)
            else:
                offset, kv = 0, None
                mask = valid[:, None, :] & jnp.tril(jnp.ones((tl, tl), bool))[None]
            x, probs, (k, v) = layer(
                x, cos, sin, mask, kv_cache=kv, offset=offset, return_attention=i in want
            )
            if probs is not None:
                attentions[i] = probs
            hidden_states.append(x)
            new["keys"].append(k)
            new["values"].append(v)

        hidden = self.norm(x)
        logits = self.head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        new_cache = None
        if cache is not None:
            logits = jnp.where(overflow, jnp.nan, logits)
            new_cache = KVCache(
                keys=tuple(new["keys"]),
                values=tuple(new["values"]),
                positions=tuple(new["positions"]),
                valid=tuple(new["valid"]),
                lengths=cache.lengths + jnp.asarray(tokens, jnp.int32),
                next_position=next_position.astype(jnp.int32),
            )
        return LlamaOutput(
            logits=logits,
            hidden=hidden,
            positions=positions,
            kept=kept,
            attentions={i: a for i, a in attentions.items() if i in asked},
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
            cache=new_cache,
            prune_info=info or None,
        )

    # -------------------------------------------------------------------------- input checks

    def _inputs(self, input_ids: Any, inputs_embeds: Any) -> jax.Array:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LlamaLM: pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            ids = jnp.asarray(input_ids)
            if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape[1] < 1:
                raise ValueError(
                    f"LlamaLM: input_ids must be integer [B, T] with T >= 1; got shape "
                    f"{tuple(ids.shape)} dtype {ids.dtype}"
                )
            return self.embed(ids)
        emb = jnp.asarray(inputs_embeds)
        d = self.config.hidden_size
        if emb.ndim != 3 or emb.shape[2] != d or emb.shape[1] < 1:
            raise ValueError(
                f"LlamaLM: inputs_embeds must be [B, T, D={d}] with T >= 1; got shape "
                f"{tuple(emb.shape)}"
            )
        if not jnp.issubdtype(emb.dtype, jnp.floating):
            raise ValueError(f"LlamaLM: inputs_embeds must be floating; got dtype {emb.dtype}")
        return emb.astype(self.dtype)

    @staticmethod
    def _mask(attention_mask: Any, b: int, t: int) -> jax.Array:
        if attention_mask is None:
            return jnp.ones((b, t), bool)
        m = jnp.asarray(attention_mask)
        if m.shape != (b, t) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
            raise ValueError(
                f"LlamaLM: attention_mask must be bool or 0/1 integers of shape [B, T] = "
                f"{(b, t)}; got shape {tuple(m.shape)} dtype {m.dtype}"
            )
        return m.astype(bool)

    @staticmethod
    def _positions(positions: Any, valid: jax.Array, start: jax.Array, b: int, t: int):
        if positions is None:
            offsets = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
            return start[:, None] + jnp.maximum(offsets, 0)
        p = jnp.asarray(positions)
        if p.ndim == 1:
            p = jnp.broadcast_to(p, (b, p.shape[0]))
        if p.shape != (b, t) or not jnp.issubdtype(p.dtype, jnp.integer):
            raise ValueError(
                f"LlamaLM: positions must be integer [B, T] = {(b, t)} (or [T]); got shape "
                f"{tuple(jnp.shape(positions))} dtype {p.dtype}"
            )
        return p.astype(jnp.int32)

    def _check_cache(self, cache: Any, b: int) -> None:
        cfg = self.config
        if not isinstance(cache, KVCache):
            raise ValueError(f"LlamaLM: cache must be a KVCache; got {type(cache).__name__}")
        if len(cache.keys) != cfg.num_layers:
            raise ValueError(
                f"LlamaLM: cache has {len(cache.keys)} layers; the model has {cfg.num_layers}"
            )
        for i, (k, v, p, m) in enumerate(
            zip(cache.keys, cache.values, cache.positions, cache.valid, strict=True)
        ):
            s = k.shape[1] if k.ndim == 4 else -1
            want = (b, s, cfg.kv_heads_per_layer[i], cfg.head_dim)
            if k.shape != want or v.shape != want or p.shape != (b, s) or m.shape != (b, s):
                raise ValueError(
                    f"LlamaLM: cache layer {i} must hold keys / values [B, S, KV, hd] = {want} "
                    f"and positions / valid [B, S]; got {k.shape}, {v.shape}, {p.shape}, "
                    f"{m.shape}"
                )


def _layers(layers: Any, num_layers: int) -> set[int]:
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


def _check_room(cache: KVCache, tokens: list[int]) -> None:
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


# ------------------------------------------------------------------------------ generation


@struct.dataclass
class GenerationOutput:
    """What ``generate_greedy`` returns.

    Attributes:
      tokens: [B, max_new_tokens] int32 generated tokens (``pad_token_id`` after a row's EOS).
      kept: [B, T'] int32 prompt tokens the last layer kept (``LlamaOutput.kept``), or None
        without pruning.
      cache: the final ``KVCache`` (prompt + all generated tokens but the last).
      prune_info: the prefill's ``LlamaOutput.prune_info``.
    """

    tokens: jax.Array
    kept: jax.Array | None
    cache: KVCache
    prune_info: dict[str, jax.Array] | None = None


def generate_greedy(
    model: LlamaLM,
    input_ids: jax.Array | None = None,
    max_new_tokens: int = 16,
    *,
    inputs_embeds: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    prune: PruneSpec | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    cache_dtype: Any = None,
) -> GenerationOutput:
    """Greedy decoding with a KV cache: one jitted program (prefill, then ``lax.scan`` over
    single-token decode steps).

    The prompt (``input_ids`` or ``inputs_embeds``, optionally left-padded with
    ``attention_mask``, optionally pruned with ``prune``) fills a cache of ``T +
    max_new_tokens - 1`` slots (``init_cache``), then each step feeds the argmax token back.
    Always produces ``max_new_tokens`` tokens (no early stop): after a row emits
    ``eos_token_id`` it gets ``pad_token_id`` (default: the EOS id), as HF's ``generate``
    pads finished rows.

    Args:
      model: the ``LlamaLM``.
      input_ids: [B, T] prompt token ids; or ``inputs_embeds`` [B, T, D].
      max_new_tokens: tokens to generate, >= 1 (static).
      attention_mask: [B, T] prompt validity (left padding).
      positions: [B, T] prompt positions (default as ``LlamaLM.__call__``).
      prune: a ``FastVSpec``, ``FeatherSpec`` or ``TodreSpec`` applied to the prompt (static).
      eos_token_id, pad_token_id: see above (static).
      cache_dtype: dtype of the cache (default: the model's compute dtype).

    Returns:
      A ``GenerationOutput``.

    Raises:
      ValueError: as ``LlamaLM.__call__``, or for a bad ``max_new_tokens`` / token id.
    """
    if not isinstance(model, LlamaLM):
        raise ValueError(f"generate_greedy: model must be a LlamaLM; got {type(model).__name__}")
    if not is_size(max_new_tokens):
        raise ValueError(
            f"generate_greedy: max_new_tokens must be a positive int; got {max_new_tokens!r}"
        )
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
        ):
            raise ValueError(f"generate_greedy: {name} must be an int >= 0 or None; got {value!r}")
    graphdef, state = nnx.split(model)
    dtype = jnp.dtype(model.dtype if cache_dtype is None else cache_dtype)
    return _generate(
        graphdef,
        state,
        input_ids,
        inputs_embeds,
        attention_mask,
        positions,
        max_new_tokens=int(max_new_tokens),
        prune=prune,
        eos=eos_token_id,
        pad=eos_token_id if pad_token_id is None else pad_token_id,
        dtype=dtype,
    )


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "prune", "eos", "pad", "dtype")
)
def _generate(
    graphdef, state, input_ids, inputs_embeds, attention_mask, positions, *,
    max_new_tokens, prune, eos, pad, dtype,
):  # fmt: skip
    model = nnx.merge(graphdef, state)
    x = input_ids if input_ids is not None else inputs_embeds
    b, t = x.shape[:2]
    cache = init_cache(model.config, b, t + max_new_tokens - 1, dtype, prune=prune)
    out = model(
        input_ids,
        inputs_embeds=inputs_embeds,
        positions=positions,
        attention_mask=attention_mask,
        cache=cache,
        prune=prune,
        logits_to_keep=1,
    )
    first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    done = first == eos if eos is not None else jnp.zeros((b,), bool)

    def step(carry, _):
        token, cache, done = carry
        o = model(token[:, None], cache=cache, logits_to_keep=1)
        nxt = jnp.argmax(o.logits[:, -1], axis=-1).astype(jnp.int32)
        if eos is not None:
            nxt = jnp.where(done, pad, nxt)
            done = done | (nxt == eos)
        return (nxt, o.cache, done), nxt

    (_, cache, _), rest = jax.lax.scan(
        step, (first, out.cache, done), None, length=max_new_tokens - 1
    )
    tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
    return GenerationOutput(tokens=tokens, kept=out.kept, cache=cache, prune_info=out.prune_info)
