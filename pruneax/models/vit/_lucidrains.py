"""``load_lucidrains_vit``: a ``ViT`` from a PyTorch state dict of lucidrains' ``vit-pytorch``
``ViT`` (the ``PreNorm`` layout: ``transformer.layers.{i}.0.fn.to_qkv``), read without torch.

The layout, as ``vit_pytorch/vit.py`` (``ViT``, ``Attention``, ``FeedForward``, ``PreNorm``)
defines it and ``/work/shared/data/pretrained/vit-mnist-lucidrains/README.md`` documents it:

- ``to_patch_embedding``: ``Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`` then
  ``Linear(p * p * C, D)`` (key ``to_patch_embedding.1``). A linear map of the flattened patch
  is a convolution with kernel = stride = ``p``; the weight ``[D, (p1 p2 c)]`` is reshaped to
  pruneax's conv kernel ``[p1, p2, c, D]`` (no new layer).
- ``cls_token`` [1, 1, D] prepended; ``pos_embedding`` [1, N + 1, D] added to every token.
- per block: ``x + to_out(attn(LayerNorm(x)))`` with ``to_qkv`` ``Linear(D, 3 H hd)`` without
  bias (query, key, value chunks in that order; heads major within each), scale ``hd^-0.5``;
  then ``x + net(LayerNorm(x))``, ``net`` = ``Linear(D, M)``, activation, dropout,
  ``Linear(M, D)`` (keys ``net.0`` / ``net.3``). ``hd * H`` may differ from ``D``
  (``ViTConfig.attention_head_dim``).
- ``mlp_head``: ``LayerNorm(D)`` (``.0``) then ``Linear(D, K)`` (``.1``) on the CLS token: the
  ViT's ``final_norm="pooled"``, ``pool="cls"``. LayerNorm epsilon 1e-5 (PyTorch's default).

Written here in NumPy / JAX idiom from that description; no code is copied.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from flax import nnx

from pruneax.models._shared.dtypes import resolve_dtypes
from pruneax.models._shared.loader import KeyMap, fill
from pruneax.models._shared.torch_zip import read_torch_state_dict
from pruneax.models.vit._config import ViTConfig
from pruneax.models.vit._model import ViT

_LOADER = "load_lucidrains_vit"
_BLOCK = "transformer.layers.{i}."
# lucidrains key (per block, after the prefix) -> pruneax leaf (per block)
_BLOCK_KEYS = {
    "0.norm.weight": "norm1/scale",
    "0.norm.bias": "norm1/bias",
    "0.fn.to_out.0.weight": "attn/out/kernel",
    "0.fn.to_out.0.bias": "attn/out/bias",
    "1.norm.weight": "norm2/scale",
    "1.norm.bias": "norm2/bias",
    "1.fn.net.0.weight": "mlp/fc1/kernel",
    "1.fn.net.0.bias": "mlp/fc1/bias",
    "1.fn.net.3.weight": "mlp/fc2/kernel",
    "1.fn.net.3.bias": "mlp/fc2/bias",
}
_TOP_KEYS = {
    "to_patch_embedding.1.bias": "patch_embed/bias",
    "cls_token": "cls_token",
    "pos_embedding": "pos_embed",
    "mlp_head.0.weight": "norm/scale",
    "mlp_head.0.bias": "norm/bias",
    "mlp_head.1.weight": "head/kernel",
    "mlp_head.1.bias": "head/bias",
}


def _get(tensors: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in tensors:
        raise ValueError(f"{_LOADER}: tensor {key!r} is missing from the state dict")
    return tensors[key]


def _lucidrains_config(
    tensors: dict[str, np.ndarray],
    num_heads: int,
    image_size: Any,
    patch_size: int,
    num_channels: int,
    hidden_act: str,
) -> ViTConfig:
    """The ``ViTConfig`` the tensors' shapes give (every size but the arguments')."""
    cls = _get(tensors, "cls_token")
    if cls.ndim != 3 or cls.shape[:2] != (1, 1):
        raise ValueError(f"{_LOADER}: cls_token must be [1, 1, D]; got {list(cls.shape)}")
    d = int(cls.shape[-1])
    found = (re.match(r"transformer\.layers\.(\d+)\.", k) for k in tensors)
    layers = sorted({int(m.group(1)) for m in found if m})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(
            f"{_LOADER}: expected transformer.layers.0 ... L-1; found block indices {layers}"
        )
    qkv = _get(tensors, "transformer.layers.0.0.fn.to_qkv.weight")
    if qkv.ndim != 2 or qkv.shape[0] % (3 * num_heads):
        raise ValueError(
            f"{_LOADER}: transformer.layers.0.0.fn.to_qkv.weight must be [3 * num_heads * "
            f"head_dim, D] with num_heads={num_heads}; got {list(qkv.shape)}"
        )
    head_dim = qkv.shape[0] // (3 * num_heads)
    mlp = _get(tensors, "transformer.layers.0.1.fn.net.0.weight")
    head = _get(tensors, "mlp_head.1.weight")
    default_hd = d // num_heads if d % num_heads == 0 else None
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=d,
        num_layers=len(layers),
        num_heads=num_heads,
        mlp_dim=int(mlp.shape[0]),
        num_classes=int(head.shape[0]),
        class_token=True,
        pos_embed="learned",
        final_norm="pooled",
        pool="cls",
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        qkv_bias=False,
        patch_bias=True,
        attention_head_dim=None if head_dim == default_hd else int(head_dim),
    )


def _torch_layout(tensors: dict[str, np.ndarray], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """``{pruneax leaf: tensor in PyTorch layout}`` (what ``fill`` converts), every lucidrains
    key checked for presence and shape and every key used."""
    d, p, c, hd = cfg.hidden_size, cfg.patch_size, cfg.num_channels, cfg.head_dim
    inner, m, k = cfg.num_heads * hd, cfg.mlp_dim, cfg.num_classes
    want = {
        "to_patch_embedding.1.weight": (d, p * p * c),
        "to_patch_embedding.1.bias": (d,),
        "cls_token": (1, 1, d),
        "pos_embedding": (1, cfg.num_patches + 1, d),
        "mlp_head.0.weight": (d,),
        "mlp_head.0.bias": (d,),
        "mlp_head.1.weight": (k, d),
        "mlp_head.1.bias": (k,),
    }
    block = {
        "0.fn.to_qkv.weight": (3 * inner, d),
        "0.fn.to_out.0.weight": (d, inner),
        "1.fn.net.0.weight": (m, d),
        "1.fn.net.0.bias": (m,),
        "1.fn.net.3.weight": (d, m),
        **dict.fromkeys(("0.norm.weight", "0.norm.bias", "1.norm.weight", "1.norm.bias"), (d,)),
        **dict.fromkeys(("0.fn.to_out.0.bias", "1.fn.net.3.bias"), (d,)),
    }
    for i in range(cfg.num_layers):
        want.update({_BLOCK.format(i=i) + key: shape for key, shape in block.items()})
    missing = [key for key in want if key not in tensors]
    if missing:
        raise ValueError(f"{_LOADER}: tensors missing from the state dict: {missing}")
    unexpected = sorted(set(tensors) - set(want))
    if unexpected:
        raise ValueError(
            f"{_LOADER}: unexpected tensors (not lucidrains' PreNorm ViT layout, or a "
            f"variant pruneax does not express): {unexpected}"
        )
    wrong = [
        f"{key}: {list(tensors[key].shape)}, expected {list(shape)}"
        for key, shape in want.items()
        if tuple(tensors[key].shape) != shape
    ]
    if wrong:
        raise ValueError(f"{_LOADER}: tensors of the wrong shape (for {cfg}): {wrong}")
    w = tensors["to_patch_embedding.1.weight"]
    # [D, (p1 p2 c)] -> PyTorch conv layout [D, C, p1, p2], which ``fill`` turns into
    # [p1, p2, C, D]: the same map of each patch.
    out = {"patch_embed/kernel": w.reshape(d, p, p, c).transpose(0, 3, 1, 2)}
    out.update({leaf: tensors[key] for key, leaf in _TOP_KEYS.items()})
    for i in range(cfg.num_layers):
        pre, leaf = _BLOCK.format(i=i), f"blocks/{i}/"
        out.update({leaf + name: tensors[pre + key] for key, name in _BLOCK_KEYS.items()})
        q, k_, v = np.split(tensors[pre + "0.fn.to_qkv.weight"], 3, axis=0)
        out.update({leaf + "attn/query/kernel": q, leaf + "attn/key/kernel": k_})
        out[leaf + "attn/value/kernel"] = v
    return out


def load_lucidrains_vit(
    path: str | os.PathLike,
    *,
    num_heads: int,
    image_size: int | tuple[int, int],
    patch_size: int,
    num_channels: int = 1,
    hidden_act: str = "relu",
    dtype: Any = "auto",
    param_dtype: Any = None,
    mesh: Any = None,
) -> ViT:
    """A ``ViT`` with the weights of a lucidrains ``vit-pytorch`` ``ViT`` state dict.

    Reads the ``torch.save`` file without torch (``read_torch_state_dict``). Every size but the
    arguments' comes from the tensors: width D (``cls_token``), blocks, head width
    (``to_qkv``: ``3 * num_heads * head_dim`` rows; ``ViTConfig.attention_head_dim`` when it
    is not ``D // num_heads``), MLP width, classes. The model is the PreNorm layout with a CLS
    token, ``pool='cls'`` and ``mlp_head = LayerNorm + Linear`` (``final_norm="pooled"``),
    LayerNorm epsilon 1e-5, no query / key / value bias; the patch Linear becomes the patch
    conv's kernel. Not expressed: lucidrains' ``pool='mean'`` (it averages the CLS token too;
    the tensors cannot tell it, so the CLS token is assumed) and the later layouts with patch
    LayerNorms or a final ``transformer.norm`` (their extra tensors are reported).

    Inputs are NHWC and normalised as the model was trained (the MNIST checkpoint:
    ``(x / 255 - 0.1307) / 0.3081``); ``images.transpose(0, 2, 3, 1)`` turns PyTorch's NCHW.

    Args:
      path: the ``torch.save`` file of the state dict.
      num_heads: attention heads (not recoverable from the shapes).
      image_size: the training image side, or ``(height, width)``.
      patch_size: the patch side.
      num_channels: image channels C.
      hidden_act: the ``FeedForward`` activation (not recoverable from the tensors):
        lucidrains' library uses ``"gelu"``; the MNIST checkpoint this loader was written for
        (``researchase/vit-mnist-explorations``) was trained with ``"relu"``, the default here.
      dtype: computation dtype; ``"auto"`` keeps the checkpoint's.
      param_dtype: parameter dtype; None means ``dtype``.
      mesh: None or a ``jax.sharding.Mesh`` (as ``load_vit``).

    Returns:
      The ``ViT`` (``model.config`` gives its sizes).

    Raises:
      FileNotFoundError: if ``path`` is not a file.
      ValueError: for a file ``read_torch_state_dict`` refuses, a missing or unexpected tensor
        or one of the wrong shape (named), sizes that make no valid ``ViTConfig`` (e.g. an
        image not divisible by ``patch_size``, a ``to_qkv`` not divisible by ``3 *
        num_heads``), or a bad ``dtype`` / ``mesh``.

    References: lucidrains, ``vit-pytorch`` (``vit_pytorch/vit.py``); Dosovitskiy et al.,
      ICLR 2021.

    Example:
      >>> from pruneax.models.vit import load_lucidrains_vit
      >>> vit = load_lucidrains_vit("vit_mnist_gpu.pt", num_heads=4, image_size=28,
      ...                           patch_size=4)  # doctest: +SKIP
      >>> load_lucidrains_vit("no/such.pt", num_heads=4, image_size=28, patch_size=4)
      Traceback (most recent call last):
      FileNotFoundError: read_torch_state_dict: 'no/such.pt' is not a file
    """
    tensors = read_torch_state_dict(path)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{_LOADER}: num_heads must be a positive int; got {num_heads!r}")
    cfg = _lucidrains_config(tensors, num_heads, image_size, patch_size, num_channels, hidden_act)
    layout = _torch_layout(tensors, cfg)
    dtype, param_dtype = resolve_dtypes(dtype, param_dtype, tensors, _LOADER)
    return fill(
        lambda: ViT(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        layout,
        KeyMap(candidates=lambda name: (name,)),
        loader=_LOADER,
        mesh=mesh,
        note=f" (lucidrains layout, as {cfg})",
    )
