"""Hugging Face checkpoint import for ``LlamaLM``: ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and
``GemmaForCausalLM`` (Gemma 1).

``load_llm(path)`` reads a ``save_pretrained`` directory (``config.json`` + safetensors, single
or sharded) with ``read_checkpoint`` -- no torch, ``transformers`` or ``safetensors`` package --
and returns a ``LlamaLM`` whose logits, attention probabilities and greedy generations match
the PyTorch model's.

References: transformers' ``models/llama/{configuration,modeling}_llama.py``,
``models/qwen2/{configuration,modeling}_qwen2.py``, ``models/gemma/{configuration,modeling}
_gemma.py`` and ``modeling_rope_utils.py`` (v4 configs
keep ``rope_theta`` / ``rope_scaling`` at the top level, v5 configs put both in
``rope_parameters``).
"""

from __future__ import annotations

import math
import os
from typing import Any

from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models._shared.dtypes import resolve_dtypes
from pruneax.models._shared.loader import ConfigRules, KeyMap, check_config, fill, read_config
from pruneax.models.llama._model import LlamaConfig, LlamaLM

SUPPORTED_LLM_TYPES = ("llama", "qwen2", "gemma")
# later Gemma generations: other networks (soft-capping, sliding windows, extra norms ...)
_OTHER_GEMMAS = ("gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "recurrent_gemma")
# Gemma's activation: transformers >= 5 reads hidden_act and maps the legacy "gelu" of the
# published configs to "gelu_pytorch_tanh"; 4.x read hidden_activation (None: that same tanh
# GELU, whatever hidden_act says). Only settings both agree on are accepted.
_GEMMA_ACTS = ("gelu", "gelu_pytorch_tanh")

# Attributes that cannot change the logits: initializer_range (initialisation only),
# attention_dropout (dropout is the identity at inference), pretraining_tp (transformers < 5
# splits each projection into pretraining_tp slices and sums them -- the same product up to
# float rounding; transformers 5 ignores it).
_HARMLESS = frozenset({"initializer_range", "attention_dropout"})
_ROPE = frozenset({"rope_parameters", "rope_theta", "rope_scaling", "partial_rotary_factor"})
_SIZES = frozenset(
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
    "num_key_value_heads head_dim hidden_act max_position_embeddings rms_norm_eps "
    "tie_word_embeddings".split()
)
# transformers' LlamaConfig / Qwen2Config (v5) __init__ defaults. v4 configs keep RoPE in
# rope_theta / rope_scaling (handled with rope_parameters). Derived when None: head_dim
# (hidden_size // num_attention_heads), num_key_value_heads (num_attention_heads), layer_types
# (from use_sliding_window / max_window_layers); rope_parameters None = theta 10000, default.
_RULES: dict[str, ConfigRules] = {
    "llama": ConfigRules(
        "LlamaConfig",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=None,
            hidden_act="silu",
            max_position_embeddings=2048,
            initializer_range=0.02,
            rms_norm_eps=1e-6,
            pretraining_tp=1,
            tie_word_embeddings=False,
            rope_parameters=None,
            attention_bias=False,
            attention_dropout=0.0,
            mlp_bias=False,
            head_dim=None,
        ),
        handled=_SIZES | _ROPE | {"attention_bias", "mlp_bias"},
        harmless=_HARMLESS | {"pretraining_tp"},
    ),
    # Qwen2Config has no head_dim, but modeling_qwen2 reads getattr(config, "head_dim", None)
    # (Qwen2 hard-codes q/k/v biases, so attention_bias / mlp_bias are not Qwen2 attributes).
    "qwen2": ConfigRules(
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=22016,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            hidden_act="silu",
            max_position_embeddings=32768,
            initializer_range=0.02,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters=None,
            use_sliding_window=False,
            sliding_window=4096,
            max_window_layers=28,
            layer_types=None,
            attention_dropout=0.0,
        ),
        handled=_SIZES
        | _ROPE
        | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
        harmless=_HARMLESS,
    ),
    # GemmaConfig (v5; v4 adds hidden_activation and keeps RoPE in rope_theta). Gemma has no
    # mlp_bias attribute (no MLP biases) and a fixed head_dim default of 256.
    "gemma": ConfigRules(
        "GemmaConfig",
        dict(
            vocab_size=256000,
            hidden_size=3072,
            intermediate_size=24576,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=16,
            head_dim=256,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation=None,
            max_position_embeddings=8192,
            initializer_range=0.02,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters=None,
            attention_bias=False,
            attention_dropout=0.0,
            use_bidirectional_attention=None,
        ),
        handled=_SIZES
        | _ROPE
        | {"attention_bias", "hidden_activation", "use_bidirectional_attention"},
        harmless=_HARMLESS,
    ),
}
# LlamaConfig field -> transformers attribute.
_FIELDS = {
    **{k: k for k in ("vocab_size", "hidden_size", "intermediate_size", "rms_norm_eps")},
    "max_position_embeddings": "max_position_embeddings",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
}
_SUFFIX = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _rope(cfg: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from a v4 (``rope_theta`` + ``rope_scaling``) or v5
    (``rope_parameters``) config."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{where}: rope_parameters / rope_scaling must be an object; got {params}")
    params = dict(params)
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"{where}: per-layer-type RoPE parameters are not supported: {params}")
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not 0 < theta < math.inf:
        raise ValueError(f"{where}: rope_theta must be a finite number > 0; got {theta!r}")
    theta = float(theta)
    partial = params.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"{where}: partial_rotary_factor {partial} is not supported (only 1.0)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    # transformers sets the llama3 original context from max_position_embeddings when absent
    return theta, params


def _config(cfg: dict[str, Any], model_type: str) -> LlamaConfig:
    where = "load_llm"
    c = _RULES[model_type].complete(cfg)
    gemma = model_type == "gemma"
    if gemma:
        _check_gemma(c, where)
    elif c["hidden_act"] != "silu":
        raise ValueError(f"{where}: hidden_act must be 'silu'; got {c['hidden_act']!r}")
    if model_type == "qwen2":
        layer_types = c.get("layer_types") or []
        sliding = any(t != "full_attention" for t in layer_types) or (
            not layer_types
            and c["use_sliding_window"]
            and c["max_window_layers"] < c["num_hidden_layers"]
        )
        if sliding:
            raise ValueError(
                f"{where}: sliding-window attention is not supported (use_sliding_window="
                f"{c['use_sliding_window']}, layer_types={layer_types or None})"
            )
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = bool(c["attention_bias"])
        mlp_bias = bool(c.get("mlp_bias", False))
    theta, scaling = _rope(c, where)
    gemma_fields = {}
    if gemma:
        gemma_fields = dict(
            hidden_act="gelu_tanh", rms_norm_unit_offset=True, scale_embeddings=True
        )
    try:
        return LlamaConfig(
            **{field: c[key] for field, key in _FIELDS.items()},
            head_dim=c.get("head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(c["tie_word_embeddings"]),
            attention_bias=qkv_bias,
            attention_out_bias=out_bias,
            mlp_bias=mlp_bias,
            **gemma_fields,
        )
    except ValueError as e:
        raise ValueError(f"{where}: unsupported config.json ({e})") from None


def _check_gemma(c: dict[str, Any], where: str) -> None:
    """Refuses Gemma activations other than the tanh GELU, and bidirectional attention."""
    act, act2 = c["hidden_act"], c.get("hidden_activation")
    if act not in _GEMMA_ACTS or act2 not in (None, "gelu_pytorch_tanh"):
        raise ValueError(
            f"{where}: Gemma's activation must be the tanh GELU: hidden_act in "
            f"{list(_GEMMA_ACTS)} and hidden_activation None or 'gelu_pytorch_tanh'; got "
            f"hidden_act={act!r}, hidden_activation={act2!r}"
        )
    if c.get("use_bidirectional_attention"):
        raise ValueError(
            f"{where}: use_bidirectional_attention=True (an encoder, not a causal LM) is not "
            "supported"
        )


def _hf_name(name: str) -> str:
    """HF key of our leaf ``name`` (``"layers/0/self_attn/q_proj/kernel"`` ->
    ``"model.layers.0.self_attn.q_proj.weight"``)."""
    parts = name.split("/")
    parts[-1] = _SUFFIX[parts[-1]]
    key = ".".join(parts)
    return key if key.startswith("lm_head.") else f"model.{key}"


def load_llm(
    path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
) -> LlamaLM:
    """A ``LlamaLM`` with the weights of a Hugging Face Llama / Qwen2 / Gemma causal-LM directory.

    Reads ``config.json`` (``model_type`` ``"llama"``, ``"qwen2"`` or ``"gemma"``; architectures
    ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``GemmaForCausalLM``) and the safetensors
    weights. Config keys:
    ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``rms_norm_eps``,
    ``max_position_embeddings``, ``tie_word_embeddings``, ``attention_bias`` / ``mlp_bias``
    (Llama; Qwen2 always has q/k/v biases and no o_proj / MLP bias), RoPE from
    ``rope_parameters`` (transformers >= 5) or ``rope_theta`` + ``rope_scaling`` (< 5), types
    default, ``"linear"`` and ``"llama3"``; transformers' defaults for absent keys.
    ``hidden_act`` must be ``"silu"`` (Llama, Qwen2); Qwen2 sliding-window layers are refused.
    Gemma 1 maps to ``hidden_act="gelu_tanh"``, ``rms_norm_unit_offset``, ``scale_embeddings``
    (see ``LlamaConfig``): its ``hidden_act`` must be ``"gelu_pytorch_tanh"`` or the legacy
    ``"gelu"`` (transformers reads both as the tanh GELU), ``hidden_activation`` None or
    ``"gelu_pytorch_tanh"``; Gemma 2 / 3 (``"gemma2"``, ``"gemma3"`` ...) are refused. Every other
    attribute must keep transformers' default unless it cannot change the logits
    (``initializer_range``, ``attention_dropout``, ``pretraining_tp``, bookkeeping such as
    ``torch_dtype`` or token ids); anything else, unknown attributes included, is refused.

    Weights: ``model.embed_tokens``, ``model.layers.{i}.{input_layernorm,
    post_attention_layernorm}``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (+ biases),
    ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head`` (absent when
    ``tie_word_embeddings``: transformers does not save the tied copy; one that is there is
    ignored, as transformers ties it). Linear ``[out, in]`` -> kernel ``[in, out]``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index),
        or a Hugging Face hub id (``org/name``; needs ``huggingface_hub``).
      dtype: computation dtype of the returned model; ``"auto"`` (default) keeps the
        checkpoint's (a bfloat16 checkpoint stays bfloat16).
      param_dtype: parameter dtype (the stored weights are cast to it); None means ``dtype``.
      mesh: None, or a ``jax.sharding.Mesh`` to load onto: every parameter is created in its
        ``NamedSharding`` (``pruneax.models.partition_spec``) from the slices of the
        memory-mapped checkpoint its devices hold, and carries the spec as ``out_sharding``
        metadata (``nnx.get_partition_spec``).

    Returns:
      The ``LlamaLM`` (``model.config`` holds the mapped ``LlamaConfig``).

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing.
      ValueError: for invalid JSON, an unsupported ``model_type`` / architecture / activation /
        RoPE type / sliding window, a config attribute the loader does not handle that differs
        from transformers' default (or that transformers' config class does not have), a
        missing tensor or one of the wrong shape, or checkpoint
        tensors the model would not use.

    Example:
      >>> import json, pathlib, tempfile
      >>> from pruneax.models.llama import load_llm
      >>> path = pathlib.Path(tempfile.mkdtemp())
      >>> config = {"model_type": "llama", "pretraining_tp": 2, "new_thing": 1}
      >>> _ = (path / "config.json").write_text(json.dumps(config))
      >>> load_llm(path)  # pretraining_tp cannot change the logits; new_thing might
      Traceback (most recent call last):
      ValueError: load_llm: config.json sets attributes the loader does not handle: new_thing=1 ...

    References: transformers' ``modeling_llama.py`` / ``modeling_qwen2.py``.
    """
    root, cfg, model_type = read_config(path, "load_llm", SUPPORTED_LLM_TYPES + _OTHER_GEMMAS)
    if model_type in _OTHER_GEMMAS:
        raise ValueError(
            f"load_llm: model_type {model_type!r} is not supported: only Gemma 1 ('gemma'); "
            "Gemma 2 / 3 are different networks (logit soft-capping, sliding-window layers, "
            f"extra norms); supported: {list(SUPPORTED_LLM_TYPES)}"
        )
    arch = (cfg.get("architectures") or [None])[0]
    if arch is not None and not arch.endswith("ForCausalLM"):
        raise ValueError(
            f"load_llm: architecture {arch!r} is not supported; expected a *ForCausalLM "
            "checkpoint (LlamaForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM)"
        )
    check_config(cfg, _RULES[model_type], "load_llm")
    config = _config(cfg, model_type)
    tensors = read_checkpoint(root)
    dtype, param_dtype = resolve_dtypes(dtype, param_dtype, tensors, "load_llm")
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    key_map = KeyMap(
        candidates=lambda name: (_hf_name(name),),
        # transformers ties lm_head to the embedding; old checkpoints store RoPE buffers
        ignore=lambda key: key in tied or key.endswith("rotary_emb.inv_freq"),
    )
    return fill(
        lambda: LlamaLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        tensors,
        key_map,
        loader="load_llm",
        mesh=mesh,
        note=f" (model_type {model_type!r}, architectures {cfg.get('architectures')}, as {config})",
    )
