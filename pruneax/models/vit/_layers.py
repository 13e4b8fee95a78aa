"""The layers of the ViT: sin-cos position table, attention, MLP and the pre-norm block.

References: Vaswani et al., "Attention Is All You Need", NeurIPS 2017; He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv:2111.06377) for the 2-D sin-cos
embedding; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv:2210.09461) for
proportional attention.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.common import is_size
from pruneax.models.vit._config import ViTConfig

# timm-style init for training from scratch: N(0, 0.02) truncated at 2 std, zero biases.
_trunc02 = jax.nn.initializers.truncated_normal(stddev=0.02)
_zeros = jax.nn.initializers.zeros


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

    Example:
      >>> from pruneax.models.vit import sincos_pos_embed
      >>> sincos_pos_embed(8, (2, 3)).shape
      (6, 8)
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
    """A non-trainable embedding (the ``"sincos"`` position table): not an ``nnx.Param``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import FixedEmbedding
      >>> isinstance(FixedEmbedding(jnp.zeros((1, 4, 8))), nnx.Param)
      False
    """


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

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import Attention
      >>> attn = Attention(16, 2, rngs=nnx.Rngs(0))
      >>> out, probs, keys = attn(jnp.ones((1, 5, 16)), return_keys=True)
      >>> out.shape, probs, keys.shape
      ((1, 5, 16), None, (1, 2, 5, 8))
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
    """``fc2(act(fc1(x)))``: ``fc1`` = ``nnx.Linear(D, hidden)``, ``fc2`` = back to D
    (``hidden`` = 0, a fully pruned MLP, leaves ``fc2``'s bias).

    Args:
      dim: token width D.
      hidden: hidden width.
      act: ``"gelu"``, ``"gelu_tanh"`` or ``"quick_gelu"``.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import Mlp
      >>> Mlp(16, 32, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 16))).shape
      (2, 3, 16)
    """

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

    The two halves are public (``attend`` and ``feed_forward``) so that a token-pruning stage
    can run between them, where the published ToMe and EViT blocks merge / fuse tokens: after
    the attention residual, before the MLP (which then runs on fewer tokens).

    Shapes:
      ``x`` [B, T, D]; returns ``(x [B, T, D], probs [B, H, T, T] or None, keys
      [B, H, T, hd] or None)`` as ``Attention`` does.

    Args:
      config: the ``ViTConfig``.
      layer: block index; picks the block's heads and MLP width from
        ``config.heads_per_layer`` / ``config.mlp_per_layer`` (structured pruning).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for the initializers.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> from pruneax.models.vit import Block, vit_config
      >>> cfg = vit_config("mnist/4", hidden_size=16, num_heads=2, mlp_dim=32)
      >>> blk = Block(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
      >>> y, probs, keys = blk(jnp.ones((1, 5, 16)), return_attention=True)
      >>> y.shape, probs.shape, keys
      ((1, 5, 16), (1, 2, 5, 5), None)
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

    def attend(
        self,
        x: jax.Array,
        *,
        size: jax.Array | None = None,
        return_attention: bool = False,
        return_keys: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """The attention half: ``(x + attn(norm1(x)), probs or None, keys or None)``."""
        y, probs, keys = self.attn(
            self.norm1(x), size=size, return_attention=return_attention, return_keys=return_keys
        )
        return x + y, probs, keys

    def feed_forward(self, x: jax.Array) -> jax.Array:
        """The MLP half: ``x + mlp(norm2(x))``."""
        return x + self.mlp(self.norm2(x))

    def __call__(
        self,
        x: jax.Array,
        *,
        size: jax.Array | None = None,
        return_attention: bool = False,
        return_keys: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Both halves; see the class docstring for the shapes."""
        x, probs, keys = self.attend(
            x, size=size, return_attention=return_attention, return_keys=return_keys
        )
        return self.feed_forward(x), probs, keys
