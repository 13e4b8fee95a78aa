"""Hugging Face checkpoint import for the ViT: a NumPy safetensors reader and weight mapping.

``load_vit(path)`` reads a directory written by ``transformers``' ``save_pretrained``
(``config.json`` + ``model.safetensors`` or a sharded ``model.safetensors.index.json``) without
torch, ``transformers`` or the ``safetensors`` package, and returns a ``ViT`` whose outputs match
the PyTorch model's (logits, every hidden state, attention probabilities).

Supported ``model_type``: ``"vit"`` (``ViTModel`` with or without pooler,
``ViTForImageClassification``), ``"deit"`` (``DeiTModel``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher``), ``"clip_vision_model"`` (``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` minus its projection) and ``"clip"`` (the image tower of a
``CLIPModel``; the text side and the projections are ignored). Both the hub layout
(``encoder.layer.{i}.attention.attention.query``) and the transformers>=5 in-memory layout
(``layers.{i}.attention.q_proj``, written by ``save_pretrained(save_original_format=False)``)
load, with or without the base-model prefix (``vit.``, ``deit.``, ``vision_model.``).

References: the safetensors format, https://github.com/huggingface/safetensors (README,
"Format"); transformers' ``modeling_vit.py``, ``modeling_deit.py``, ``modeling_clip.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.checkpoint import read_checkpoint
from pruneax.models.vit._model import ViT, ViTConfig
from pruneax.weights import leaf_names

SUPPORTED_MODEL_TYPES = ("vit", "deit", "clip_vision_model", "clip")

# HF ``hidden_act`` -> ``ViTConfig.hidden_act`` (gelu_new / gelu_fast / gelu_pytorch_tanh are
# all the tanh approximation).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}

# Defaults of transformers' config classes, for config.json files that leave keys out.
_VIT_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    image_size=224,
    patch_size=16,
    num_channels=3,
    qkv_bias=True,
    pooler_act="tanh",
)
_CLIP_VISION_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    image_size=224,
    patch_size=32,
    num_channels=3,
)

# ------------------------------------------------------------------------------ config mapping


def _hw(value: Any, name: str) -> int | tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"load_vit: config {name} must be an int or [h, w]; got {value!r}")
        return (int(value[0]), int(value[1])) if value[0] != value[1] else int(value[0])
    return int(value)


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"load_vit: config hidden_act {name!r} is not supported; expected one of "
            f"{sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _num_labels(cfg: dict[str, Any]) -> int:
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return 2  # transformers' PretrainedConfig default


def _patch(cfg: dict[str, Any]) -> int:
    p = _hw(cfg["patch_size"], "patch_size")
    if not isinstance(p, int):
        raise ValueError(f"load_vit: only square patches are supported; got patch_size {p}")
    return p


# Module paths: ours -> HF candidates (the first one present is used). ``{i}`` = block index.
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
_PARAM_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias"}


class _Spec:
    """What ``load_vit`` needs for one checkpoint: the config and the name mapping."""

    def __init__(
        self,
        config: ViTConfig,
        block: dict[str, tuple[str, ...]],
        top: dict[str, tuple[str, ...]],
        prefix: str,
        heads: dict[str, str],
        vision: Callable[[str], bool],
    ):
        self.config = config
        self.block = block
        self.top = top
        self.prefix = prefix  # base-model prefix of the backbone keys ("vit.", "" ...)
        self.heads = heads  # our module -> HF module (no prefix): "head" -> "classifier"
        self.vision = vision  # keys that must all be used

    def candidates(self, name: str) -> tuple[str, ...]:
        """HF key candidates of our leaf ``name`` (``"blocks/3/attn/query/kernel"``)."""
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


def _arch(cfg: dict[str, Any]) -> str | None:
    archs = cfg.get("architectures") or []
    return archs[0] if archs else None


def _base_prefix(keys: set[str], prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in keys) else ""


def _vit_spec(cfg: dict[str, Any], keys: set[str], model_type: str) -> _Spec:
    c = {**_VIT_DEFAULTS, **cfg}
    deit = model_type == "deit"
    prefix = _base_prefix(keys, f"{model_type}.")
    arch = _arch(cfg) or ""
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
        size = c.get("pooler_output_size", c["hidden_size"])
        if size != c["hidden_size"] or c["pooler_act"] != "tanh":
            raise ValueError(
                f"load_vit: only a tanh pooler of width hidden_size is supported; got "
                f"pooler_output_size={size}, pooler_act={c['pooler_act']!r}"
            )
    config = ViTConfig(
        image_size=_hw(c["image_size"], "image_size"),
        patch_size=_patch(c),
        num_channels=int(c["num_channels"]),
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp_dim=int(c["intermediate_size"]),
        num_classes=num_labels if kind != "none" else 0,
        class_token=True,
        distillation_token=deit,
        pos_embed="learned",
        final_norm="all",
        pool="cls_dist" if kind == "teacher" else "cls",
        hidden_act=_activation(c["hidden_act"]),
        layer_norm_eps=float(c["layer_norm_eps"]),
        qkv_bias=bool(c["qkv_bias"]),
        pooler=pooler,
        patch_bias=True,
    )
    return _Spec(config, _VIT_BLOCK, _VIT_TOP, prefix, heads, vision=lambda k: True)


def _clip_spec(cfg: dict[str, Any], keys: set[str], model_type: str) -> _Spec:
    if model_type == "clip":
        vision_cfg = cfg.get("vision_config")
        if not isinstance(vision_cfg, dict):
            raise ValueError("load_vit: a 'clip' config.json must have a 'vision_config' object")
        prefix = "vision_model."
        vision = lambda k: k.startswith(prefix)
    else:
        vision_cfg = cfg
        prefix = _base_prefix(keys, "vision_model.")
        # CLIPVisionModelWithProjection's projection is not part of the ViT.
        vision = lambda k: not k.startswith("visual_projection.")
    c = {**_CLIP_VISION_DEFAULTS, **vision_cfg}
    config = ViTConfig(
        image_size=_hw(c["image_size"], "image_size"),
        patch_size=_patch(c),
        num_channels=int(c["num_channels"]),
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp_dim=int(c["intermediate_size"]),
        num_classes=0,
        class_token=True,
        pos_embed="learned",
        pre_norm=True,
        final_norm="pooled",
        pool="cls",
        hidden_act=_activation(c["hidden_act"]),
        layer_norm_eps=float(c["layer_norm_eps"]),
        qkv_bias=True,
        patch_bias=False,
    )
    return _Spec(config, _CLIP_BLOCK, _CLIP_TOP, prefix, {}, vision=vision)


def _hf_shape(name: str, shape: tuple[int, ...], clip: bool) -> tuple[int, ...]:
    """The PyTorch shape of the tensor that fills our leaf ``name`` of shape ``shape``."""
    if name.endswith("kernel"):
        return shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    if clip and name == "cls_token":
        return shape[2:]  # class_embedding [D]
    if clip and name == "pos_embed":
        return shape[1:]  # position_embedding.weight [N + 1, D]
    return shape


def _convert(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("kernel"):
        array = array.T if array.ndim == 2 else array.transpose(2, 3, 1, 0)
    return array.reshape(shape)


# ------------------------------------------------------------------------------ load_vit


def load_vit(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> ViT:
    """A ``ViT`` with the weights of a Hugging Face ViT / DeiT / CLIP checkpoint directory.

    Reads ``config.json`` and the safetensors weights of a ``save_pretrained`` directory. The
    head comes from the config's ``architectures`` (or, without one, from the keys present):
    ``classifier`` -> ``head`` (ViT / DeiT image classification), ``cls_classifier`` +
    ``distillation_classifier`` -> ``head`` + ``head_dist`` with ``pool="cls_dist"`` (DeiT with
    teacher); ``num_classes`` from ``num_labels`` / ``id2label``; ``pooler.dense`` (ViT / DeiT,
    when present) -> ``pooler`` (``ViTOutput.pooler_output``). CLIP gives ``pre_norm=True``,
    ``final_norm="pooled"`` (HF's ``pooler_output`` is ``ViTOutput.pooled``), no patch bias and
    no head. PyTorch layouts are converted: Linear ``[out, in]`` -> kernel ``[in, out]``,
    Conv2d ``[D, C, p, p]`` -> ``[p, p, C, D]``. The returned ``model.config`` tells the token
    layout (``num_prefix``, ``grid``).

    Inputs must be preprocessed as for the PyTorch model (resize, normalize), then passed NHWC:
    ``pixel_values.transpose(0, 2, 3, 1)``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or the sharded
        ``model.safetensors.index.json``).
      dtype: computation dtype of the returned model.
      param_dtype: parameter dtype (the stored weights are cast to it).

    Returns:
      The ``ViT``.

    Raises:
      FileNotFoundError: if the directory, ``config.json`` or the safetensors weights are
        missing (with a hint when only ``pytorch_model.bin`` is there).
      ValueError: for a corrupt file, an unsupported ``model_type`` / activation / pooler, a
        missing tensor or one of the wrong shape, or checkpoint weights of the vision model
        that the ViT would not use.

    References: Dosovitskiy et al., ICLR 2021; Touvron et al. (DeiT), ICML 2021; Radford et
      al. (CLIP), ICML 2021; transformers' ``modeling_vit.py`` / ``modeling_deit.py`` /
      ``modeling_clip.py``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_vit: {str(root)!r} is not a directory")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"load_vit: no config.json in {str(root)!r}; expected a transformers "
            "save_pretrained directory (config.json + model.safetensors)"
        )
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"load_vit: {str(config_file)!r} is not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"load_vit: model_type {model_type!r} in {str(config_file)!r} is not supported; "
            f"supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    tensors = read_checkpoint(root)
    keys = set(tensors)
    clip = model_type.startswith("clip")
    spec = (_clip_spec if clip else _vit_spec)(cfg, keys, model_type)

    abstract = nnx.eval_shape(
        lambda: ViT(spec.config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    graphdef, state = nnx.split(abstract)
    leaves = jax.tree.leaves(state)
    values, used, missing, wrong = [], set(), [], []
    for name, leaf in zip(leaf_names(state), leaves, strict=True):
        options = spec.candidates(name)
        hf_name = next((k for k in options if k in tensors), None)
        if hf_name is None:
            missing.append(options[0])
            continue
        used.add(hf_name)
        array = tensors[hf_name]
        want = _hf_shape(name, tuple(leaf.shape), clip)
        if tuple(array.shape) != want:
            wrong.append(f"{hf_name}: {list(array.shape)}, expected {list(want)}")
            continue
        converted = _convert(name, np.asarray(array), tuple(leaf.shape))
        values.append(jnp.asarray(converted.astype(np.dtype(leaf.dtype))))
    config_note = (
        f" (model_type {model_type!r}, architectures {cfg.get('architectures')}, as {spec.config})"
    )
    if missing:
        raise ValueError(f"load_vit: tensors missing from the checkpoint: {missing}{config_note}")
    if wrong:
        raise ValueError(f"load_vit: tensors of the wrong shape: {wrong}{config_note}")
    unused = sorted(k for k in keys - used if spec.vision(k) and not k.endswith("position_ids"))
    if unused:
        raise ValueError(
            f"load_vit: checkpoint tensors the ViT does not use: {unused}{config_note}"
        )
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), values))
