"""Fixed position embeddings of the ViT: MAE's 2-D sin-cos table and its non-trainable holder.

References: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
(arXiv:2111.06377), ``util/pos_embed.py`` of facebookresearch/mae.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from pruneax.models._shared.common import is_size


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
