"""Pre-LLM FoPru inside the VLM's vision encoder (``VisualSelect("fopru")``).

FoPru reads the patch-to-patch attention of a vision block (``pruneax.tokens.focal_select``),
which no registry input carries, so it runs here: the blocks up to the feature layer's run
as in ``VLM.encode`` with that block's attention probabilities returned; the prefix rows and
columns (CLS, registers) are dropped; ``focal_select`` picks k patches per example (option
``strategy``: ``"rank"``, the default, or ``"row"``, whole rows of the patch grid); only the
kept patches (and the ``pv`` prefix tokens the VLM projects) reach the projector. Which
block the published code reads is not in the code found (BUILD_NOTES 15.5): the feature block
is used, as for the other pre-LLM methods.

References: Jiang et al., "FoPru: Focal Pruning for Efficient Large Vision-Language Models",
2024 (arXiv:2411.14164).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models.vlm._select import VisualSelect


def encode_focal(vlm: Any, images: jax.Array, select: VisualSelect) -> tuple[jax.Array, jax.Array]:
    """``(tokens [B, pv + k, Dv], kept [B, k] int32)``: the prefix tokens, then the kept
    patches of the feature layer (ascending).

    Raises:
      ValueError: for bad images, or what ``pruneax.tokens.focal_select`` refuses (a ``k``
        that is not a whole number of grid rows for ``"row"``, an unknown strategy).
    """
    vcfg = vlm.vision.config
    h, p, pv = vlm.config.feature_layer, vcfg.num_prefix, vlm.config.num_visual_prefix
    k = select.num_kept(vcfg.num_patches)
    options = dict(select.options)
    strategy = options.get("strategy", "rank")
    feats, attn = vlm.encode(images, attention_at=(h - 1,))
    patches = attn[h - 1][:, :, p:, p:]  # [B, H, N, N]
    pick = lambda a: T.focal_select(a, k, strategy=strategy, grid=vcfg.grid)
    idx = jax.vmap(pick)(patches).astype(jnp.int32)
    kept = jnp.take_along_axis(feats[:, p:], idx[..., None], axis=1)
    return jnp.concatenate([feats[:, p - pv : p], kept], axis=1), idx
