"""Hugging Face checkpoint import for ``MambaLM``: ``MambaForCausalLM`` and ``MambaModel``.

References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); transformers' ``modeling_mamba.py`` /
``configuration_mamba.py``.
"""

from __future__ import annotations

import os
from typing import Any

from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models._shared.dtypes import resolve_dtypes
from pruneax.models._shared.loader import ConfigRules, KeyMap, check_config, fill, read_config
from pruneax.models.mamba._model import MambaConfig, MambaLM

# transformers' MambaConfig (v5) __init__ defaults; time_step_rank "auto" = ceil(hidden / 16),
# intermediate_size (not an __init__ argument) = expand * hidden_size.
_RULES = ConfigRules(
    "MambaConfig",
    dict(
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
        initializer_range=0.1,
        residual_in_fp32=True,
        time_step_rank="auto",
        time_step_scale=1.0,
        time_step_min=0.001,
        time_step_max=0.1,
        time_step_init_scheme="random",
        time_step_floor=1e-4,
        rescale_prenorm_residual=False,
        use_mambapy=False,
        use_associative_scan=True,
        tie_word_embeddings=True,
        intermediate_size=None,
    ),
    handled=frozenset(
        "vocab_size hidden_size state_size num_hidden_layers layer_norm_epsilon expand "
        "conv_kernel use_bias use_conv_bias hidden_act residual_in_fp32 time_step_rank "
        "time_step_scale time_step_min time_step_max time_step_floor tie_word_embeddings "
        "intermediate_size".split()
    ),
    # Initialisation only: initializer_range, time_step_init_scheme, rescale_prenorm_residual.
    # Which PyTorch code computes the same selective scan: use_mambapy (mambapy's parallel
    # scan), use_associative_scan.
    harmless=frozenset(
        "initializer_range time_step_init_scheme rescale_prenorm_residual use_mambapy "
        "use_associative_scan".split()
    ),
)
# MambaConfig fields named as in transformers' MambaConfig.
_SAME_NAME = (
    "hidden_size vocab_size state_size expand conv_kernel time_step_rank use_bias use_conv_bias "
    "layer_norm_epsilon residual_in_fp32 time_step_min time_step_max time_step_floor "
    "time_step_scale"
).split()
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


def load_mamba(
    path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
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
    ``"silu"``; other attributes must keep transformers' defaults unless they cannot change
    the outputs (initialisation settings, ``use_mambapy``, ``use_associative_scan``, bookkeeping
    such as ``torch_dtype``); anything else, unknown attributes included, is refused. PyTorch
    layouts are converted: Linear ``[out, in]`` -> kernel ``[in, out]``,
    Conv1d ``[E, 1, K]`` -> ``[K, 1, E]``; the old key ``backbone.embedding.weight`` loads too.
    A tied checkpoint that also stores ``lm_head.weight`` loads (HF ties it to the embedding;
    so does ``MambaLM``).

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index),
        or a Hugging Face hub id (``org/name``; needs ``huggingface_hub``).
      dtype: computation dtype of the returned model; ``"auto"`` (default) keeps the
        checkpoint's (``checkpoint_dtype``: a bfloat16 checkpoint stays bfloat16).
      param_dtype: parameter dtype (the stored weights are cast to it); None means ``dtype``.
      mesh: None, or a ``jax.sharding.Mesh`` to load onto: every parameter is created in its
        ``NamedSharding`` (``partition_spec``) from slices of the memory-mapped file.
      scan_mode, scan_chunk, scan_remat: the ``MambaConfig`` scan options.

    Returns:
      The ``MambaLM`` (``model.config`` says which head it has).

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing.
      ValueError: for invalid JSON, a ``model_type`` other than ``"mamba"``, an unsupported
        ``hidden_act``, a config attribute the loader does not handle that differs from
        transformers' default (or that ``MambaConfig`` does not have), an
        ``intermediate_size`` other than ``expand * hidden_size``, a missing tensor or one of
        the wrong shape, or checkpoint tensors the model would not use.

    Example:
      >>> from pruneax.models.mamba import load_mamba
      >>> lm = load_mamba("downloads/mamba-130m-hf", scan_mode="sequential")  # doctest: +SKIP
      >>> try:
      ...     load_mamba("no/such/dir")
      ... except FileNotFoundError as e:
      ...     print(str(e).split(":")[0])
      load_mamba

    References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); transformers'
      ``modeling_mamba.py`` / ``configuration_mamba.py``.
    """
    root, cfg, model_type = read_config(path, "load_mamba", ("mamba",))
    check_config(cfg, _RULES, "load_mamba")
    c = _RULES.complete(cfg)
    if c["hidden_act"] != "silu":
        raise ValueError(f"load_mamba: hidden_act must be 'silu'; got {c['hidden_act']!r}")
    tensors = read_checkpoint(root)
    dtype, param_dtype = resolve_dtypes(dtype, param_dtype, tensors, "load_mamba")
    keys = set(tensors)
    prefix = "backbone." if any(k.startswith("backbone.") for k in keys) else ""
    arch = (cfg.get("architectures") or [""])[0]
    if arch.endswith("Model") or (not arch and not prefix and "lm_head.weight" not in keys):
        head = "none"
    else:
        head = "tied" if c["tie_word_embeddings"] else "untied"
    config = MambaConfig(
        **{field: c[field] for field in _SAME_NAME},
        num_layers=c["num_hidden_layers"],
        lm_head=head,
        scan_mode=scan_mode,
        scan_chunk=scan_chunk,
        scan_remat=scan_remat,
    )
    if c["intermediate_size"] is not None and c["intermediate_size"] != config.d_inner:
        raise ValueError(
            f"load_mamba: intermediate_size {c['intermediate_size']} is not expand * "
            f"hidden_size = {config.d_inner}"
        )
    tied = {"lm_head.weight"} if head == "tied" else set()
    return fill(
        lambda: MambaLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        tensors,
        KeyMap(candidates=lambda name: _hf_candidates(name, prefix), ignore=tied.__contains__),
        loader="load_mamba",
        mesh=mesh,
        note=f" (model_type {model_type!r}, architectures {cfg.get('architectures')}, as {config})",
    )
