"""The layers of the ViT: attention (fused, explicit, or fused plus the [CLS] row), MLP and the
pre-norm block.

References: Vaswani et al., "Attention Is All You Need", NeurIPS 2017; Bolya et al., "Token
Merging: Your ViT But Faster", ICLR 2023 (arXiv:2210.09461) for proportional attention.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models.vit._config import ViTConfig

# timm-style init for training from scratch: N(0, 0.02) truncated at 2 std, zero biases.
_trunc02 = jax.nn.initializers.truncated_normal(stddev=0.02)
_zeros = jax.nn.initializers.zeros


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    return x * jax.nn.sigmoid(1.702 * x)  # quick_gelu


def cls_row_attention(
    q: jax.Array, k: jax.Array, bias: jax.Array | None = None, *, scale: float | None = None
) -> jax.Array:
    """The [CLS] query's attention probabilities ``softmax(q_0 . K^T * scale + bias)``, float32.

    The one row that CLS-attention scorers (EViT, FasterVLM-style top-k, HoloV, FEATHER's
    scores) read, computed from the queries and keys without materialising the ``T x T``
    matrix. It equals row 0 of ``Attention``'s probabilities (``return_attention=True``).

    Args:
      q: [B, T, H, hd] queries (only ``q[:, 0]`` is used).
      k: [B, S, H, hd] keys.
      bias: optional bias over the keys, broadcastable to [B, H, 1, S] (ToMe's
        ``log(size)[:, None, None, :]``).
      scale: logit scale; None means ``hd ** -0.5``.

    Returns:
      [B, H, S] float32 probabilities (each row sums to 1).

    Raises:
      ValueError: if ``q`` and ``k`` are not rank 4 with the same batch, heads and head width.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax.models.vit import cls_row_attention
      >>> q = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
      >>> row = cls_row_attention(q, q)
      >>> row.shape, bool(jnp.allclose(row.sum(-1), 1.0))
      ((1, 2, 5), True)
    """
    if q.ndim != 4 or k.ndim != 4 or (q.shape[0], *q.shape[2:]) != (k.shape[0], *k.shape[2:]):
        raise ValueError(
            "cls_row_attention: q [B, T, H, hd] and k [B, S, H, hd] must share B, H and hd; got "
            f"shapes {tuple(q.shape)} and {tuple(k.shape)}"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k, preferred_element_type=jnp.float32)
    logits = logits * scale
    if bias is not None:
        logits = logits + jnp.broadcast_to(bias, (*logits.shape[:2], 1, logits.shape[-1]))[:, :, 0]
    return jax.nn.softmax(logits, axis=-1)


class Attention(nnx.Module):
    """Multi-head self-attention: fused unless the probabilities are asked for.

    Attributes ``query``, ``key``, ``value``: ``nnx.Linear(D, H * hd)``; ``out``:
    ``nnx.Linear(H * hd, D)`` (``H * hd = D`` unless structurally pruned or ``head_dim`` is
    given: lucidrains' layout has ``H * hd = 256`` in a model of width 64).

    Two paths give the same output (float32 logits and softmax in both): with
    ``return_attention=True`` the probabilities ``[B, H, T, T]`` are materialised explicitly
    and returned; otherwise ``jax.nn.dot_product_attention`` computes the output (ToMe's
    ``log(size)`` enters as its ``bias`` over the keys). ``return_cls_attention=True`` (fused
    path) also returns the [CLS] query's row ``[B, H, T]`` (``cls_row_attention``), all that a
    CLS-attention scorer needs; scores over all queries (received attention) need
    ``return_attention=True``.

    Shapes:
      ``x`` [B, T, D]; optional ``size`` [B, T] token sizes. Returns ``(out [B, T, D],
      attention, keys [B, H, T, hd] or None)``: ``attention`` is the probabilities
      [B, H, T, T] float32 with ``return_attention``, the CLS row [B, H, T] float32 with
      ``return_cls_attention``, else None.

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
      ValueError: if ``size`` is not ``[B, T]``, or both ``return_attention`` and
        ``return_cls_attention`` are set.

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
      >>> attn(jnp.ones((1, 5, 16)), return_cls_attention=True)[1].shape
      (1, 2, 5)
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
        return_cls_attention: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """``(out, attention or None, keys or None)``; ``size`` adds ``log(size)`` over the
        keys. See the class docstring."""
        if return_attention and return_cls_attention:
            raise ValueError(
                "Attention: pass return_attention (all rows) or return_cls_attention (the CLS "
                "row), not both"
            )
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.query(x).reshape(shape)
        k = self.key(x).reshape(shape)
        v = self.value(x).reshape(shape)
        bias = None
        if size is not None:
            if size.shape != (b, t):
                raise ValueError(
                    f"Attention: size must be [B, T] = {(b, t)}; got shape {tuple(size.shape)}"
                )
            bias = jnp.log(size.astype(jnp.float32))[:, None, None, :]
        scale = self.head_dim**-0.5
        attention = None
        if return_attention or self.num_heads == 0:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            logits = logits * scale
            if bias is not None:
                logits = logits + bias
            probs = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
            attention = probs if return_attention else None
            if return_cls_attention:
                attention = probs[:, :, 0]
        else:
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale)
            if return_cls_attention:
                attention = cls_row_attention(q, k, bias, scale=scale)
        out = self.out(out.reshape(b, t, self.num_heads * self.head_dim))
        return out, attention, jnp.swapaxes(k, 1, 2) if return_keys else None


class Mlp(nnx.Module):
    """``fc2(act(fc1(x)))``: ``fc1`` = ``nnx.Linear(D, hidden)``, ``fc2`` = back to D
    (``hidden`` = 0, a fully pruned MLP, leaves ``fc2``'s bias).

    Args:
      dim: token width D.
      hidden: hidden width.
      act: ``"gelu"``, ``"gelu_tanh"``, ``"quick_gelu"`` or ``"relu"``.
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
      ``x`` [B, T, D]; returns ``(x [B, T, D], attention (probabilities [B, H, T, T], the CLS
      row [B, H, T]) or None, keys [B, H, T, hd] or None)`` as ``Attention`` does (fused
      unless ``return_attention``).

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
        return_cls_attention: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """The attention half: ``(x + attn(norm1(x)), attention or None, keys or None)``."""
        y, probs, keys = self.attn(
            self.norm1(x),
            size=size,
            return_attention=return_attention,
            return_keys=return_keys,
            return_cls_attention=return_cls_attention,
        )
        return x + y, probs, keys

    def value_states(self, x: jax.Array) -> jax.Array:
        """The attention's value states of the block input ``x``: [B, H, T, hd].

        The same projection ``attend`` computes (under ``jax.jit`` XLA shares the two); for
        stages that score with values (FlowCut).
        """
        b, t, _ = x.shape
        v = self.attn.value(self.norm1(x)).reshape(b, t, self.attn.num_heads, self.attn.head_dim)
        return jnp.swapaxes(v, 1, 2)

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
        return_cls_attention: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Both halves; see the class docstring for the shapes."""
        x, probs, keys = self.attend(
            x,
            size=size,
            return_attention=return_attention,
            return_keys=return_keys,
            return_cls_attention=return_cls_attention,
        )
        return self.feed_forward(x), probs, keys
