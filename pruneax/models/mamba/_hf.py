"""Hugging Face checkpoint import for ``MambaLM``: ``MambaForCausalLM`` and ``MambaModel``.

References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); transformers' ``modeling_mamba.py`` /
``configuration_mamba.py``.
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
from pruneax.models.mamba._model import MambaConfig, MambaLM
from pruneax.weights import leaf_names

# Defaults of transformers' MambaConfig, for config.json files that leave keys out.
_HF_DEFAULTS = dict(
    vocab_size=50280,
    hidden_size=768,
    state_size=16,
    num_hidden_layers=32,
    layer_norm_epsilon=1e-5,
    expand=2,
    conv_kernel=4,
    use_bias=False,
    use_conv_bias=True,
    hidden_act="silu",
    residual_in_fp32=True,
    time_step_rank="auto",
    time_step_scale=1.0,
    time_step_min=0.001,
    time_step_max=0.1,
    time_step_floor=1e-4,
    tie_word_embeddings=True,
)
_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _hf_candidates(name: str, prefix: str) -> tuple[str, ...]:
    """HF key candidates of our leaf ``name`` (``"layers/0/mixer/in_proj/kernel"``)."""
    if name == "embed/embedding":
        # MambaModel.load_hook renames the old "embedding." to "embeddings.".
        return (f"{prefix}embeddings.weight", f"{prefix}embedding.weight")
    if name == "lm_head/kernel":
        return ("lm_head.weight",)
    parts = name.split("/")
    if parts[-1] in _SUFFIX:
        parts[-1] = _SUFFIX[parts[-1]]
    return (prefix + ".".join(parts),)


def _to_ours(name: str, array: np.ndarray) -> np.ndarray:
    """PyTorch layout -> ours: Linear [out, in] -> [in, out]; Conv1d [E, 1, K] -> [K, 1, E]."""
    if name.endswith("conv1d/kernel"):
        return array.transpose(2, 1, 0)
    if name.endswith("kernel"):
        return array.T
    return array


def _hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if name.endswith("conv1d/kernel") or name.endswith("kernel"):
        return shape[::-1]
    return shape


def load_mamba(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    scan_mode: str = "associative",
    scan_chunk: int | None = None,
    scan_remat: bool = False,
) -> MambaLM:
    """A ``MambaLM`` with the weights of a Hugging Face Mamba ``save_pretrained`` directory.

    Reads ``config.json`` (``model_type`` ``"mamba"``) and the safetensors weights with
    ``read_checkpoint`` (no torch). ``MambaForCausalLM`` (keys ``backbone.*`` and, when
    ``tie_word_embeddings`` is false, ``lm_head.weight``) gives ``lm_head="tied"`` or
    ``"untied"``; ``MambaModel`` (keys without the ``backbone.`` prefix) gives
    ``lm_head="none"``. Config keys: ``hidden_size``, ``num_hidden_layers``, ``vocab_size``,
    ``state_size``, ``expand``, ``conv_kernel``, ``time_step_rank`` (``"auto"`` = ceil(D /
    16)), ``use_bias``, ``use_conv_bias``, ``layer_norm_epsilon``, ``residual_in_fp32``,
    ``tie_word_embeddings`` (transformers' defaults for absent keys); ``hidden_act`` must be
    ``"silu"``. PyTorch layouts are converted: Linear ``[out, in]`` -> kernel ``[in, out]``,
    Conv1d ``[E, 1, K]`` -> ``[K, 1, E]``; the old key ``backbone.embedding.weight`` loads too.
    A tied checkpoint that also stores ``lm_head.weight`` loads (HF ties it to the embedding;
    so does ``MambaLM``).

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index).
      dtype: computation dtype of the returned model.
      param_dtype: parameter dtype (the stored weights are cast to it).
      scan_mode, scan_chunk, scan_remat: the ``MambaConfig`` scan options.

    Returns:
      The ``MambaLM`` (``model.config`` says which head it has).

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing.
      ValueError: for invalid JSON, a ``model_type`` other than ``"mamba"``, an unsupported
        ``hidden_act``, an ``intermediate_size`` other than ``expand * hidden_size``, a
        missing tensor or one of the wrong shape, or checkpoint tensors the model would not
        use.

    References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); transformers'
      ``modeling_mamba.py`` / ``configuration_mamba.py``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_mamba: {str(root)!r} is not a directory")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"load_mamba: no config.json in {str(root)!r}; expected a transformers "
            "save_pretrained directory (config.json + model.safetensors)"
        )
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"load_mamba: {str(config_file)!r} is not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    if model_type != "mamba":
        raise ValueError(
            f"load_mamba: model_type {model_type!r} in {str(config_file)!r} is not supported; "
            "supported: ['mamba']"
        )
    c = {**_HF_DEFAULTS, **cfg}
    if c["hidden_act"] != "silu":
        raise ValueError(f"load_mamba: hidden_act must be 'silu'; got {c['hidden_act']!r}")
    tensors = read_checkpoint(root)
    keys = set(tensors)
    prefix = "backbone." if any(k.startswith("backbone.") for k in keys) else ""
    arch = (cfg.get("architectures") or [""])[0]
    if arch.endswith("Model") or (not arch and not prefix and "lm_head.weight" not in keys):
        head = "none"
    else:
        head = "tied" if c["tie_word_embeddings"] else "untied"
    config = MambaConfig(
        hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        state_size=c["state_size"],
        expand=c["expand"],
        conv_kernel=c["conv_kernel"],
        time_step_rank=c["time_step_rank"],
        use_bias=c["use_bias"],
        use_conv_bias=c["use_conv_bias"],
        layer_norm_epsilon=c["layer_norm_epsilon"],
        residual_in_fp32=c["residual_in_fp32"],
        lm_head=head,
        scan_mode=scan_mode,
        scan_chunk=scan_chunk,
        scan_remat=scan_remat,
        time_step_min=c["time_step_min"],
        time_step_max=c["time_step_max"],
        time_step_floor=c["time_step_floor"],
        time_step_scale=c["time_step_scale"],
    )
    if "intermediate_size" in cfg and cfg["intermediate_size"] != config.d_inner:
        raise ValueError(
            f"load_mamba: intermediate_size {cfg['intermediate_size']} is not expand * "
            f"hidden_size = {config.d_inner}"
        )

    abstract = nnx.eval_shape(
        lambda: MambaLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    graphdef, state = nnx.split(abstract)
    values, used, missing, wrong = [], set(), [], []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        options = _hf_candidates(name, prefix)
        hf_name = next((k for k in options if k in tensors), None)
        if hf_name is None:
            missing.append(options[0])
            continue
        used.add(hf_name)
        array = tensors[hf_name]
        want = _hf_shape(name, tuple(leaf.shape))
        if tuple(array.shape) != want:
            wrong.append(f"{hf_name}: {list(array.shape)}, expected {list(want)}")
            continue
        converted = _to_ours(name, np.asarray(array))
        values.append(jnp.asarray(converted.astype(np.dtype(leaf.dtype))))
    note = f" (architectures {cfg.get('architectures')}, as {config})"
    if missing:
        raise ValueError(f"load_mamba: tensors missing from the checkpoint: {missing}{note}")
    if wrong:
        raise ValueError(f"load_mamba: tensors of the wrong shape: {wrong}{note}")
    ignorable = {"lm_head.weight"} if head == "tied" else set()
    unused = sorted(keys - used - ignorable)
    if unused:
        raise ValueError(f"load_mamba: checkpoint tensors the model does not use: {unused}{note}")
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), values))
