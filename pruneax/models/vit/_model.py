"""Vision Transformer (ViT / DeiT / CLIP image tower) in Flax NNX, with token-pruning hooks.

One module covers the encoders that ``load_vit`` imports from Hugging Face checkpoints (ViT,
DeiT with or without the distillation head, the CLIP vision tower) and the small variants
trained from scratch here (``VIT_VARIANTS``). A static ``PruningPlan`` drops or merges patch
tokens between blocks; the prefix tokens (CLS, distillation, registers) are never dropped.

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (arXiv:2010.11929);
Touvron et al., "Training data-efficient image transformers & distillation through attention"
(DeiT), ICML 2021 (arXiv:2012.12877); Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision" (CLIP), ICML 2021 (arXiv:2103.00020); Darcet et al., "Vision
Transformers Need Registers", ICLR 2024 (arXiv:2309.16588); He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022 (arXiv:2111.06377) for the 2-D sin-cos embedding; Bolya et
al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv:2210.09461) for proportional
attention.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pruneax.models._shared.common import PatchGrid, check_images, is_size, layer_sizes
from pruneax.models.vit._plan import PruningPlan, apply_stage

POS_EMBEDS = ("learned", "sincos", "none")
FINAL_NORMS = ("all", "pooled", "none")
POOLS = ("cls", "mean", "cls_dist")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")

# timm-style init for training from scratch: N(0, 0.02) truncated at 2 std, zero biases.
_trunc02 = jax.nn.initializers.truncated_normal(stddev=0.02)
_zeros = jax.nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class ViTConfig(PatchGrid):
    """Hyperparameters of a ``ViT`` (frozen and hashable: usable as a static jit argument).

    Attributes:
      image_size: input height = width, or ``(height, width)``; both divisible by
        ``patch_size``.
      patch_size: side of the square patches (the patch-embedding conv's kernel and stride).
      num_channels: input channels C.
      hidden_size: token width D; divisible by ``num_heads`` (and by 4 for ``"sincos"``).
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
        approximation) or ``"quick_gelu"`` (``x * sigmoid(1.702 x)``, CLIP).
      layer_norm_eps: epsilon of every LayerNorm (timm 1e-6, HF ViT 1e-12, CLIP 1e-5).
      qkv_bias: biases on the query / key / value projections.
      pooler: HF ``ViTModel``'s pooler: ``tanh(dense(pooled))`` in ``ViTOutput.pooler_output``.
      patch_bias: bias on the patch-embedding conv (CLIP has none).
      layer_heads: heads kept by each block after structured pruning (``num_layers`` ints in
        ``[0, num_heads]``), or None: ``num_heads`` in every block. ``num_heads`` stays the
        unpruned count, so ``head_dim = hidden_size // num_heads`` survives pruning. A block
        with 0 heads adds only the output bias (its attention is a residual identity).
        Stored as a tuple.
      layer_mlp: MLP hidden width of each block (``num_layers`` ints in ``[0, mlp_dim]``), or
        None: ``mlp_dim`` everywhere. A width of 0 leaves only ``fc2``'s bias.

    Raises:
      ValueError: for non-positive sizes, an image size not divisible by the patch size, a
        hidden size not divisible by the heads, unknown option strings, inconsistent token
        options (``pool="cls"`` without ``class_token``, ``"cls_dist"`` without a distillation
        token or classes), or ``layer_heads`` / ``layer_mlp`` of the wrong length or range.
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
    layer_heads: tuple[int, ...] | None = None
    layer_mlp: tuple[int, ...] | None = None

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, list | tuple):
            size = tuple(size)
            if len(size) != 2 or not all(is_size(s) for s in size):
                raise ValueError(
                    f"ViTConfig: image_size must be a positive int or (height, width); got "
                    f"{self.image_size!r}"
                )
            object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        elif is_size(size):
            object.__setattr__(self, "image_size", int(size))
        else:
            raise ValueError(
                f"ViTConfig: image_size must be a positive int or (height, width); got {size!r}"
            )
        for name in ("patch_size", "num_channels", "hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not is_size(value):
                raise ValueError(f"ViTConfig: {name} must be a positive int; got {value!r}")
            object.__setattr__(self, name, int(value))
        if not is_size(self.mlp_dim):
            raise ValueError(f"ViTConfig: mlp_dim must be a positive int; got {self.mlp_dim!r}")
        for name in ("num_classes", "num_registers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"ViTConfig: {name} must be an int >= 0; got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("class_token", "distillation_token", "pre_norm", "qkv_bias", "pooler"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ViTConfig: {name} must be a bool; got {getattr(self, name)!r}")
        if not isinstance(self.patch_bias, bool):
            raise ValueError(f"ViTConfig: patch_bias must be a bool; got {self.patch_bias!r}")
        h, w = self.image_hw
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"ViTConfig: image_size {self.image_size!r} must be divisible by patch_size {p} "
                f"(got a {h / p:g} x {w / p:g} patch grid)"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig: hidden_size {self.hidden_size} must be divisible by num_heads "
                f"{self.num_heads}"
            )
        for name, allowed in (
            ("pos_embed", POS_EMBEDS),
            ("final_norm", FINAL_NORMS),
            ("pool", POOLS),
            ("hidden_act", ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ViTConfig: {name} must be one of {list(allowed)}; got {getattr(self, name)!r}"
                )
        if self.pos_embed == "sincos" and self.hidden_size % 4:
            raise ValueError(
                f"ViTConfig: pos_embed='sincos' needs hidden_size divisible by 4; got "
                f"{self.hidden_size}"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"ViTConfig: layer_norm_eps must be a float > 0; got {eps!r}")
        object.__setattr__(self, "layer_norm_eps", float(eps))
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
        for name, top in (("layer_heads", self.num_heads), ("layer_mlp", self.mlp_dim)):
            value = layer_sizes(getattr(self, name), self.num_layers, top, name, "ViTConfig")
            object.__setattr__(self, name, value)

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``hidden_size // num_heads`` (fixed under pruning)."""
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


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position embedding, ``[rows * cols, dim]`` float32 (row-major).

    Exactly ``get_2d_sincos_pos_embed`` of the MAE code: the first half of the channels encodes
    the column coordinate and the second half the row coordinate, each as
    ``[sin(pos * w), cos(pos * w)]`` with ``w = 10000 ** -(i / (dim / 4))``.

    Args:
      dim: embedding width, divisible by 4.
      grid: ``(rows, cols)``.

    Returns:
      A NumPy array ``[rows * cols, dim]`` float32.

    Raises:
      ValueError: if ``dim`` is not a positive multiple of 4.

    References: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
      (``util/pos_embed.py`` of facebookresearch/mae).
    """
    if not is_size(dim) or dim % 4:
        raise ValueError(f"sincos_pos_embed: dim must be a positive multiple of 4; got {dim!r}")
    rows, cols = grid
    mesh = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return emb.astype(np.float32)


class FixedEmbedding(nnx.Variable):
    """A non-trainable embedding (the ``"sincos"`` position table): not an ``nnx.Param``."""


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return x * jax.nn.sigmoid(1.702 * x)  # quick_gelu


class Attention(nnx.Module):
    """Multi-head self-attention with explicit float32 softmax probabilities.

    Attributes ``query``, ``key``, ``value``: ``nnx.Linear(D, H * hd)``; ``out``:
    ``nnx.Linear(H * hd, D)`` (``H * hd = D`` unless structurally pruned).

    Shapes:
      ``x`` [B, T, D]; optional ``size`` [B, T] token sizes. Returns ``(out [B, T, D],
      probs [B, H, T, T] float32 or None, keys [B, H, T, hd] or None)``.

    Args:
      dim: token width D.
      num_heads: heads H (``dim % num_heads == 0`` unless ``head_dim`` is given); 0 (a fully
        pruned block) makes the output the ``out`` bias.
      head_dim: width hd of one head; None means ``dim // num_heads``.
      qkv_bias: biases on the query / key / value projections.
      dtype: computation dtype; the logits and the softmax are float32 whatever it is.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: if ``size`` is not ``[B, T]``.

    References: Vaswani et al., "Attention Is All You Need", NeurIPS 2017; Bolya et al.,
      "Token Merging", ICLR 2023, Eq. 1 (proportional attention ``softmax(QK^T/sqrt(d) +
      log s)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.head_dim = dim // num_heads if head_dim is None else head_dim
        inner = num_heads * self.head_dim

        def linear(bias: bool, out: bool = False) -> nnx.Linear:
            return nnx.Linear(
                inner if out else dim,
                dim if out else inner,
                use_bias=bias,
                kernel_init=_trunc02,
                bias_init=_zeros,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

        self.query = linear(qkv_bias)
        self.key = linear(qkv_bias)
        self.value = linear(qkv_bias)
        self.out = linear(True, out=True)

    def __call__(
        self,
        x: jax.Array,
        *,
        size: jax.Array | None = None,
        return_attention: bool = False,
        return_keys: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """``(out, probs or None, keys or None)``; ``size`` adds ``log(size)`` over the keys."""
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.query(x).reshape(shape)
        k = self.key(x).reshape(shape)
        v = self.value(x).reshape(shape)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits * (self.head_dim**-0.5)
        if size is not None:
            if size.shape != (b, t):
                raise ValueError(
                    f"Attention: size must be [B, T] = {(b, t)}; got shape {tuple(size.shape)}"
                )
            logits = logits + jnp.log(size.astype(jnp.float32))[:, None, None, :]
        probs = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        out = self.out(out.reshape(b, t, self.num_heads * self.head_dim))
        return (
            out,
            probs if return_attention else None,
            jnp.swapaxes(k, 1, 2) if return_keys else None,
        )


class Mlp(nnx.Module):
    """``fc2(act(fc1(x)))``: ``fc1`` = ``nnx.Linear(D, mlp_dim)``, ``fc2`` = back to D
    (``hidden`` = 0, a fully pruned MLP, leaves ``fc2``'s bias)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        act: str = "gelu",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(
            kernel_init=_trunc02, bias_init=_zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.act = act
        self.fc1 = nnx.Linear(dim, hidden, **kw)
        self.fc2 = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(_activation(self.act, self.fc1(x)))


def _layer_norm(config: ViTConfig, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance (as PyTorch); statistics are float32 whatever ``dtype`` is.
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Returns ``(x [B, T, D], probs or None, keys or None)`` as ``Attention`` does. ``layer``
    picks the block's heads and MLP width from ``config.heads_per_layer`` /
    ``config.mlp_per_layer`` (structured pruning).
    """

    def __init__(
        self,
        config: ViTConfig,
        *,
        layer: int = 0,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.norm1 = _layer_norm(config, dtype, param_dtype, rngs)
        self.attn = Attention(
            config.hidden_size,
            config.heads_per_layer[layer],
            head_dim=config.head_dim,
            qkv_bias=config.qkv_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.norm2 = _layer_norm(config, dtype, param_dtype, rngs)
        self.mlp = Mlp(
            config.hidden_size,
            config.mlp_per_layer[layer],
            act=config.hidden_act,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        size: jax.Array | None = None,
        return_attention: bool = False,
        return_keys: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        y, probs, keys = self.attn(
            self.norm1(x), size=size, return_attention=return_attention, return_keys=return_keys
        )
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, probs, keys


@struct.dataclass
class ViTOutput:
    """What ``ViT.__call__`` returns (a pytree: it passes through ``jax.jit``).

    Attributes:
      logits: [B, num_classes], or None without a classifier.
      pooled: [B, D] the pooled token after the final (or pooled-only) LayerNorm, before the
        pooler and the head. For CLIP this is HF's ``pooler_output``; for ``pool="cls_dist"``
        it is the CLS token.
      pooler_output: [B, D] ``tanh(pooler(pooled))`` (HF ``ViTModel``), or None.
      hidden: [B, T_final, D] the last hidden state: after the final LayerNorm when
        ``final_norm="all"``, raw otherwise (HF CLIP's ``last_hidden_state``).
      kept: one [B, n_i] int32 per pruning stage: the original patch index (row-major over the
        patch grid) of every patch token after stage i; -1 for synthetic tokens. Empty tuple
        without a plan.
      sizes: [B, T_final] float32 token sizes (1 unless ToMe merged tokens).
      attentions: one [B, H, T_i, T_i] float32 per block when ``return_attention``, else None.
      hidden_states: the residual stream entering block 0 (after the embeddings and
        ``pre_norm``) and after each block (the last one before the final norm), when
        ``return_hidden_states``, else None: HF's ``hidden_states`` convention.
    """

    logits: jax.Array | None
    pooled: jax.Array
    pooler_output: jax.Array | None
    hidden: jax.Array
    kept: tuple[jax.Array, ...]
    sizes: jax.Array
    attentions: tuple[jax.Array, ...] | None = None
    hidden_states: tuple[jax.Array, ...] | None = None


class ViT(nnx.Module):
    """Vision Transformer: patch embedding, prefix tokens, pre-norm blocks, pooling and head.

    Tokens are ordered ``[CLS, distillation, registers..., patches]`` (each present as the
    config says); patches are flattened row-major over the patch grid, as HF's
    ``flatten(2).transpose(1, 2)``. Learned position embeddings cover CLS, distillation and
    patches (not registers). Every dense / conv weight is a leaf named ``kernel``
    (``patch_embed``, ``blocks/{i}/attn/{query,key,value,out}``, ``blocks/{i}/mlp/{fc1,fc2}``,
    ``pooler``, ``head``, ``head_dist``), so ``pruneax.weights``' default predicate selects
    exactly them; the classifier is ``head`` (glob ``"head/*"``).

    Initialization (training from scratch, timm style): kernels, the patch embedding, the
    learned position embedding and the CLS / distillation / register tokens ~ N(0, 0.02)
    truncated at 2 std; biases 0; LayerNorm scale 1 and offset 0. Pretrained weights come from
    ``load_vit``.

    Shapes:
      ``images`` [B, H, W, C] float (NHWC) with ``(H, W, C) == (*config.image_hw,
      config.num_channels)``. See ``ViTOutput`` for the outputs.

    Args:
      config: a ``ViTConfig`` (``vit_config("Ti/16")`` for a named variant).
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); attention logits / softmax and
        LayerNorm statistics are float32 whatever it is.
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``ViTConfig``; at call time if the
        images are not [B, H, W, C] of the configured size and a floating dtype, or the plan
        is not a ``PruningPlan`` or does not fit the model.

    References: Dosovitskiy et al., ICLR 2021 (arXiv:2010.11929); Touvron et al. (DeiT),
      ICML 2021; Radford et al. (CLIP), ICML 2021; Darcet et al., "Vision Transformers Need
      Registers", ICLR 2024.
    """

    def __init__(
        self,
        config: ViTConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, ViTConfig):
            raise ValueError(f"ViT: config must be a ViTConfig; got {type(config).__name__}")
        cfg = config
        d = cfg.hidden_size
        self.config = cfg
        self.dtype = dtype
        p = cfg.patch_size
        self.patch_embed = nnx.Conv(
            cfg.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=cfg.patch_bias,
            kernel_init=_trunc02,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

        def token(n: int) -> nnx.Param:
            return nnx.Param(_trunc02(rngs.params(), (1, n, d), param_dtype))

        self.cls_token = token(1) if cfg.class_token else None
        self.dist_token = token(1) if cfg.distillation_token else None
        self.registers = token(cfg.num_registers) if cfg.num_registers else None
        n_pos = cfg.num_pos_prefix + cfg.num_patches
        if cfg.pos_embed == "learned":
            self.pos_embed = token(n_pos)
        elif cfg.pos_embed == "sincos":
            table = np.zeros((1, n_pos, d), np.float32)
            table[0, cfg.num_pos_prefix :] = sincos_pos_embed(d, cfg.grid)
            self.pos_embed = FixedEmbedding(jnp.asarray(table, param_dtype))
        else:
            self.pos_embed = None
        self.pre_norm = _layer_norm(cfg, dtype, param_dtype, rngs) if cfg.pre_norm else None
        self.blocks = nnx.List(
            [
                Block(cfg, layer=i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for i in range(cfg.num_layers)
            ]
        )
        self.norm = _layer_norm(cfg, dtype, param_dtype, rngs) if cfg.final_norm != "none" else None
        kw = dict(
            kernel_init=_trunc02, bias_init=_zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.pooler = nnx.Linear(d, d, **kw) if cfg.pooler else None
        self.head = nnx.Linear(d, cfg.num_classes, **kw) if cfg.num_classes else None
        self.head_dist = nnx.Linear(d, cfg.num_classes, **kw) if cfg.pool == "cls_dist" else None

    @property
    def num_prefix(self) -> int:
        """Prefix tokens P (CLS + distillation + registers); pruning never drops them."""
        return self.config.num_prefix

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(rows, cols)``."""
        return self.config.grid

    @property
    def num_patches(self) -> int:
        """Patch tokens N of an input image."""
        return self.config.num_patches

    def embed(self, images: jax.Array) -> jax.Array:
        """Token embeddings [B, P + N, D] (position embeddings added, before ``pre_norm``)."""
        cfg = self.config
        b = images.shape[0]
        x = self.patch_embed(images.astype(self.dtype))
        x = x.reshape(b, cfg.num_patches, cfg.hidden_size)
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            tokens = [jnp.broadcast_to(t[...].astype(x.dtype), (b, 1, x.shape[-1])) for t in prefix]
            x = jnp.concatenate([*tokens, x], axis=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(x.dtype)
        if self.registers is not None:
            reg = jnp.broadcast_to(
                self.registers[...].astype(x.dtype), (b, cfg.num_registers, x.shape[-1])
            )
            k = cfg.num_pos_prefix
            x = jnp.concatenate([x[:, :k], reg, x[:, k:]], axis=1)
        return x

    def __call__(
        self,
        images: jax.Array,
        *,
        plan: PruningPlan | None = None,
        key: jax.Array | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ) -> ViTOutput:
        """Runs the encoder (and pooling / head) on ``images`` [B, H, W, C].

        Args:
          images: [B, H, W, C] float images, NHWC.
          plan: static token-pruning plan (``None``: all tokens through every block). Stage
            ``s`` runs before block ``s.layer`` on that block's input, with the attention /
            keys of the blocks ``plan.wants``.
          key: PRNG key for random stages (stage ``i`` gets ``fold_in(key, i)``).
          return_attention: also return every block's attention probabilities.
          return_hidden_states: also return the residual stream before block 0 and after each
            block.

        Returns:
          A ``ViTOutput``.

        Raises:
          ValueError: for images of the wrong rank, size, channels or dtype, or a plan that
            is not a ``PruningPlan``, does not fit this model, or scores tokens with the
            attention of a block that structured pruning left with 0 heads.
        """
        cfg = self.config
        check_images(images, (*cfg.image_hw, cfg.num_channels), "ViT")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"ViT: images must be floating point (normalized pixels); got dtype {images.dtype}"
            )
        if plan is not None:
            if not isinstance(plan, PruningPlan):
                raise ValueError(f"ViT: plan must be a PruningPlan or None; got {type(plan)}")
            plan.validate(cfg.num_layers, self.num_patches)
            for i, heads in enumerate(cfg.heads_per_layer):
                if heads == 0 and any(plan.wants(i)):
                    raise ValueError(
                        f"ViT: the plan scores tokens with block {i}'s attention, but "
                        "structured pruning left that block 0 heads (config.layer_heads)"
                    )
        x = self.embed(images)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        b = x.shape[0]
        size = jnp.ones(x.shape[:2], jnp.float32)
        patch_ids = jnp.broadcast_to(
            jnp.arange(self.num_patches, dtype=jnp.int32), (b, self.num_patches)
        )
        use_size = plan is not None and plan.uses_size
        aux: dict[int, dict[str, jax.Array]] = {}
        kept: list[jax.Array] = []
        attentions: list[jax.Array] = []
        hidden_states: list[jax.Array] = [x]
        for i, block in enumerate(self.blocks):
            stage = plan.stage_at(i) if plan is not None else None
            if stage is not None:
                k_i = None if key is None else jax.random.fold_in(key, i)
                x, size, src = apply_stage(
                    stage,
                    x,
                    size=size,
                    aux=aux,
                    patch_ids=patch_ids,
                    num_prefix=self.num_prefix,
                    grid=self.grid,
                    key=k_i,
                )
                patch_ids = jnp.where(
                    src >= 0, jnp.take_along_axis(patch_ids, jnp.maximum(src, 0), axis=1), -1
                )
                kept.append(patch_ids)
                aux = {}
            need_attn, need_keys = plan.wants(i) if plan is not None else (False, False)
            x, probs, keys = block(
                x,
                size=size if use_size else None,
                return_attention=need_attn or return_attention,
                return_keys=need_keys,
            )
            if need_attn or need_keys:
                aux[i] = {"attn": probs, "keys": keys}
            if return_attention:
                attentions.append(probs)
            hidden_states.append(x)

        if cfg.final_norm == "all":
            x = self.norm(x)
        p = self.num_prefix
        if cfg.pool == "mean":
            patches = x[:, p:]
            if use_size:
                w = size[:, p:, None].astype(patches.dtype)
                pooled = jnp.sum(patches * w, axis=1) / jnp.sum(w, axis=1)
            else:
                pooled = jnp.mean(patches, axis=1)
        else:
            pooled = x[:, 0]
        if cfg.final_norm == "pooled":
            pooled = self.norm(pooled)
        pooler_output = jnp.tanh(self.pooler(pooled)) if self.pooler is not None else None
        logits = None
        if self.head is not None:
            logits = self.head(pooled)
            if self.head_dist is not None:
                dist = x[:, 1] if cfg.final_norm != "pooled" else self.norm(x[:, 1])
                logits = (logits + self.head_dist(dist)) / 2
        return ViTOutput(
            logits=logits,
            pooled=pooled,
            pooler_output=pooler_output,
            hidden=x,
            kept=tuple(kept),
            sizes=size,
            attentions=tuple(attentions) if return_attention else None,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
        )
