"""Hugging Face checkpoint import for the VLM: ``load_vlm`` and the pieces other VLM loaders
reuse (sub-config mappings, key prefixes, the key map).

``load_vlm(path)`` reads a ``save_pretrained`` directory (``config.json`` + safetensors) with
the shared loader (``_shared/loader.py``; no torch, ``transformers`` or ``safetensors``
package) and dispatches on ``model_type`` through ``VLM_LOADERS`` (``"llava"`` here,
``"paligemma"`` in ``_hf_paligemma.py``; other modules add their own entries). Each loader
maps the ``vision_config`` with the ViT loader's rules (``vision_spec``), the ``text_config``
with the LLM loader's (``text_config``: the same ``ConfigRules`` allowlist, so unknown
non-default attributes are refused), and fills a ``VLM`` through ``vlm_key_map``, which
accepts both the transformers 5 layout (``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``) and the 4.x one
(``vision_tower.vision_model.*``, ``multi_modal_projector.*``, ``language_model.model.*``,
``language_model.lm_head.*``; transformers 5's default ``save_pretrained`` writes it too,
without ``vision_model.``).

References: transformers' ``models/llava/{configuration,modeling}_llava.py`` and
``conversion_mapping.py`` (the 4.x -> 5 key renames).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models._shared.dtypes import resolve_dtypes
from pruneax.models._shared.loader import (
    ConfigRules,
    KeyMap,
    check_config,
    fill,
    read_config,
    torch_shape,
)
from pruneax.models.llama import _hf as llm_hf
from pruneax.models.llama._model import LlamaConfig
from pruneax.models.vit import _hf as vit_hf
from pruneax.models.vlm._config import VLMConfig
from pruneax.models.vlm._model import VLM

# Checkpoint key prefixes of each part, transformers 5 layout first, then 4.x.
LLAVA_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "vision": ("model.vision_tower.", "vision_tower."),
    "projector": ("model.multi_modal_projector.", "multi_modal_projector."),
    "llm": ("model.language_model.", "language_model.model."),
    "lm_head": ("lm_head.", "language_model.lm_head."),
}
# our projector module -> transformers' (LLaVA's mlp2x_gelu)
LLAVA_PROJECTOR = {"linear_1": "linear_1", "linear_2": "linear_2"}

# transformers' LlavaConfig (v5) defaults. Harmless: image_seq_length (the processor's count of
# placeholders per image), ignore_index (loss only) and v4's top-level vocab_size / pad_token_id
# duplicates of the text config.
LLAVA_RULES = ConfigRules(
    "LlavaConfig",
    dict(
        vision_config=None,
        text_config=None,
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    ),
    handled=frozenset(
        "vision_config text_config image_token_index image_token_id projector_hidden_act "
        "vision_feature_select_strategy vision_feature_layer multimodal_projector_bias "
        "tie_word_embeddings".split()
    ),
    harmless=frozenset({"image_seq_length", "ignore_index", "vocab_size"}),
)
# LlavaConfig's vision_config when config.json has none (its SubConfigSpec init_kwargs).
LLAVA_VISION = dict(
    model_type="clip_vision_model",
    intermediate_size=4096,
    hidden_size=1024,
    patch_size=14,
    image_size=336,
    num_hidden_layers=24,
    num_attention_heads=16,
    vocab_size=32000,
    projection_dim=768,
)
_PROJECTOR_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def sub_config(cfg: Mapping[str, Any], name: str, default: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg[name]`` (a sub-config object), or ``default`` when absent / null.

    Raises:
      ValueError: if it is there but not a JSON object.
    """
    sub = cfg.get(name)
    if sub is None:
        return dict(default)
    if not isinstance(sub, dict):
        raise ValueError(f"load_vlm: config.json {name} must be an object; got {sub!r}")
    return dict(sub)


def vision_spec(vision_cfg: dict[str, Any], default_type: str = "clip_vision_model") -> Any:
    """The ViT loader's spec (``ViTConfig`` + key names without prefix) of a ``vision_config``.

    ``model_type`` ``"clip_vision_model"`` (``CLIPVisionModel``) or, when the ViT loader has it,
    ``"siglip_vision_model"``; attributes checked with the ViT loader's ``ConfigRules``.

    Raises:
      ValueError: for another model type or a refused attribute.
    """
    vtype = vision_cfg.get("model_type", default_type)
    where = "config.json vision_config"
    if vtype == "clip_vision_model":
        cfg = {k: v for k, v in vision_cfg.items() if k != "vocab_size"}  # LLaVA's init kwarg
        return vit_hf._clip_spec(cfg, set(), "clip_vision_model")
    siglip = getattr(vit_hf, "_siglip_spec", None)
    if vtype == "siglip_vision_model" and siglip is not None:
        return siglip(vision_cfg, set(), "siglip_vision_model")
    raise ValueError(
        f"load_vlm: {where} model_type {vtype!r} is not supported; supported: "
        f"['clip_vision_model'{', siglip_vision_model' if siglip else ''}]"
    )


def text_config(
    text_cfg: dict[str, Any],
    default_type: str = "llama",
    *,
    tie: bool = False,
    drop: tuple[str, ...] = (),
) -> LlamaConfig:
    """The ``LlamaConfig`` of a ``text_config`` with the LLM loader's rules (``load_llm``).

    Args:
      text_cfg: the sub-config (``model_type`` defaults to ``default_type``).
      default_type: transformers' default text model type of the VLM class.
      tie: the VLM config's own ``tie_word_embeddings`` (transformers ties when either is set).
      drop: attributes the VLM handles itself (left out before the LLM rules see them).

    Raises:
      ValueError: for an unsupported model type or a refused attribute, naming it.
    """
    ttype = text_cfg.get("model_type", default_type)
    if ttype not in llm_hf.SUPPORTED_LLM_TYPES:
        raise ValueError(
            f"load_vlm: config.json text_config model_type {ttype!r} is not supported; "
            f"supported: {list(llm_hf.SUPPORTED_LLM_TYPES)}"
        )
    cfg = {k: v for k, v in text_cfg.items() if k not in drop}
    if tie:
        cfg["tie_word_embeddings"] = True
    cfg.pop("architectures", None)
    try:
        check_config(cfg, llm_hf._RULES[ttype], "load_vlm", "config.json text_config")
        return llm_hf._config(cfg, ttype)
    except ValueError as e:
        msg = str(e)
        msg = msg.removeprefix("load_llm: ").removeprefix("load_vlm: ")
        raise ValueError(f"load_vlm: text_config: {msg}") from None


def vlm_key_map(
    spec: Any,
    *,
    prefixes: Mapping[str, tuple[str, ...]] = LLAVA_PREFIXES,
    projector: Mapping[str, str] = LLAVA_PROJECTOR,
    tied: bool = False,
) -> KeyMap:
    """The loader's ``KeyMap`` of a ``VLM``: leaves ``vision/*`` (through the ViT loader's
    ``spec``, with or without ``vision_model.`` after the prefix), ``projector/*`` and
    ``llm/*`` (through the LLM loader's names) under each of ``prefixes``' alternatives.

    Args:
      spec: ``vision_spec``'s result.
      prefixes: part -> key prefixes (``"vision"``, ``"projector"``, ``"llm"``, ``"lm_head"``).
      projector: our projector module -> the checkpoint's.
      tied: the LM head is tied (its stored copy, if any, stays unused).

    Returns:
      The ``KeyMap``.
    """

    def candidates(name: str) -> tuple[str, ...]:
        part, rest = name.split("/", 1)
        if part == "vision":
            return tuple(
                pre + mid + c
                for c in spec.candidates(rest)
                for pre in prefixes["vision"]
                for mid in ("", "vision_model.")
            )
        if part == "projector":
            module, param = rest.split("/")
            leaf = f"{projector[module]}.{'weight' if param == 'kernel' else 'bias'}"
            return tuple(pre + leaf for pre in prefixes["projector"])
        key = llm_hf._hf_name(rest)
        if key.startswith("lm_head."):
            return tuple(pre + key.removeprefix("lm_head.") for pre in prefixes["lm_head"])
        return tuple(pre + key.removeprefix("model.") for pre in prefixes["llm"])

    def hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if name.startswith("vision/"):
            return tuple(spec.hf_shape(name.split("/", 1)[1], shape))
        return torch_shape(name, shape)

    vision = prefixes["vision"]

    def ignore(key: str) -> bool:
        if key.endswith(("position_ids", "rotary_emb.inv_freq")):
            return True
        if tied and key.startswith(tuple(prefixes["lm_head"])):
            return True
        for pre in vision:  # parts of the vision checkpoint the ViT does not use
            if key.startswith(pre):
                rest = key.removeprefix(pre).removeprefix("vision_model.")
                return not spec.vision(rest)
        return False

    return KeyMap(candidates=candidates, hf_shape=hf_shape, ignore=ignore)


def llava_config(
    cfg: dict[str, Any], rules: ConfigRules = LLAVA_RULES, where: str = "load_vlm"
) -> tuple[VLMConfig, Any, dict[str, Any]]:
    """The ``VLMConfig`` of a LLaVA-family ``config.json`` (LLaVA-1.5, and LLaVA-NeXT with its
    own ``rules``), the vision tower's loader spec, and the config completed with defaults.

    Raises:
      ValueError: starting with ``where``, for a list ``vision_feature_layer``, a refused
        attribute, an unsupported projector activation or feature strategy.
    """
    layer = cfg.get("vision_feature_layer", -2)
    if isinstance(layer, list):
        raise ValueError(
            f"{where}: vision_feature_layer={layer} (several hidden states concatenated) is "
            "not supported; only a single int layer"
        )
    check_config(cfg, rules, where)
    c = rules.complete(cfg)
    spec = vision_spec(sub_config(cfg, "vision_config", LLAVA_VISION))
    tie = bool(c["tie_word_embeddings"])
    llm = text_config(sub_config(cfg, "text_config", {}), "llama", tie=tie)
    act = c["projector_hidden_act"]
    if act not in _PROJECTOR_ACTS:
        raise ValueError(
            f"{where}: projector_hidden_act {act!r} is not supported; expected one of "
            f"{sorted(_PROJECTOR_ACTS)}"
        )
    strategy = c["vision_feature_select_strategy"]
    if strategy not in ("default", "full"):
        raise ValueError(
            f"{where}: vision_feature_select_strategy must be 'default' or 'full'; got {strategy!r}"
        )
    try:
        config = VLMConfig(
            vision=spec.config,
            llm=llm,
            vision_layer=layer,
            feature_select=strategy,
            projector="mlp2x_gelu",
            projector_act=_PROJECTOR_ACTS[act],
            projector_bias=bool(c["multimodal_projector_bias"]),
            image_token_id=cfg.get("image_token_id", c["image_token_index"]),
        )
    except ValueError as e:
        raise ValueError(f"{where}: unsupported config.json ({e})") from None
    return config, spec, c


def _load_llava(
    path: Any, cfg: dict[str, Any], dtype: Any, param_dtype: Any, mesh: Any = None
) -> VLM:
    config, spec, _ = llava_config(cfg)
    key_map = vlm_key_map(spec, tied=config.llm.tie_word_embeddings)
    return build_vlm(path, config, key_map, dtype, param_dtype, mesh)


def build_vlm(
    path: Any,
    config: Any,
    key_map: KeyMap,
    dtype: Any,
    param_dtype: Any,
    mesh: Any = None,
    *,
    model: Callable[..., Any] = VLM,
    loader: str = "load_vlm",
) -> Any:
    """A ``model(config)`` (default ``VLM``) filled from the checkpoint at ``path`` through
    ``key_map``: ``dtype="auto"`` resolved from the tensors, placed on ``mesh`` if given.

    Raises:
      ValueError: for bad dtypes, missing, wrong-shape or unused tensors (see ``fill``).
    """
    tensors = read_checkpoint(path)
    dtype, param_dtype = resolve_dtypes(dtype, param_dtype, tensors, loader)
    return fill(
        lambda: model(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        tensors,
        key_map,
        loader=loader,
        mesh=mesh,
        note=f" (as {config})",
    )


# model_type -> loader(directory, config dict, dtype, param_dtype, mesh) -> the model (a VLM,
# or another VLM-like module such as LLaVA-NeXT's); other modules add their entries on import.
VLM_LOADERS: dict[str, Callable[..., Any]] = {"llava": _load_llava}


def load_vlm(
    path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
) -> Any:
    """A ``VLM`` with the weights of a Hugging Face vision-language checkpoint directory.

    ``model_type`` ``"llava"`` (``LlavaForConditionalGeneration``: CLIP vision tower,
    ``mlp2x_gelu`` projector, Llama / Qwen2 text model), ``"paligemma"`` (SigLIP tower, linear
    projector, Gemma with the prefix-LM mask) and any other key of ``VLM_LOADERS``. LLaVA's
    config keys: ``vision_config`` (``clip_vision_model``, the ViT loader's rules),
    ``text_config`` (the LLM loader's rules), ``vision_feature_layer`` (an int; a list is
    refused), ``vision_feature_select_strategy`` (``"default"`` drops CLS, ``"full"`` keeps
    it), ``projector_hidden_act`` (``"gelu"``, or a tanh GELU),
    ``multimodal_projector_bias``, ``image_token_index`` / ``image_token_id``
    (``config.image_token_id``), ``tie_word_embeddings``; ``image_seq_length`` is the
    processor's and not read. Every other attribute must keep transformers' default.
    Weights in the transformers 5 or 4.x layout (see the module docstring).

    Inputs: images preprocessed as for the PyTorch model, passed NHWC
    (``pixel_values.transpose(0, 2, 3, 1)``); the prompt split around the image placeholder
    into ``prefix_ids`` and ``question_ids`` (see ``VLM.__call__``).

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index),
        or a Hugging Face hub id (``org/name``; needs ``huggingface_hub``).
      dtype: computation dtype of the returned model; ``"auto"`` (default) keeps the
        checkpoint's (a bfloat16 checkpoint stays bfloat16).
      param_dtype: parameter dtype (stored weights are cast to it); None means ``dtype``.
      mesh: None, or a ``jax.sharding.Mesh`` to load onto: every parameter is created in its
        ``NamedSharding`` (``pruneax.models.partition_spec``) from the slices of the
        memory-mapped checkpoint its devices hold.

    Returns:
      The ``VLM`` (``model.config`` holds the mapped ``VLMConfig``), or for ``"llava_next"`` a
      ``LlavaNext``.

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the weights are missing.
      ValueError: for an unsupported ``model_type``, a refused config attribute (named), a
        missing / wrong-shape tensor or a checkpoint tensor the model would not use.

    Example:
      >>> import json, pathlib, tempfile
      >>> from pruneax.models.vlm import load_vlm
      >>> path = pathlib.Path(tempfile.mkdtemp())
      >>> config = {"model_type": "llava", "vision_feature_layer": [-2, -5]}
      >>> _ = (path / "config.json").write_text(json.dumps(config))
      >>> load_vlm(path)
      Traceback (most recent call last):
      ValueError: load_vlm: vision_feature_layer=[-2, -5] (several hidden states concatenated) ...

    References: Liu et al., LLaVA-1.5, CVPR 2024 (arXiv:2310.03744); Beyer et al.,
      "PaliGemma", 2024 (arXiv:2407.07726); transformers' ``modeling_llava.py`` /
      ``modeling_paligemma.py``.
    """
    root, cfg, model_type = read_config(path, "load_vlm", tuple(VLM_LOADERS))
    return VLM_LOADERS[model_type](root, cfg, dtype, param_dtype, mesh)
