"""GGUF import for ``LlamaLM``: llama.cpp's ``llama`` architecture, quantised or not.

``load_gguf(path)`` reads a GGUF file with the ``gguf`` package (``gguf.GGUFReader``, memory
mapped), maps its metadata to a ``LlamaConfig`` through an allowlist (every ``llama.*`` key the
loader does not handle is refused unless it holds the value that leaves the model unchanged),
dequantises every tensor to float32 with ``gguf.quants.dequantize`` and fills the model with the
shared loader (``fill``): GGUF stores a matrix with ggml's shape ``[in, out]``, which NumPy reads
as PyTorch's ``[out, in]``, so the Hugging Face layout conversion applies unchanged.

llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.modify_tensors``) permutes the
rows of ``q_proj`` / ``k_proj`` (weights and biases) with ``LlamaModel.permute``: within each
head, Hugging Face's half-split RoPE rows ``[x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}]`` become the
interleaved ``[x_0, y_0, x_1, y_1, ...]`` that ggml's "normal" RoPE rotates. ``_unpermute``
restores the Hugging Face order, so pruneax's (Hugging Face style) RoPE gives the same result.

The weights of a quantised file are the dequantised ones, not the original checkpoint's: a
Q4_1 model loaded here computes what llama.cpp computes with that file, not what the float16
model it was made from computes.

References: llama.cpp's ``convert_hf_to_gguf.py`` and ``gguf-py`` (``gguf/constants.py`` for
the metadata keys and tensor names); transformers' ``integrations/ggml.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.loader import KeyMap, fill
from pruneax.models.llama._config import LlamaConfig
from pruneax.models.llama._gguf_files import gguf_metadata, open_gguf
from pruneax.models.llama._model import LlamaLM

# ``llama.<key>`` metadata the config mapping reads.
_HANDLED = frozenset(
    "context_length embedding_length block_count feed_forward_length vocab_size "
    "attention.head_count attention.head_count_kv attention.layer_norm_rms_epsilon "
    "attention.key_length attention.value_length rope.freq_base rope.dimension_count "
    "rope.scaling.type rope.scaling.factor rope.scale_linear".split()
)
# ``llama.<key>`` metadata accepted at the value that leaves a plain Llama unchanged (llama.cpp
# reads them for other models of the same architecture: mixture of experts, non-causal use).
_NEUTRAL: Mapping[str, Any] = {
    "expert_count": 0,
    "expert_used_count": 0,
    "attention.causal": True,
    "tensor_data_layout": "Meta AI original pth",  # old convert.py: the permuted layout above
}
# ``llama.<key>`` metadata that cannot change the logits: whether the model was fine-tuned with
# its RoPE scaling, and the original context (read by llama.cpp for YaRN only, refused below).
_HARMLESS = frozenset({"rope.scaling.finetuned", "rope.scaling.original_context_length"})
# Other namespaces: file bookkeeping, model card, tokenizer, quantisation provenance.
_HARMLESS_PREFIXES = ("GGUF.", "general.", "tokenizer.", "quantize.")
# Our leaf (without "layers/{i}/") -> GGUF tensor (without "blk.{i}.").
_TENSOR = {
    "self_attn/q_proj": "attn_q",
    "self_attn/k_proj": "attn_k",
    "self_attn/v_proj": "attn_v",
    "self_attn/o_proj": "attn_output",
    "mlp/gate_proj": "ffn_gate",
    "mlp/up_proj": "ffn_up",
    "mlp/down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
_SUFFIX = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _unpermute(array: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``LlamaModel.permute`` on the rows of a Q / K weight or bias.

    The converter views the rows of each head as ``[2, head_dim / 2]`` (halves of HF's RoPE
    layout) and transposes them to ``[head_dim / 2, 2]`` (interleaved pairs); this views them
    as ``[head_dim / 2, 2]`` and transposes back.
    """
    rows = array.shape[0]
    split = array.reshape(heads, rows // heads // 2, 2, *array.shape[1:])
    return split.swapaxes(1, 2).reshape(array.shape)


class _Tensors(Mapping):
    """The file's tensors by name, dequantised (and Q / K un-permuted) on access."""

    def __init__(self, reader, config: LlamaConfig, loader: str):
        self._by_name = {t.name: t for t in reader.tensors}
        self._config, self._loader = config, loader

    def __contains__(self, key: object) -> bool:
        return key in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, key: str) -> np.ndarray:
        import gguf

        tensor = self._by_name[key]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as e:
            raise ValueError(
                f"{self._loader}: tensor {key!r} has type {tensor.tensor_type.name}, which the "
                f"gguf package cannot dequantise ({e})"
            ) from None
        array = np.asarray(array, np.float32)
        part = key.split(".")
        if len(part) == 4 and part[2] in ("attn_q", "attn_k"):
            cfg = self._config
            array = _unpermute(array, cfg.num_heads if part[2] == "attn_q" else cfg.num_kv_heads)
        return array


def _gguf_name(name: str) -> str:
    """GGUF tensor of our leaf ``name`` (``"layers/0/self_attn/q_proj/kernel"`` ->
    ``"blk.0.attn_q.weight"``)."""
    parts = name.split("/")
    suffix = _SUFFIX[parts[-1]]
    if parts[0] == "layers":
        return f"blk.{parts[1]}.{_TENSOR['/'.join(parts[2:-1])]}.{suffix}"
    return f"{_TOP[parts[0]]}.{suffix}"


def _check_metadata(meta: Mapping[str, Any], loader: str) -> None:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{loader}: general.architecture {arch!r} is not supported; expected 'llama'"
        )
    bad = []
    for key, value in meta.items():
        if key.startswith(_HARMLESS_PREFIXES):
            continue
        sub = key.removeprefix("llama.")
        if sub == key:
            bad.append(f"{key}={value!r} (not llama.* metadata)")
        elif sub in _HANDLED or sub in _HARMLESS:
            continue
        elif sub not in _NEUTRAL:
            bad.append(f"{key}={value!r} (not handled)")
        elif value != _NEUTRAL[sub]:
            bad.append(f"{key}={value!r} (only {_NEUTRAL[sub]!r} is supported)")
    if bad:
        raise ValueError(
            f"{loader}: GGUF metadata the loader does not handle: {'; '.join(bad)}; the model "
            "would not compute what llama.cpp computes with this file"
        )


def _int(meta: Mapping[str, Any], key: str, loader: str, default: Any = None) -> int:
    value = meta.get(f"llama.{key}", default)
    if value is None:
        raise ValueError(f"{loader}: GGUF metadata llama.{key} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{loader}: metadata llama.{key} must be an integer; got {value!r}")
    return int(value)


def _rope_scaling(meta: Mapping[str, Any], loader: str) -> dict[str, Any] | None:
    """Linear RoPE scaling from ``rope.scaling.type`` / ``rope.scaling.factor`` (or the old
    ``rope.scale_linear``); a factor of 0 or 1 means none, as in llama.cpp."""
    factor = meta.get("llama.rope.scaling.factor", meta.get("llama.rope.scale_linear"))
    scaled = factor not in (None, 0, 0.0, 1, 1.0)
    kind = meta.get("llama.rope.scaling.type", "linear" if scaled else "none")
    if kind not in ("none", "linear"):
        raise ValueError(
            f"{loader}: llama.rope.scaling.type {kind!r} is not supported (only 'none', 'linear')"
        )
    if kind == "none" and scaled:
        raise ValueError(
            f"{loader}: llama.rope.scaling.type 'none' with llama.rope.scaling.factor {factor} "
            "is ambiguous; refused"
        )
    return {"rope_type": "linear", "factor": float(factor)} if scaled else None


def _config(meta: Mapping[str, Any], names: set[str], loader: str) -> LlamaConfig:
    heads = _int(meta, "attention.head_count", loader)
    hidden = _int(meta, "embedding_length", loader)
    head_dim = _int(meta, "attention.key_length", loader, hidden // max(heads, 1))
    if _int(meta, "attention.value_length", loader, head_dim) != head_dim:
        raise ValueError(f"{loader}: llama.attention.value_length must equal key_length {head_dim}")
    if _int(meta, "rope.dimension_count", loader, head_dim) != head_dim:
        raise ValueError(
            f"{loader}: llama.rope.dimension_count {meta['llama.rope.dimension_count']} must "
            f"equal the head width {head_dim} (partial RoPE is not supported)"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    if "llama.vocab_size" not in meta and tokens is not None:
        meta = {**meta, "llama.vocab_size": len(tokens)}
    rope_tensors = sorted(n for n in names if n.startswith("rope_"))
    if rope_tensors:
        raise ValueError(
            f"{loader}: tensor {rope_tensors[0]!r} (RoPE frequency factors, e.g. llama3 "
            "scaling) is not supported"
        )
    try:
        return LlamaConfig(
            vocab_size=_int(meta, "vocab_size", loader),
            hidden_size=hidden,
            intermediate_size=_int(meta, "feed_forward_length", loader),
            num_layers=_int(meta, "block_count", loader),
            num_heads=heads,
            num_kv_heads=_int(meta, "attention.head_count_kv", loader, heads),
            head_dim=head_dim,
            rms_norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(meta, loader),
            max_position_embeddings=_int(meta, "context_length", loader),
            tie_word_embeddings="output.weight" not in names,
            attention_bias="blk.0.attn_q.bias" in names,
            attention_out_bias="blk.0.attn_output.bias" in names,
            mlp_bias="blk.0.ffn_up.bias" in names,
        )
    except KeyError as e:
        raise ValueError(f"{loader}: GGUF metadata {e.args[0]} is missing") from None
    except ValueError as e:
        raise ValueError(f"{loader}: unsupported GGUF metadata ({e})") from None


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    param_dtype: Any = None,
) -> LlamaLM:
    """A ``LlamaLM`` with the (dequantised) weights of a llama.cpp GGUF file of a Llama model.

    Metadata (``general.architecture`` must be ``"llama"``): ``llama.block_count``,
    ``embedding_length``, ``feed_forward_length``, ``attention.head_count`` / ``_kv``,
    ``attention.key_length`` / ``value_length`` (head width), ``attention.layer_norm_rms_epsilon``,
    ``rope.freq_base``, ``rope.dimension_count`` (must be the head width), ``context_length``,
    ``vocab_size`` (else the tokenizer's token count), RoPE scaling ``"none"`` or ``"linear"``.
    Tied embeddings when the file has no ``output.weight``; Q/K/V, output and MLP biases when it
    has them. Any other ``llama.*`` key that could change the math (experts, YaRN, non-causal
    attention, unknown keys), or keys outside the ``general.`` / ``tokenizer.`` / ``quantize.``
    namespaces, are refused.

    Tensors ``token_embd``, ``blk.{i}.{attn_norm, attn_q, attn_k, attn_v, attn_output,
    ffn_norm, ffn_gate, ffn_up, ffn_down}``, ``output_norm``, ``output`` of any type the
    ``gguf`` package dequantises (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants ...) become float32;
    Q and K rows are un-permuted from llama.cpp's interleaved RoPE layout. A quantised file gives
    the quantised model, not the original weights.

    Args:
      path: the ``.gguf`` file (one file; split GGUFs are refused).
      dtype: computation dtype of the returned model; None means float32 (what dequantisation
        gives).
      param_dtype: parameter dtype (dequantised weights are cast to it); None means ``dtype``.

    Returns:
      The ``LlamaLM`` (``model.config`` holds the mapped ``LlamaConfig``).

    Raises:
      ValueError: if ``path`` is not a GGUF file, the architecture is not ``llama``, metadata is
        missing or not handled (the key is named), a tensor is missing, of the wrong shape, of a
        type the ``gguf`` package cannot dequantise, or one the model would not use.
      ModuleNotFoundError: if the ``gguf`` package is not installed.

    Example:
      >>> import pathlib, tempfile, gguf
      >>> from pruneax.models.llama import load_gguf
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.gguf"
      >>> writer = gguf.GGUFWriter(path, "gpt2")
      >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.close()
      >>> load_gguf(path)
      Traceback (most recent call last):
      ValueError: load_gguf: general.architecture 'gpt2' is not supported; expected 'llama'

    References: llama.cpp ``convert_hf_to_gguf.py`` (``LlamaModel``), ``gguf-py``.
    """
    loader = "load_gguf"
    reader = open_gguf(path, loader)
    meta = gguf_metadata(reader)
    _check_metadata(meta, loader)
    config = _config(meta, {t.name for t in reader.tensors}, loader)
    dtype = jnp.float32 if dtype is None else dtype
    param_dtype = dtype if param_dtype is None else param_dtype
    return fill(
        lambda: LlamaLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        _Tensors(reader, config, loader),
        KeyMap(candidates=lambda name: (_gguf_name(name),)),
        loader=loader,
        note=f" (GGUF {str(path)!r}, as {config})",
    )
