"""Hugging Face checkpoint import for the ViT: config rules, config mapping and key map.

``load_vit(path)`` reads a ``save_pretrained`` directory with the shared loader
(``_shared/loader.py``; no torch, ``transformers`` or ``safetensors`` package) and returns a
``ViT`` whose outputs match the PyTorch model's (logits, hidden states, attention probabilities).

Supported ``model_type``: ``"vit"`` (``ViTModel`` with or without pooler,
``ViTForImageClassification``), ``"deit"`` (``DeiTModel``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher``), ``"clip_vision_model"`` (``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` minus its projection) and ``"clip"`` (the image tower of a
``CLIPModel``; the text side and the projections are ignored), ``"siglip_vision_model"``
(``SiglipVisionModel``, with or without its MAP head) and ``"siglip"`` (the image tower of a
``SiglipModel``, text tower ignored; or ``SiglipForImageClassification`` with its classifier).
Both the hub layout
(``encoder.layer.{i}.attention.attention.query``) and the transformers>=5 in-memory layout
(``layers.{i}.attention.q_proj``, written by ``save_pretrained(save_original_format=False)``)
load, with or without the base-model prefix (``vit.``, ``deit.``, ``vision_model.``).

References: transformers' ``modeling_vit.py``, ``modeling_deit.py``, ``modeling_clip.py``,
``modeling_siglip.py`` and their ``configuration_*.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models._shared.dtypes import resolve_dtypes
from pruneax.models._shared.loader import (
    KeyMap,
    check_config,
    fill,
    read_config,
    torch_shape,
)
from pruneax.models.vit._hf_config import (
    _CLIP_RULES,
    _CLIP_VISION_RULES,
    _SIGLIP_RULES,
    _SIGLIP_VISION_RULES,
    _VIT_RULES,
    SUPPORTED_MODEL_TYPES,
    _activation,
    _hw,
    _num_labels,
    _patch,
)
from pruneax.models.vit._model import ViT, ViTConfig

_VIT_BLOCK = {
    "norm1": ("encoder.layer.{i}.layernorm_before", "layers.{i}.layernorm_before"),
    "attn/query": ("encoder.layer.{i}.attention.attention.query", "layers.{i}.attention.q_proj"),
    "attn/key": ("encoder.layer.{i}.attention.attention.key", "layers.{i}.attention.k_proj"),
    "attn/value": ("encoder.layer.{i}.attention.attention.value", "layers.{i}.attention.v_proj"),
    "attn/out": ("encoder.layer.{i}.attention.output.dense", "layers.{i}.attention.o_proj"),
    "norm2": ("encoder.layer.{i}.layernorm_after", "layers.{i}.layernorm_after"),
    "mlp/fc1": ("encoder.layer.{i}.intermediate.dense", "layers.{i}.mlp.fc1"),
    "mlp/fc2": ("encoder.layer.{i}.output.dense", "layers.{i}.mlp.fc2"),
}
_VIT_TOP = {
    "cls_token": ("embeddings.cls_token",),
    "dist_token": ("embeddings.distillation_token",),
    "pos_embed": ("embeddings.position_embeddings",),
    "patch_embed": ("embeddings.patch_embeddings.projection",),
    "norm": ("layernorm",),
    "pooler": ("pooler.dense",),
}
_CLIP_BLOCK = {
    "norm1": ("encoder.layers.{i}.layer_norm1",),
    "attn/query": ("encoder.layers.{i}.self_attn.q_proj",),
    "attn/key": ("encoder.layers.{i}.self_attn.k_proj",),
    "attn/value": ("encoder.layers.{i}.self_attn.v_proj",),
    "attn/out": ("encoder.layers.{i}.self_attn.out_proj",),
    "norm2": ("encoder.layers.{i}.layer_norm2",),
    "mlp/fc1": ("encoder.layers.{i}.mlp.fc1",),
    "mlp/fc2": ("encoder.layers.{i}.mlp.fc2",),
}
_CLIP_TOP = {
    "cls_token": ("embeddings.class_embedding",),
    "pos_embed": ("embeddings.position_embedding.weight",),
    "patch_embed": ("embeddings.patch_embedding",),
    "pre_norm": ("pre_layrnorm",),
    "norm": ("post_layernorm",),
}
_SIGLIP_TOP = {
    "pos_embed": ("embeddings.position_embedding.weight",),
    "patch_embed": ("embeddings.patch_embedding",),
    "norm": ("post_layernorm",),
    "map_head/out": ("head.attention.out_proj",),
    "map_head/norm": ("head.layernorm",),
    "map_head/mlp/fc1": ("head.mlp.fc1",),
    "map_head/mlp/fc2": ("head.mlp.fc2",),
}
# Leaves stored under a key that is not "<module>.<weight|bias>" (no base-model prefix here).
_SIGLIP_EXACT = {
    "map_head/probe": "head.probe",
    "map_head/in_proj/kernel": "head.attention.in_proj_weight",
    "map_head/in_proj/bias": "head.attention.in_proj_bias",
}
_PARAM_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What ``load_vit`` needs for one checkpoint: the config and the name mapping."""

    config: ViTConfig
    block: dict[str, tuple[str, ...]]  # block module -> HF candidates ("{i}" = block index)
    top: dict[str, tuple[str, ...]]  # other modules -> HF candidates
    prefix: str  # base-model prefix of the backbone keys ("vit.", "" ...)
    heads: dict[str, str]  # our module -> HF module (no prefix): "head" -> "classifier"
    vision: Callable[[str], bool]  # the checkpoint keys that must all be used
    unbatched: dict[str, int] = dataclasses.field(default_factory=dict)  # leading axes HF lacks
    exact: dict[str, str] = dataclasses.field(default_factory=dict)  # leaf -> key (no prefix)

    def candidates(self, name: str) -> tuple[str, ...]:
        """HF key candidates of our leaf ``name`` (``"blocks/3/attn/query/kernel"``)."""
        if name in self.exact:
            return (self.prefix + self.exact[name],)
        parts = name.split("/")
        if parts[0] == "blocks":
            i, module, param = parts[1], "/".join(parts[2:-1]), parts[-1]
            mods = tuple(m.format(i=i) for m in self.block[module])
        else:
            module = "/".join(parts[:-1]) if parts[-1] in _PARAM_SUFFIX else name
            param = parts[-1] if parts[-1] in _PARAM_SUFFIX else None
            if module in self.heads:
                return (f"{self.heads[module]}.{_PARAM_SUFFIX[param]}",)
            mods = self.top[module]
        mods = tuple(self.prefix + m for m in mods)
        if param is None:
            return mods
        return tuple(f"{m}.{_PARAM_SUFFIX[param]}" for m in mods)

    def hf_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The PyTorch shape of the tensor that fills our leaf ``name`` of shape ``shape``."""
        if name in self.unbatched:
            return shape[self.unbatched[name] :]
        return torch_shape(name, shape)

    def key_map(self) -> KeyMap:
        """The loader's ``KeyMap``; keys outside the vision model and position-id buffers may
        stay unused."""
        return KeyMap(
            candidates=self.candidates,
            hf_shape=self.hf_shape,
            ignore=lambda k: not self.vision(k) or k.endswith("position_ids"),
        )


def _sizes(c: dict[str, Any]) -> dict[str, Any]:
    """The ``ViTConfig`` fields that ViT, DeiT and CLIP configs name alike."""
    return dict(
        image_size=_hw(c["image_size"], "image_size"),
        patch_size=_patch(c),
        num_channels=int(c["num_channels"]),
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp_dim=int(c["intermediate_size"]),
        hidden_act=_activation(c["hidden_act"]),
        layer_norm_eps=float(c["layer_norm_eps"]),
    )


def _base_prefix(keys: set[str], prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in keys) else ""


def _vit_spec(cfg: dict[str, Any], keys: set[str], model_type: str) -> _Spec:
    rules = _VIT_RULES["DeiTConfig" if model_type == "deit" else "ViTConfig"]
    check_config(cfg, rules, "load_vit")
    c = rules.complete(cfg)
    deit = model_type == "deit"
    prefix = _base_prefix(keys, f"{model_type}.")
    arch = (cfg.get("architectures") or [""])[0]
    num_labels = _num_labels(cfg)
    if arch.endswith("ForImageClassificationWithTeacher"):
        kind = "teacher"
    elif arch.endswith("ForImageClassification"):
        kind = "classifier"
    elif arch.endswith("Model"):
        kind = "none"
    elif deit and {"cls_classifier.weight", "distillation_classifier.weight"} <= keys:
        kind = "teacher"
    elif "classifier.weight" in keys:
        kind = "classifier"
    else:
        kind = "none"
    if num_labels == 0:  # HF's head is then nn.Identity: no weights
        kind = "none"
    heads = {
        "teacher": {"head": "cls_classifier", "head_dist": "distillation_classifier"},
        "classifier": {"head": "classifier"},
        "none": {},
    }[kind]
    # ViTModel / DeiTModel have a pooler unless built with add_pooling_layer=False; a
    # classification checkpoint that carries one (HF ignores it there) gets it too.
    pooler = f"{prefix}pooler.dense.weight" in keys
    if pooler:
        size = c["pooler_output_size"] or c["hidden_size"]
        if size != c["hidden_size"] or c["pooler_act"] != "tanh":
            raise ValueError(
                f"load_vit: only a tanh pooler of width hidden_size is supported; got "
                f"pooler_output_size={size}, pooler_act={c['pooler_act']!r}"
            )
    config = ViTConfig(
        **_sizes(c),
        num_classes=num_labels if kind != "none" else 0,
        class_token=True,
        distillation_token=deit,
        pos_embed="learned",
        final_norm="all",
        pool="cls_dist" if kind == "teacher" else "cls",
        qkv_bias=bool(c["qkv_bias"]),
        pooler=pooler,
        patch_bias=True,
    )
    return _Spec(config, _VIT_BLOCK, _VIT_TOP, prefix, heads, vision=lambda k: True)


def _clip_spec(cfg: dict[str, Any], keys: set[str], model_type: str) -> _Spec:
    if model_type == "clip":
        check_config(cfg, _CLIP_RULES, "load_vit")
        vision_cfg = cfg.get("vision_config")
        if not isinstance(vision_cfg, dict):
            raise ValueError("load_vit: a 'clip' config.json must have a 'vision_config' object")
        vision_cfg = {**vision_cfg, **(cfg.get("vision_config_dict") or {})}
        check_config(vision_cfg, _CLIP_VISION_RULES, "load_vit", "config.json vision_config")
        prefix = "vision_model."
        vision = lambda k: k.startswith(prefix)
    else:
        check_config(cfg, _CLIP_VISION_RULES, "load_vit")
        vision_cfg = cfg
        prefix = _base_prefix(keys, "vision_model.")
        # CLIPVisionModelWithProjection's projection is not part of the ViT.
        vision = lambda k: not k.startswith("visual_projection.")
    c = _CLIP_VISION_RULES.complete(vision_cfg)
    config = ViTConfig(
        **_sizes(c),
        num_classes=0,
        class_token=True,
        pos_embed="learned",
        pre_norm=True,
        final_norm="pooled",
        pool="cls",
        qkv_bias=True,
        patch_bias=False,
    )
    # class_embedding [D] and position_embedding.weight [N + 1, D] fill [1, 1, D], [1, N + 1, D]
    unbatched = {"cls_token": 2, "pos_embed": 1}
    return _Spec(config, _CLIP_BLOCK, _CLIP_TOP, prefix, {}, vision, unbatched)


def _siglip_spec(cfg: dict[str, Any], keys: set[str], model_type: str) -> _Spec:
    heads = {}
    if model_type == "siglip":
        check_config(cfg, _SIGLIP_RULES, "load_vit")
        vision_cfg = cfg.get("vision_config")
        if not isinstance(vision_cfg, dict):
            raise ValueError("load_vit: a 'siglip' config.json must have a 'vision_config' object")
        check_config(vision_cfg, _SIGLIP_VISION_RULES, "load_vit", "config.json vision_config")
        prefix = "vision_model."
        # SiglipForImageClassification: classifier(mean of last_hidden_state) = our pool="mean"
        if "classifier.weight" in keys and _num_labels(cfg) > 0:
            heads = {"head": "classifier"}
        vision = lambda k: k.startswith(prefix) or k in {"classifier.weight", "classifier.bias"}
    else:
        check_config(cfg, _SIGLIP_VISION_RULES, "load_vit")
        vision_cfg = cfg
        prefix = _base_prefix(keys, "vision_model.")  # transformers < 5 wrapped the tower
        vision = lambda k: True
    c = _SIGLIP_VISION_RULES.complete(vision_cfg)
    config = ViTConfig(
        **_sizes(c),
        num_classes=_num_labels(cfg) if heads else 0,
        class_token=False,
        pos_embed="learned",
        final_norm="all",
        pool="mean",
        qkv_bias=True,
        patch_bias=True,
        map_head=bool(c["vision_use_head"]),
    )
    # position_embedding.weight [N, D] fills [1, N, D]
    return _Spec(config, _CLIP_BLOCK, _SIGLIP_TOP, prefix, heads, vision, {"pos_embed": 1},
                 _SIGLIP_EXACT)  # fmt: skip


# ------------------------------------------------------------------------------ load_vit


def load_vit(
    path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
) -> ViT:
    """A ``ViT`` with the weights of a Hugging Face ViT / DeiT / CLIP / SigLIP checkpoint.

    Reads ``config.json`` and the safetensors weights of a ``save_pretrained`` directory. The
    head comes from the config's ``architectures`` (or, without one, from the keys present):
    ``classifier`` -> ``head`` (ViT / DeiT image classification), ``cls_classifier`` +
    ``distillation_classifier`` -> ``head`` + ``head_dist`` with ``pool="cls_dist"`` (DeiT with
    teacher); ``num_classes`` from ``num_labels`` / ``id2label``; ``pooler.dense`` (ViT / DeiT,
    when present) -> ``pooler`` (``ViTOutput.pooler_output``). CLIP gives ``pre_norm=True``,
    ``final_norm="pooled"`` (HF's ``pooler_output`` is ``ViTOutput.pooled``), no patch bias and
    no head. SigLIP gives no CLS token (``class_token=False``, ``num_prefix=0``), a patch bias,
    ``final_norm="all"`` (``post_layernorm``: HF's ``last_hidden_state``), ``pool="mean"`` and,
    when ``vision_use_head`` (default True; PaliGemma's tower has none), ``map_head=True``:
    HF's ``pooler_output`` is ``ViTOutput.pooler_output``; position embeddings are never
    interpolated (HF's ``interpolate_pos_encoding=False`` default). PyTorch layouts are
    converted: Linear ``[out, in]`` -> kernel ``[in, out]``, Conv2d ``[D, C, p, p]`` ->
    ``[p, p, C, D]``. The returned ``model.config`` tells the token
    layout (``num_prefix``, ``grid``).

    Inputs must be preprocessed as for the PyTorch model (resize, normalize), then passed NHWC:
    ``pixel_values.transpose(0, 2, 3, 1)``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded
        ``model.safetensors.index.json``), or a Hugging Face hub id (``org/name``; needs
        ``huggingface_hub``).
      dtype: computation dtype of the returned model; ``"auto"`` (default) keeps the
        checkpoint's (a bfloat16 checkpoint stays bfloat16).
      param_dtype: parameter dtype (the stored weights are cast to it); None means ``dtype``.
      mesh: None, or a ``jax.sharding.Mesh`` to load onto: every parameter is created in its
        ``NamedSharding`` (``pruneax.models.partition_spec``) from the slices of the
        memory-mapped checkpoint its devices hold, and carries the spec as ``out_sharding``
        metadata (``nnx.get_partition_spec``).

    Returns:
      The ``ViT``.

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing (with a hint when only ``pytorch_model.bin`` is there).
      ValueError: for a corrupt file, an unsupported ``model_type`` / activation / pooler, a
        config attribute the loader does not handle that differs from transformers' default
        (or that transformers' config class does not have), a missing tensor or one of the
        wrong shape, or checkpoint weights of the vision model that the ViT would not use.

    Example:
      >>> from pruneax.models.vit import load_vit
      >>> vit = load_vit("downloads/vit-base-patch16-224")  # doctest: +SKIP
      >>> load_vit("no/such/dir")
      Traceback (most recent call last):
      FileNotFoundError: load_vit: 'no/such/dir' is not a directory

    References: Dosovitskiy et al., ICLR 2021; Touvron et al. (DeiT), ICML 2021; Radford et
      al. (CLIP), ICML 2021; Zhai et al. (SigLIP), ICCV 2023; transformers'
      ``modeling_vit.py`` / ``modeling_deit.py`` / ``modeling_clip.py`` /
      ``modeling_siglip.py``.
    """
    root, cfg, model_type = read_config(path, "load_vit", SUPPORTED_MODEL_TYPES)
    tensors = read_checkpoint(root)
    dtype, param_dtype = resolve_dtypes(dtype, param_dtype, tensors, "load_vit")
    family = model_type.split("_")[0]
    make_spec = {"clip": _clip_spec, "siglip": _siglip_spec}.get(family, _vit_spec)
    spec = make_spec(cfg, set(tensors), model_type)
    return fill(
        lambda: ViT(spec.config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        tensors,
        spec.key_map(),
        loader="load_vit",
        mesh=mesh,
        note=(
            f" (model_type {model_type!r}, architectures {cfg.get('architectures')}, "
            f"as {spec.config})"
        ),
    )
