"""Hugging Face checkpoint import for LLaVA-NeXT: ``load_llava_next`` (``model_type``
``"llava_next"``, ``LlavaNextForConditionalGeneration``), also registered in ``VLM_LOADERS``
(``load_vlm`` then returns a ``LlavaNext``).

The config is checked with the shared allowlist (``_shared/loader.py``): the top level against
transformers' ``LlavaNextConfig`` defaults, ``vision_config`` with the ViT loader's rules and
``text_config`` with the LLM loader's (through ``vision_spec`` / ``text_config`` of the VLM
loader, ``_hf.py``). Weights: the VLM loader's key map (transformers 5 layout
``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
``lm_head.*``, or the 4.x one ``vision_tower[.vision_model].*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.*``), plus ``image_newline``
(``model.image_newline`` or ``image_newline``).

References: transformers v5 ``models/llava_next/{configuration,modeling}_llava_next.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pruneax.models._shared.loader import KeyMap, read_config
from pruneax.models.vlm._hf import (
    LLAVA_RULES,
    VLM_LOADERS,
    build_vlm,
    llava_config,
    vlm_key_map,
)
from pruneax.models.vlm._next import LlavaNext
from pruneax.models.vlm._next_config import LlavaNextConfig

# transformers' LlavaNextConfig (v5) defaults: LlavaConfig's plus image_grid_pinpoints (None =
# the five LLaVA-1.6 resolutions); the same harmless attributes (image_seq_length: the NeXT
# processor computes its own count).
_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
_RULES = dataclasses.replace(
    LLAVA_RULES,
    config_class="LlavaNextConfig",
    defaults={**LLAVA_RULES.defaults, "image_grid_pinpoints": None},
    handled=LLAVA_RULES.handled | {"image_grid_pinpoints"},
)


def _config(cfg: dict[str, Any]) -> tuple[LlavaNextConfig, Any]:
    where = "load_llava_next"
    vlm, spec, c = llava_config(cfg, _RULES, where)
    try:
        return LlavaNextConfig(vlm, c["image_grid_pinpoints"] or _DEFAULT_PINPOINTS), spec
    except ValueError as e:
        raise ValueError(f"{where}: unsupported config.json ({e})") from None


def load_llava_next(
    path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
) -> LlavaNext:
    """A ``LlavaNext`` with the weights of a Hugging Face LLaVA-NeXT checkpoint directory.

    ``model_type`` ``"llava_next"`` (``LlavaNextForConditionalGeneration``): a CLIP vision
    tower (``vision_config``, the ViT loader's rules), the ``mlp2x_gelu`` projector, a Llama /
    Qwen2 text model (``text_config``, the LLM loader's rules) and ``image_newline``. Config
    keys read: ``image_grid_pinpoints`` (multiples of the vision image size),
    ``vision_feature_layer`` (an int; a list is refused), ``vision_feature_select_strategy``
    (``"default"`` with CLIP), ``projector_hidden_act``, ``multimodal_projector_bias``,
    ``image_token_index`` / ``image_token_id``, ``tie_word_embeddings``. Every other attribute
    must keep transformers' default.

    Inputs: the ``LlavaNextImageProcessor`` output, ``pixel_values`` [B, tiles, C, H, W]
    transposed to NHWC tiles (``.transpose(0, 1, 3, 4, 2)``), and ``image_sizes`` (static);
    the prompt split around the image placeholders into ``prefix_ids`` / ``question_ids``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded index),
        or a Hugging Face hub id (``org/name``; needs ``huggingface_hub``).
      dtype: computation dtype of the returned model; ``"auto"`` (default) keeps the
        checkpoint's.
      param_dtype: parameter dtype (stored weights are cast to it); None means ``dtype``.
      mesh: None, or a ``jax.sharding.Mesh`` to load onto (as ``load_vlm``).

    Returns:
      The ``LlavaNext`` (``model.config`` holds the mapped ``LlavaNextConfig``).

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the weights are missing.
      ValueError: for another ``model_type``, a refused config attribute (named), a missing /
        wrong-shape tensor or a checkpoint tensor the model would not use.

    Example:
      >>> import json, pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp())
      >>> config = {"model_type": "llava_next", "image_grid_pinpoints": [[300, 600]]}
      >>> _ = (path / "config.json").write_text(json.dumps(config))
      >>> load_llava_next(path)
      Traceback (most recent call last):
      ValueError: load_llava_next: unsupported config.json (LlavaNextConfig: every image_grid_pinpoints side must be a multiple of the vision image size 336; got [(300, 600)])

    References: Liu et al., LLaVA-NeXT, 2024; transformers' ``modeling_llava_next.py``.
    """  # noqa: E501
    root, cfg, _ = read_config(path, "load_llava_next", ("llava_next",))
    return load_llava_next_config(root, cfg, dtype, param_dtype, mesh)


def load_llava_next_config(
    path: Any, cfg: dict[str, Any], dtype: Any, param_dtype: Any, mesh: Any = None
) -> LlavaNext:
    """``load_llava_next`` from an already-read ``config.json`` dict: the signature of the
    ``VLM_LOADERS`` entries (``load_vlm`` dispatches ``"llava_next"`` here).

    Args:
      path: the checkpoint directory.
      cfg: its parsed ``config.json``.
      dtype, param_dtype: computation and parameter dtypes (``"auto"`` / None resolved from
        the tensors).
      mesh: None or the ``Mesh`` to load onto.

    Returns:
      The ``LlavaNext``.

    Raises:
      ValueError: as ``load_llava_next``.

    Example:
      >>> load_llava_next_config(".", {"vision_feature_layer": [-1]}, None, None)
      Traceback (most recent call last):
      ValueError: load_llava_next: vision_feature_layer=[-1] (several hidden states concatenated) is not supported; only a single int layer
    """  # noqa: E501
    config, spec = _config(cfg)
    base = vlm_key_map(spec, tied=config.vlm.llm.tie_word_embeddings)
    newline = ("model.image_newline", "image_newline")

    def candidates(name: str) -> tuple[str, ...]:
        if name == "image_newline":
            return newline
        return tuple(base.candidates(name.removeprefix("vlm/")))

    def hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape if name == "image_newline" else base.hf_shape(name.removeprefix("vlm/"), shape)

    key_map = KeyMap(candidates=candidates, hf_shape=hf_shape, ignore=base.ignore)
    return build_vlm(
        path, config, key_map, dtype, param_dtype, mesh, model=LlavaNext, loader="load_llava_next"
    )


VLM_LOADERS["llava_next"] = load_llava_next_config
