"""``LlamaConfig``: the hyperparameters of a ``LlamaLM``, and the named variants.

References: transformers' ``LlamaConfig`` / ``Qwen2Config`` / ``GemmaConfig`` and
``modeling_rope_utils.py`` (the ``"linear"`` and ``"llama3"`` RoPE scalings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pruneax.models._shared.common import layer_sizes
from pruneax.models._shared.fields import (
    bool_field,
    check_fields,
    int_field,
    is_real,
    one_of,
    real_field,
)

ROPE_TYPES = ("linear", "llama3")  # besides None ("default")
HIDDEN_ACTS = ("silu", "gelu_tanh")
_ROPE_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}

_POSITIVE_INT = int_field(low=1)
_POSITIVE_REAL = real_field(gt=0)
_BOOL = bool_field()


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
      hidden_act: the gate activation of the gated MLP: ``"silu"`` (Llama, Qwen2: SwiGLU) or
        ``"gelu_tanh"`` (Gemma's ``gelu_pytorch_tanh``, the tanh approximation: GeGLU).
      rms_norm_unit_offset: Gemma's RMSNorm, ``(x * rsqrt(mean(x^2) + eps) * (1 + w))`` all in
        float32 and cast to the computation dtype after (scales initialised to 0); False:
        Llama's ``w * x_normed`` (scales initialised to 1).
      scale_embeddings: Gemma's embedding normaliser: the embeddings entering layer 0 are
        multiplied by ``sqrt(hidden_size)`` (cast to the computation dtype first), whether
        they come from ``input_ids`` or ``inputs_embeds``.

    Gemma (v1) is ``hidden_act="gelu_tanh", rms_norm_unit_offset=True,
    scale_embeddings=True, tie_word_embeddings=True`` (``llm_config("gemma-2b")``).

    ``num_kv_heads``, ``head_dim`` and ``attention_out_bias`` are stored resolved, so
    ``dataclasses.replace(config, hidden_size=...)`` keeps the old values: pass them again (or
    build with ``llm_config(name, **overrides)``, which resolves after overriding).

    Raises:
      ValueError: for non-positive sizes, heads that do not divide, an odd head_dim, a
        non-positive epsilon / theta, non-bool flags, or an unsupported / incomplete
        ``rope_scaling``.

    Example:
      >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
      ...                   num_heads=4, num_kv_heads=2)
      >>> cfg.head_dim, cfg.num_groups, cfg.heads_per_layer
      (8, 2, (4, 4))
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
    hidden_act: str = "silu"
    rms_norm_unit_offset: bool = False
    scale_embeddings: bool = False

    def __post_init__(self):
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        check_fields(self, **dict.fromkeys((*sizes, "max_position_embeddings"), _POSITIVE_INT))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        check_fields(
            self, **dict.fromkeys(("num_kv_heads", "head_dim"), int_field(low=1, none=True))
        )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig: num_heads {self.num_heads} must be a multiple of num_kv_heads "
                f"{self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be even (RoPE); got {self.head_dim}")
        check_fields(self, rms_norm_eps=_POSITIVE_REAL, rope_theta=_POSITIVE_REAL)
        if self.attention_out_bias is None:
            object.__setattr__(self, "attention_out_bias", self.attention_bias)
        flags = ("tie_word_embeddings", "attention_bias", "attention_out_bias", "mlp_bias")
        flags += ("rms_norm_unit_offset", "scale_embeddings")
        check_fields(self, **dict.fromkeys(flags, _BOOL), hidden_act=one_of(HIDDEN_ACTS))
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
            if not is_real(v) or not v > 0:
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
    # Gemma 1 2B, the LLM of PaliGemma-3B (whose vocabulary adds 1216 location / segmentation
    # tokens: vocab_size=257216).
    "gemma-2b": dict(
        vocab_size=256000,
        hidden_size=2048,
        intermediate_size=16384,
        num_layers=18,
        num_heads=8,
        num_kv_heads=1,
        head_dim=256,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        hidden_act="gelu_tanh",
        rms_norm_unit_offset=True,
        scale_embeddings=True,
    ),
}


def llm_config(name: str, **overrides: Any) -> LlamaConfig:
    """The ``LlamaConfig`` of a named variant of ``LLM_VARIANTS``, with fields overridden.

    ``"tiny"`` (D=64, 4 layers, 4 heads / 2 KV heads, V=256) is for tests and quick
    experiments; ``"llama2-7b"`` (= Vicuna-7B v1.5, LLaVA-1.5's LLM), ``"llama3.2-1b"``,
    ``"qwen2.5-0.5b"`` and ``"gemma-2b"`` are the published sizes (weights come from
    ``load_llm``).

    Args:
      name: a key of ``LLM_VARIANTS``.
      **overrides: ``LlamaConfig`` fields to change (resolved after overriding).

    Returns:
      The ``LlamaConfig``.

    Raises:
      ValueError: for an unknown variant name or override field, or an invalid result.

    Example:
      >>> llm_config("tiny", num_layers=2).num_layers
      2
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
