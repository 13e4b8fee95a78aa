"""Models filled from NumPy for tests (no initializer compiles, no parameter trivially 0 or 1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.weights import leaf_names


def random_model(
    model_type: type, config: Any, seed: int = 0, std: float = 0.2, *, unit_embedding: bool = False,
    **kw: Any,
) -> Any:  # fmt: skip
    """``model_type(config, rngs=..., **kw)`` with every variable drawn by NumPy: norm scales
    1 + N(0, std^2), everything else N(0, std^2); with ``unit_embedding``, leaves named
    ``embedding`` N(0, 1)."""
    abstract = nnx.eval_shape(lambda: model_type(config, rngs=nnx.Rngs(0), **kw))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    leaves = []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        value = std * rng.normal(size=leaf.shape)
        if name.endswith("scale"):
            value = value + 1.0
        elif unit_embedding and name.endswith("embedding"):
            value = value / std
        leaves.append(jnp.asarray(value, leaf.dtype))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def vit_block_weights(model: Any) -> list[dict]:
    """Every ViT block's weights as float32 NumPy (kernel [in, out], bias) pairs, for the
    NumPy oracles of the published block loops."""
    f32 = lambda a: np.asarray(a, np.float32)
    lin = lambda m: (f32(m.kernel[...]), f32(m.bias[...]))
    norm = lambda m: (f32(m.scale[...]), f32(m.bias[...]))
    out = []
    for blk in model.blocks:
        a = blk.attn
        out.append(
            dict(
                heads=a.num_heads, q=lin(a.query), k=lin(a.key), v=lin(a.value), out=lin(a.out),
                norm1=norm(blk.norm1), norm2=norm(blk.norm2), fc1=lin(blk.mlp.fc1),
                fc2=lin(blk.mlp.fc2),
            )
        )  # fmt: skip
    return out
