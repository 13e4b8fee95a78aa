"""One Hugging Face checkpoint loader: config.json reading, a config allowlist, and weight filling.

Every ``load_*`` function (``load_vit``, ``load_llm``, ``load_mamba``) runs the same three steps:

1. ``read_config(path, loader, model_types)``: the ``save_pretrained`` directory and its
   ``config.json`` (exists, valid JSON, a supported ``model_type``).
2. ``check_config(cfg, rules, loader)``: the allowlist. Each architecture declares, in a
   ``ConfigRules``, the defaults of its transformers config class, the attributes its config
   mapping reads (``handled``) and those that cannot change the forward pass at inference
   (``harmless``: dropout, initialiser scales, a head it does not load). Every other attribute
   must keep transformers' default; one that does not, or that transformers' class does not
   have at all, raises a ``ValueError`` naming it, so a checkpoint is never silently loaded
   into a model that computes something else. Attributes every ``PretrainedConfig`` carries and
   that do not change the computation (bookkeeping, output flags, token ids, v4-era generation
   settings) are allowed once here (``COMMON_ATTRIBUTES``).
3. ``fill(build, tensors, key_map, ...)``: builds the model abstractly (``nnx.eval_shape``, no
   random initialisation), finds every leaf's tensor through the architecture's ``KeyMap``
   (our leaf name -> candidate HF keys; the expected PyTorch shape; checkpoint keys that may stay
   unused), converts PyTorch layouts (``from_torch``), casts each tensor from the checkpoint's
   dtype to the leaf's parameter dtype, and reports every missing, wrong-shape and unused tensor.

The rule for unknown attributes follows penzai's converters
(``penzai/models/transformer/variants/llama.py``): an attribute absent from transformers' config
class is refused too, since nothing says what it does.

This module is private: the architectures' ``load_*`` functions are the public entry points.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from pruneax.models._shared.config_types import check_common, type_error
from pruneax.models._shared.hub import checkpoint_dir
from pruneax.models._shared.sharding import annotate, check_mesh, place
from pruneax.weights import leaf_names

# Attributes of every transformers ``PretrainedConfig`` (v4 and v5) that do not change what the
# model computes from its inputs: bookkeeping, output flags, token ids and labels (a head's size
# is checked through its tensors' shapes), the attention *implementation* (eager / sdpa / flash
# compute the same attention), feed-forward chunking (same result, less memory) and the
# generation settings v4 stored in config.json (they drive ``generate()``, not the forward pass).
COMMON_ATTRIBUTES = frozenset(
    {
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_commit_hash",
        "_name_or_path",
        "architectures",
        "attn_implementation",
        "bad_words_ids",
        "begin_suppress_tokens",
        "bos_token_id",
        "chunk_size_feed_forward",
        "decoder_start_token_id",
        "diversity_penalty",
        "do_sample",
        "dtype",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "eos_token_id",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "gradient_checkpointing",
        "id2label",
        "label2id",
        "length_penalty",
        "max_length",
        "min_length",
        "model_type",
        "name_or_path",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_labels",
        "num_return_sequences",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "pad_token_id",
        "prefix",
        "problem_type",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict",
        "return_dict_in_generate",
        "sep_token_id",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tokenizer_class",
        "top_k",
        "top_p",
        "torch_dtype",
        "torchscript",
        "transformers_version",
        "typical_p",
        "use_bfloat16",
        "use_cache",
    }
)

# ``PretrainedConfig`` attributes (v4) that *would* change the model if set: pruned attention
# heads, cross-attention layers, an encoder-decoder. They must keep these defaults.
COMMON_DEFAULTS: Mapping[str, Any] = {
    "add_cross_attention": False,
    "cross_attention_hidden_size": None,
    "is_decoder": False,
    "is_encoder_decoder": False,
    "pruned_heads": {},
    "tie_encoder_decoder": False,
}


@dataclasses.dataclass(frozen=True)
class ConfigRules:
    """What one architecture's loader accepts in a Hugging Face config.

    Attributes:
      config_class: transformers' config class name (for messages), e.g. ``"LlamaConfig"``.
      defaults: the keyword defaults of that class's ``__init__`` for every attribute it
        stores; where transformers derives a stored value from others (``head_dim``,
        ``layer_types``, ``time_step_rank`` ...), the ``__init__`` default (``None`` /
        ``"auto"``) and the mapping derives it the same way. Used for absent keys too.
      handled: attributes the architecture's config mapping reads (it maps or refuses them).
      harmless: attributes that cannot change the forward pass at inference (each documented
        where the rules are declared).
    """

    config_class: str
    defaults: Mapping[str, Any]
    handled: frozenset[str]
    harmless: frozenset[str] = frozenset()

    def __post_init__(self):
        both = sorted(self.handled & self.harmless)
        if both:
            raise ValueError(f"ConfigRules: attributes both handled and harmless: {both}")

    def complete(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """``cfg`` with transformers' defaults for the attributes it leaves out."""
        return {**self.defaults, **cfg}


def read_config(
    path: Any, loader: str, model_types: Sequence[str]
) -> tuple[Path, dict[str, Any], str]:
    """The checkpoint directory, its parsed ``config.json`` and its ``model_type``.

    Args:
      path: a ``save_pretrained`` directory, or a Hugging Face hub id (``checkpoint_dir``).
      loader: the public function's name, which starts every message (``"load_vit"``).
      model_types: the supported ``model_type`` values.

    Returns:
      ``(directory, config dict, model_type)``.

    Raises:
      FileNotFoundError: if the directory (not a hub id either) or its ``config.json`` does
        not exist.
      ValueError: naming the file (and the key) if ``config.json`` is not UTF-8 JSON holding
        an object, its ``model_type`` is not one of ``model_types``, ``architectures`` is not
        a list of strings, ``num_labels`` not an int >= 0 or ``id2label`` / ``label2id`` not
        an object.

    Example:
      >>> import pathlib, tempfile
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (root / "config.json").write_text('{"model_type": "vit", "architectures": [5]}')
      >>> try:
      ...     read_config(root, "load_vit", ["vit"])
      ... except ValueError as e:
      ...     print(str(e).split(": ", 2)[2])
      'architectures' must be a list of class names (strings); got [5]
    """
    root = checkpoint_dir(path, loader)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{loader}: no config.json in {str(root)!r}; expected a transformers "
            "save_pretrained directory (config.json + model.safetensors)"
        )
    where = f"{loader}: {str(config_file)!r}"
    try:
        cfg = json.loads(config_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ValueError(
            f"{where} is not valid JSON (UTF-8 text expected; {type(e).__name__}: {reason})"
        ) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where} must hold a JSON object; got {type(cfg).__name__}")
    check_common(cfg, where)
    model_type = cfg.get("model_type")
    if model_type not in model_types:
        raise ValueError(
            f"{loader}: model_type {model_type!r} in {str(config_file)!r} is not supported; "
            f"supported: {list(model_types)}"
        )
    return root, cfg, model_type


def check_config(
    cfg: Mapping[str, Any], rules: ConfigRules, loader: str, where: str = "config.json"
) -> None:
    """Refuses config attributes the architecture does not handle (the allowlist).

    An attribute passes if it is in ``COMMON_ATTRIBUTES``, ``rules.handled`` or
    ``rules.harmless``, or if it equals its default in ``rules.defaults`` (or
    ``COMMON_DEFAULTS``). Anything else -- a non-default value of an unhandled attribute, or an
    attribute transformers' class does not have -- is an error.

    Args:
      cfg: the parsed config (or a nested sub-config such as CLIP's ``vision_config``).
      rules: the architecture's ``ConfigRules``.
      loader: the public function's name, for the message.
      where: which config the attributes come from, for the message.

    A handled attribute must also have the type of its default (``type_error``): an int
    (not a float such as ``16.7``, which would be truncated, nor ``null``), a bool, a finite
    number or a string.

    Raises:
      ValueError: naming every refused attribute with its value and transformers' default.

    Example:
      >>> rules = ConfigRules("DemoConfig", {"width": 8, "dropout": 0.0}, frozenset({"width"}))
      >>> check_config({"width": 16, "dropout": 0.0, "model_type": "demo"}, rules, "load_demo")
      >>> try:
      ...     check_config({"dropout": 0.1}, rules, "load_demo")
      ... except ValueError as e:
      ...     print(str(e).split(";")[0])
      load_demo: config.json sets attributes the loader does not handle: dropout=0.1 (DemoConfig default 0.0)
    """  # noqa: E501
    defaults = {**COMMON_DEFAULTS, **rules.defaults}
    wrong = [
        f"{key}={value!r} (expected {want}; {rules.config_class} default {defaults.get(key)!r})"
        for key, value in cfg.items()
        if key in rules.handled
        for want in [type_error(key, value, defaults.get(key))]
        if want
    ]
    if wrong:
        raise ValueError(f"{loader}: {where} has attributes of the wrong type: {'; '.join(wrong)}")
    bad = []
    for key, value in cfg.items():
        if key in COMMON_ATTRIBUTES or key in rules.handled or key in rules.harmless:
            continue
        if key not in defaults:
            bad.append(f"{key}={value!r} (not an attribute of {rules.config_class})")
        elif value != defaults[key]:
            bad.append(f"{key}={value!r} ({rules.config_class} default {defaults[key]!r})")
    if bad:
        raise ValueError(
            f"{loader}: {where} sets attributes the loader does not handle: {'; '.join(bad)}; "
            "the model would not compute what the checkpoint's model computes"
        )


# ------------------------------------------------------------------------------ weights


def torch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the tensor that fills our leaf ``name`` of shape ``shape``.

    Kernels: Linear ``[in, out]`` <- ``[out, in]``; Conv1d ``[K, 1, E]`` <- ``[E, 1, K]``;
    Conv2d ``[kh, kw, C, D]`` <- ``[D, C, kh, kw]``. Every other leaf keeps its shape.
    """
    if not name.endswith("kernel"):
        return shape
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1]


def from_torch(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` in PyTorch layout -> our leaf ``name`` of shape ``shape`` (see
    ``torch_shape``); then reshaped to ``shape`` (e.g. CLIP's ``[D]`` class embedding)."""
    if name.endswith("kernel"):
        array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.transpose()
    return array.reshape(shape)


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """How one architecture's leaves are found in a Hugging Face checkpoint.

    Attributes:
      candidates: our leaf name (``"layers/0/mlp/up_proj/kernel"``) -> the HF keys that may
        hold it, most likely first (the first present is used; the first is named when none is).
      hf_shape: ``(leaf name, leaf shape)`` -> the expected HF tensor shape; default
        ``torch_shape``.
      ignore: checkpoint keys that may stay unused (a tied LM head, buffers, another tower).
    """

    candidates: Callable[[str], Sequence[str]]
    hf_shape: Callable[[str, tuple[int, ...]], tuple[int, ...]] = torch_shape
    ignore: Callable[[str], bool] = lambda key: False


def abstract_leaves(
    build: Callable[[], nnx.Module],
) -> tuple[list[str], list[Any], Callable[[Iterable[jax.Array]], nnx.Module]]:
    """The leaves of ``build()``'s model without initialising it, and a function that fills them.

    Args:
      build: makes the model (called under ``nnx.eval_shape``: nothing is computed).

    Returns:
      ``(names, leaves, merge)``: the ``leaf_names`` of the model state, its abstract leaves
      (``ShapeDtypeStruct``) in the same order, and ``merge(values)``, which returns the model
      with those leaves replaced by ``values`` (one array per leaf, in order).
    """
    graphdef, state = nnx.split(nnx.eval_shape(build))
    treedef = jax.tree.structure(state)

    def merge(values: Iterable[jax.Array]) -> nnx.Module:
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, list(values)))

    return leaf_names(state), jax.tree.leaves(state), merge


def fill(
    build: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    key_map: KeyMap,
    *,
    loader: str,
    note: str = "",
    mesh: Any = None,
) -> nnx.Module:
    """``build()``'s model with every leaf taken from ``tensors`` through ``key_map``.

    Each tensor is converted from PyTorch layout (``from_torch``) and cast from the checkpoint's
    dtype to the leaf's parameter dtype. All shapes are checked before any tensor is read.

    Args:
      build: makes the model (called under ``nnx.eval_shape``: no random initialisation).
      tensors: ``{HF key: array}`` (``read_checkpoint``: memory-mapped).
      key_map: the architecture's ``KeyMap``.
      loader: the public function's name, which starts every message.
      note: appended to every message (the model type and the mapped config).
      mesh: None (every leaf on the default device) or a ``jax.sharding.Mesh``: each leaf is
        created directly in its ``NamedSharding`` (``sharding.partition_spec``) from the
        slices of the memory-mapped tensor its devices hold, and the parameters carry their
        spec as ``out_sharding`` metadata.

    Returns:
      The filled model.

    Raises:
      ValueError: listing the tensors missing from the checkpoint, those of the wrong shape,
        or the checkpoint tensors the model does not use (outside ``key_map.ignore``); for a
        ``mesh`` that is not a ``Mesh``.
    """
    if mesh is not None:
        mesh = check_mesh(mesh, loader)
    names, leaves, merge = abstract_leaves(build)
    found, used, missing, wrong = [], set(), [], []
    for name, leaf in zip(names, leaves, strict=True):
        options = tuple(key_map.candidates(name))
        key = next((k for k in options if k in tensors), None)
        if key is None:
            missing.append(options[0])
            continue
        used.add(key)
        array = tensors[key]
        want = tuple(key_map.hf_shape(name, tuple(leaf.shape)))
        if tuple(array.shape) != want:
            wrong.append(f"{key}: {list(array.shape)}, expected {list(want)}")
            continue
        found.append((name, key, leaf))
    if missing:
        raise ValueError(f"{loader}: tensors missing from the checkpoint: {missing}{note}")
    if wrong:
        raise ValueError(f"{loader}: tensors of the wrong shape: {wrong}{note}")
    unused = sorted(k for k in set(tensors) - used if not key_map.ignore(k))
    if unused:
        raise ValueError(f"{loader}: checkpoint tensors the model does not use: {unused}{note}")
    values = [
        place(from_torch(name, tensors[key], tuple(leaf.shape)), np.dtype(leaf.dtype), mesh, name)
        for name, key, leaf in found
    ]
    model = merge(values)
    if mesh is not None:
        annotate(model, mesh)
    return model
