"""Hugging Face checkpoint import for ``LlamaLM``: ``LlamaForCausalLM`` and ``Qwen2ForCausalLM``.

``load_llm(path)`` reads a ``save_pretrained`` directory (``config.json`` + safetensors, single
or sharded) with ``read_checkpoint`` -- no torch, ``transformers`` or ``safetensors`` package --
and returns a ``LlamaLM`` whose logits, attention probabilities and greedy generations match
the PyTorch model's.

References: transformers' ``models/llama/{configuration,modeling}_llama.py``,
``models/qwen2/{configuration,modeling}_qwen2.py`` and ``modeling_rope_utils.py`` (v4 configs
keep ``rope_theta`` / ``rope_scaling`` at the top level, v5 configs put both in
``rope_parameters``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models.llama._model import LlamaConfig, LlamaLM
from pruneax.weights import leaf_names

SUPPORTED_LLM_TYPES = ("llama", "qwen2")

# Defaults of transformers' config classes, for config.json files that leave keys out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        head_dim=None,
    ),
    "qwen2": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        max_window_layers=28,
        head_dim=None,
    ),
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
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
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
    c = {**_DEFAULTS[model_type], **cfg}
    if c["hidden_act"] != "silu":
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
        mlp_bias = bool(c["mlp_bias"])
    theta, scaling = _rope(c, where)
    try:
        return LlamaConfig(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=c["num_attention_heads"],
            num_kv_heads=c["num_key_value_heads"],
            head_dim=c["head_dim"],
            rms_norm_eps=c["rms_norm_eps"],
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=c["max_position_embeddings"],
            tie_word_embeddings=bool(c["tie_word_embeddings"]),
            attention_bias=qkv_bias,
            attention_out_bias=out_bias,
            mlp_bias=mlp_bias,
        )
    except ValueError as e:
        raise ValueError(f"{where}: unsupported config.json ({e})") from None


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
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
) -> LlamaLM:
    """A ``LlamaLM`` with the weights of a Hugging Face Llama / Qwen2 causal-LM directory.

    Reads ``config.json`` (``model_type`` ``"llama"`` or ``"qwen2"``; architectures
    ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``) and the safetensors weights. Config keys:
    ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``rms_norm_eps``,
    ``max_position_embeddings``, ``tie_word_embeddings``, ``attention_bias`` / ``mlp_bias``
    (Llama; Qwen2 always has q/k/v biases and no o_proj / MLP bias), RoPE from
    ``rope_parameters`` (transformers >= 5) or ``rope_theta`` + ``rope_scaling`` (< 5), types
    default, ``"linear"`` and ``"llama3"``; transformers' defaults for absent keys.
    ``hidden_act`` must be ``"silu"``; Qwen2 sliding-window layers are refused.

    Weights: ``model.embed_tokens``, ``model.layers.{i}.{input_layernorm,
    post_attention_layernorm}``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (+ biases),
    ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head`` (absent when
    ``tie_word_embeddings``: transformers does not save the tied copy; one that is there is
    ignored, as transformers ties it). Linear ``[out, in]`` -> kernel ``[in, out]``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index).
      dtype: computation dtype of the returned model.
      param_dtype: parameter dtype (stored weights are cast to it); None means ``dtype``.

    Returns:
      The ``LlamaLM`` (``model.config`` holds the mapped ``LlamaConfig``).

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing.
      ValueError: for invalid JSON, an unsupported ``model_type`` / architecture / activation /
        RoPE type / sliding window, a missing tensor or one of the wrong shape, or checkpoint
        tensors the model would not use.

    References: transformers' ``modeling_llama.py`` / ``modeling_qwen2.py``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_llm: {str(root)!r} is not a directory")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"load_llm: no config.json in {str(root)!r}; expected a transformers "
            "save_pretrained directory (config.json + model.safetensors)"
        )
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"load_llm: {str(config_file)!r} is not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_LLM_TYPES:
        raise ValueError(
            f"load_llm: model_type {model_type!r} in {str(config_file)!r} is not supported; "
            f"supported: {list(SUPPORTED_LLM_TYPES)}"
        )
    arch = (cfg.get("architectures") or [None])[0]
    if arch is not None and not arch.endswith("ForCausalLM"):
        raise ValueError(
            f"load_llm: architecture {arch!r} is not supported; expected a *ForCausalLM "
            "checkpoint (LlamaForCausalLM, Qwen2ForCausalLM)"
        )
    config = _config(cfg, model_type)
    tensors = read_checkpoint(root)
    keys = set(tensors)
    param_dtype = dtype if param_dtype is None else param_dtype

    abstract = nnx.eval_shape(
        lambda: LlamaLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    graphdef, state = nnx.split(abstract)
    values, used, missing, wrong = [], set(), [], []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        hf_name = _hf_name(name)
        if hf_name not in tensors:
            missing.append(hf_name)
            continue
        used.add(hf_name)
        array = tensors[hf_name]
        kernel = name.endswith("kernel")
        want = tuple(leaf.shape)[::-1] if kernel else tuple(leaf.shape)
        if tuple(array.shape) != want:
            wrong.append(f"{hf_name}: {list(array.shape)}, expected {list(want)}")
            continue
        converted = np.asarray(array).T if kernel else np.asarray(array)
        values.append(jnp.asarray(converted.astype(np.dtype(leaf.dtype))))
    note = f" (model_type {model_type!r}, architectures {cfg.get('architectures')}, as {config})"
    if missing:
        raise ValueError(f"load_llm: tensors missing from the checkpoint: {missing}{note}")
    if wrong:
        raise ValueError(f"load_llm: tensors of the wrong shape: {wrong}{note}")
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unused = sorted(k for k in keys - used - ignorable if not k.endswith("rotary_emb.inv_freq"))
    if unused:
        raise ValueError(f"load_llm: checkpoint tensors the model does not use: {unused}{note}")
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), values))
