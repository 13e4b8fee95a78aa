"""``ViTConfig``: the hyperparameters of a ``ViT``, and the named variants (``vit_config``).

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (arXiv:2010.11929);
Touvron et al., "Training data-efficient image transformers & distillation through attention"
(DeiT), ICML 2021 (arXiv:2012.12877); Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision" (CLIP), ICML 2021 (arXiv:2103.00020); Darcet et al., "Vision
Transformers Need Registers", ICLR 2024 (arXiv:2309.16588).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pruneax.models._shared.common import PatchGrid, layer_sizes
from pruneax.models._shared.fields import (
    bool_field,
    check_fields,
    hw_field,
    int_field,
    one_of,
    real_field,
)

POS_EMBEDS = ("learned", "sincos", "none")
FINAL_NORMS = ("all", "pooled", "none")
POOLS = ("cls", "mean", "cls_dist")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu")

_SIZES = ("patch_size", "num_channels", "hidden_size", "num_layers", "num_heads", "mlp_dim")
_FLAGS = (
    "class_token",
    "distillation_token",
    "pre_norm",
    "qkv_bias",
    "pooler",
    "patch_bias",
    "map_head",
)
_FIELDS = {  # ViTConfig's per-field checks, run in this order by check_fields
    "image_size": hw_field(),
    **dict.fromkeys(_SIZES, int_field(low=1)),
    **dict.fromkeys(("num_classes", "num_registers"), int_field(low=0)),
    **dict.fromkeys(_FLAGS, bool_field()),
    "pos_embed": one_of(POS_EMBEDS),
    "final_norm": one_of(FINAL_NORMS),
    "pool": one_of(POOLS),
    "hidden_act": one_of(ACTIVATIONS),
    "layer_norm_eps": real_field(gt=0),
    "attention_head_dim": int_field(low=1, none=True),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig(PatchGrid):
    """Hyperparameters of a ``ViT`` (frozen and hashable: usable as a static jit argument).

    Attributes:
      image_size: input height = width, or ``(height, width)``; both divisible by
        ``patch_size``.
      patch_size: side of the square patches (the patch-embedding conv's kernel and stride).
      num_channels: input channels C.
      hidden_size: token width D; divisible by ``num_heads`` unless ``attention_head_dim`` is
        set (and by 4 for ``"sincos"``).
      num_layers: transformer blocks.
      num_heads: attention heads.
      mlp_dim: hidden width of each block's MLP.
      num_classes: classifier width; 0 means no classifier (``ViTOutput.logits`` is None).
      class_token: prepend a learned CLS token.
      distillation_token: DeiT's distillation token, right after CLS (needs ``class_token``).
      num_registers: learned register tokens after CLS / distillation, without position
        embedding (DINOv2-with-registers layout).
      pos_embed: ``"learned"`` (one vector per CLS / distillation / patch position),
        ``"sincos"`` (fixed 2-D sin-cos of MAE, zeros on the CLS / distillation positions) or
        ``"none"``.
      pre_norm: a LayerNorm on the embeddings before the first block (CLIP's
        ``pre_layrnorm``).
      final_norm: ``"all"``: the final LayerNorm on every token (HF ViT / DeiT
        ``last_hidden_state``); ``"pooled"``: only on the pooled token (CLIP's
        ``post_layernorm``; the last hidden state stays raw); ``"none"``: no final norm.
      pool: ``"cls"``: the CLS token; ``"mean"``: mean of the patch tokens (size-weighted after
        ToMe merging); ``"cls_dist"``: DeiT with teacher, logits = mean of ``head(CLS)`` and
        ``head_dist(distillation token)``.
      hidden_act: MLP activation: ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (tanh
        approximation), ``"quick_gelu"`` (``x * sigmoid(1.702 x)``, CLIP) or ``"relu"``
        (lucidrains' ``vit-pytorch`` as some checkpoints were trained).
      layer_norm_eps: epsilon of every LayerNorm (timm 1e-6, HF ViT 1e-12, CLIP 1e-5).
      qkv_bias: biases on the query / key / value projections.
      pooler: HF ``ViTModel``'s pooler: ``tanh(dense(pooled))`` in ``ViTOutput.pooler_output``.
      patch_bias: bias on the patch-embedding conv (CLIP has none).
      map_head: SigLIP's multihead attention-pooling head (``MapHead``: a learned probe
        attends over the final tokens) gives ``ViTOutput.pooler_output``; not with
        ``pooler``.
      layer_heads: heads kept by each block after structured pruning (``num_layers`` ints in
        ``[0, num_heads]``), or None: ``num_heads`` in every block. ``num_heads`` stays the
        unpruned count, so ``head_dim`` survives pruning. A block
        with 0 heads adds only the output bias (its attention is a residual identity).
        Stored as a tuple.
      layer_mlp: MLP hidden width of each block (``num_layers`` ints in ``[0, mlp_dim]``), or
        None: ``mlp_dim`` everywhere. A width of 0 leaves only ``fc2``'s bias.
      attention_head_dim: width of one attention head when it is not ``hidden_size //
        num_heads`` (lucidrains' ``dim_head``: 4 heads x 64 = an attention width of 256 in a
        model of width 64), or None (the default): ``hidden_size // num_heads``. Read it
        through ``head_dim``, which resolves the default.

    Raises:
      ValueError: for non-positive sizes, an image size not divisible by the patch size, a
        hidden size not divisible by the heads (without ``attention_head_dim``, or with
        ``map_head``), unknown option strings, inconsistent token
        options (``pool="cls"`` without ``class_token``, ``pooler`` with ``map_head``,
        ``"cls_dist"`` without a distillation token or classes), or ``layer_heads`` /
        ``layer_mlp`` of the wrong length or range.

    Example:
      >>> from pruneax.models.vit import ViTConfig
      >>> cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_heads=4)
      >>> cfg.grid, cfg.num_patches, cfg.num_prefix, cfg.head_dim
      ((8, 8), 64, 1, 16)
      >>> ViTConfig(image_size=28, patch_size=4, hidden_size=64, num_heads=4,
      ...           attention_head_dim=64, hidden_act="relu").head_dim
      64
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    class_token: bool = True
    distillation_token: bool = False
    num_registers: int = 0
    pos_embed: str = "learned"
    pre_norm: bool = False
    final_norm: str = "all"
    pool: str = "cls"
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    pooler: bool = False
    patch_bias: bool = True
    map_head: bool = False
    layer_heads: tuple[int, ...] | None = None
    layer_mlp: tuple[int, ...] | None = None
    attention_head_dim: int | None = None

    def __post_init__(self):
        check_fields(self, **_FIELDS)
        h, w = self.image_hw
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"ViTConfig: image_size {self.image_size!r} must be divisible by patch_size {p} "
                f"(got a {h / p:g} x {w / p:g} patch grid)"
            )
        if self.attention_head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig: hidden_size {self.hidden_size} must be divisible by num_heads "
                f"{self.num_heads} (or set attention_head_dim)"
            )
        if self.map_head and self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig: map_head=True needs hidden_size {self.hidden_size} divisible by "
                f"num_heads {self.num_heads} (the MAP head's attention has width hidden_size)"
            )
        if self.pos_embed == "sincos" and self.hidden_size % 4:
            raise ValueError(
                f"ViTConfig: pos_embed='sincos' needs hidden_size divisible by 4; got "
                f"{self.hidden_size}"
            )
        if self.distillation_token and not self.class_token:
            raise ValueError("ViTConfig: distillation_token=True needs class_token=True (DeiT)")
        if self.pool == "cls" and not self.class_token:
            raise ValueError("ViTConfig: pool='cls' needs class_token=True; use pool='mean'")
        if self.pool == "cls_dist" and not (self.distillation_token and self.num_classes > 0):
            raise ValueError(
                "ViTConfig: pool='cls_dist' (DeiT with teacher) needs distillation_token=True and "
                f"num_classes > 0; got distillation_token={self.distillation_token}, "
                f"num_classes={self.num_classes}"
            )
        if self.pooler and self.map_head:
            raise ValueError(
                "ViTConfig: pooler=True and map_head=True both define pooler_output; pick one"
            )
        for name, top in (("layer_heads", self.num_heads), ("layer_mlp", self.mlp_dim)):
            value = layer_sizes(getattr(self, name), self.num_layers, top, name, "ViTConfig")
            object.__setattr__(self, name, value)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (fixed under pruning): ``attention_head_dim`` when set,
        else ``hidden_size // num_heads``."""
        if self.attention_head_dim is not None:
            return self.attention_head_dim
        return self.hidden_size // self.num_heads

    @property
    def heads_per_layer(self) -> tuple[int, ...]:
        """Attention heads of every block (``layer_heads``, or ``num_heads`` repeated)."""
        return self.layer_heads or (self.num_heads,) * self.num_layers

    @property
    def mlp_per_layer(self) -> tuple[int, ...]:
        """MLP hidden width of every block (``layer_mlp``, or ``mlp_dim`` repeated)."""
        return self.layer_mlp or (self.mlp_dim,) * self.num_layers

    @property
    def num_pos_prefix(self) -> int:
        """Prefix tokens with a position embedding: CLS and distillation (not registers)."""
        return int(self.class_token) + int(self.distillation_token)

    @property
    def num_prefix(self) -> int:
        """Prefix tokens P = CLS + distillation + registers; token pruning never drops them."""
        return self.num_pos_prefix + self.num_registers


VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "Ti/16": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S/16": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B/16": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    # 28x28 MNIST, 4x4 patches: a 7x7 grid of 49 patches.
    "mnist/4": dict(
        image_size=28,
        num_channels=1,
        patch_size=4,
        hidden_size=128,
        num_layers=6,
        num_heads=4,
        mlp_dim=256,
        num_classes=10,
    ),
    # 32x32 CIFAR, 4x4 patches: an 8x8 grid of 64 patches; ViT-Ti width and depth.
    "cifar/4": dict(
        image_size=32,
        num_channels=3,
        patch_size=4,
        hidden_size=192,
        num_layers=12,
        num_heads=3,
        mlp_dim=768,
        num_classes=10,
    ),
}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """The ``ViTConfig`` of a named variant of ``VIT_VARIANTS``, with fields overridden.

    ``"Ti/16"``, ``"S/16"`` and ``"B/16"`` are the ViT / DeiT sizes at 224x224 with 1000
    classes; ``"mnist/4"`` (28x28x1, 49 patches, D=128, 6 blocks) and ``"cifar/4"`` (32x32x3,
    64 patches, ViT-Ti width) have 10 classes.

    Args:
      name: a key of ``VIT_VARIANTS``.
      **overrides: ``ViTConfig`` fields to change, e.g. ``num_classes=100``.

    Returns:
      The validated ``ViTConfig``.

    Raises:
      ValueError: for an unknown variant name or override field, or an invalid result.

    References: Dosovitskiy et al., ICLR 2021, Table 1; Touvron et al. (DeiT), ICML 2021,
      Table 1 (Ti / S).

    Example:
      >>> from pruneax.models.vit import vit_config
      >>> cfg = vit_config("S/16", num_classes=100)
      >>> cfg.hidden_size, cfg.num_heads, cfg.num_classes
      (384, 6, 100)
    """
    if name not in VIT_VARIANTS:
        raise ValueError(f"vit_config: name must be one of {list(VIT_VARIANTS)}; got {name!r}")
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"vit_config: unknown ViTConfig fields {unknown}; expected some of {sorted(fields)}"
        )
    return ViTConfig(**{**VIT_VARIANTS[name], **overrides})
