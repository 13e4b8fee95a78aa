"""Pre-LLM selection inside the VLM's vision encoder: FlowCut (``VisualSelect("flowcut")``).

FlowCut scores the patches after every vision block up to the one that produces the features
and prunes on the way (``pruneax.models.vit.FlowCutStage``), so it cannot run on the feature
layer's outputs as the registry methods do. The VLM runs its vision blocks ``0 .. h - 1`` (h =
``config.feature_layer``) under ``PruningPlan.flowcut(k, select_layer=h - 1)``: blocks
``0 .. h - 2`` score (dead tokens stay in the array with size 0, masked out of the attention
keys), the stage before block ``h - 1`` gathers the ``k`` kept patches (original order, CLS
first) and block ``h - 1`` runs on ``1 + k`` tokens; its output is the feature layer. For
LLaVA-1.5 (24 blocks, ``vision_layer=-2``: h = 23) this is the published ``select_layer = 22``
(``apply_flowcut_config``): the penultimate block's output feeds the projector with exactly
``k`` patches. Only those ``pv + k`` tokens are projected.

References: Tong et al., "FlowCut", NeurIPS 2025 (arXiv:2505.19536); TungChintao/FlowCut
(``flowcut/modeling_clip_flowcut.py``, ``CLIPEncoder_forward``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from pruneax.models._shared.common import check_images
from pruneax.models.vit._model import _Tokens
from pruneax.models.vit._plan import PruningPlan
from pruneax.models.vlm._select import VisualSelect

if TYPE_CHECKING:
    from pruneax.models.vlm._config import VLMConfig


def vision_plan(config: VLMConfig, select: VisualSelect) -> PruningPlan:
    """The ViT plan of an in-vision ``select`` (``"flowcut"``) for the VLM's vision encoder.

    Raises:
      ValueError: if the encoder does not have exactly one prefix token (the [CLS] token
        FlowCut scores with), the feature layer is the output of block 0 (no block to score
        before it), or the budget does not fit.
    """
    v, h = config.vision, config.feature_layer
    if not v.class_token or v.num_prefix != 1:
        raise ValueError(
            f"VLM: select.method {select.method!r} scores with the [CLS] token; the vision "
            f"encoder must have exactly one prefix token, the CLS; it has {v.num_prefix}"
        )
    if h < 2:
        raise ValueError(
            f"VLM: select.method {select.method!r} scores after the blocks before the feature "
            f"layer's; vision_layer must select the output of block >= 1; got {config.vision_layer}"
        )
    k = select.num_kept(v.num_patches)
    return PruningPlan.flowcut(
        k, num_layers=v.num_layers, select_layer=h - 1, **select.method_options()
    )


def embedded_images(vision: Any, images: jax.Array) -> jax.Array:
    """The vision encoder's patch (+ prefix) embeddings of ``images``, ``pre_norm`` applied.

    Raises:
      ValueError: unless ``images`` are floating [B, H, W, C] of the encoder's size.
    """
    cfg = vision.config
    check_images(images, (*cfg.image_hw, cfg.num_channels), "VLM")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"VLM: images must be floating point; got dtype {images.dtype}")
    x = vision.embed(images)
    return x if vision.pre_norm is None else vision.pre_norm(x)


def encode_selected(
    vlm: Any, images: jax.Array, select: VisualSelect, key: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The feature layer's hidden state under ``vision_plan``: ``(features [B, P + k, Dv],
    kept [B, k] int32)``, the prefix token first, the kept patches ascending.

    The embeddings (and ``pre_norm``) and vision blocks ``0 .. h - 1`` run as in
    ``ViT.__call__`` with the plan (same stages, same fused / CLS-row attention); the later
    blocks and the head do not run; ``config.vision_norm`` applies the final norm.

    Raises:
      ValueError: for bad images, or as ``vision_plan``.
    """
    vision, config = vlm.vision, vlm.config
    x = embedded_images(vision, images)
    plan = vision_plan(config, select)
    tok = _Tokens(
        plan, x, num_patches=vision.num_patches, num_prefix=vision.num_prefix, grid=vision.grid,
        key=key,
    )  # fmt: skip
    for i in range(config.feature_layer):
        x, _ = tok.run_block(vision.blocks[i], i, x, False)
    if config.vision_norm:
        x = vision.norm(x)
    return x, tok.kept[-1]
