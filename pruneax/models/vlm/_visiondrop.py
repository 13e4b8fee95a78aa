"""Pre-LLM selection inside the VLM's vision encoder: VisionDrop's vision stage
(``VisualSelect("visiondrop")``), which is VisionZip's.

At the block that produces the feature layer (block h - 1, h = ``config.feature_layer``;
LLaVA-1.5's penultimate block): score = the [CLS] attention row summed over heads, patches
only (an encoder without a CLS token, SigLIP: the attention each patch receives, mean over
heads and queries, as the registry methods' ``scores``); dominant tokens = the top patches,
original order, behind the CLS token itself when the encoder has one and the VLM projects
patches only (``--dominant d`` counts the CLS in the published code, whose hidden state goes to
the projector as an image token); contextual tokens = the other patches merged by
``pruneax.tokens.contextual_merge`` with that block's key states averaged over heads as the
metric. The projector sees only the ``pv + k`` tokens ``[prefix (pv), CLS?, dominant,
contextual]``. ``VLMOutput.visual_kept`` holds -1 for the CLS token, the dominant patches'
indices, then the contextual tokens' target patches. With ``keep = 1`` the one token is the top
patch (no CLS).

Budget: ``keep`` = k tokens in all (the published ``dominant + contextual``; 48 = 42 + 6 for
VisionDrop's LLaVA-1.5 setting), of which ``options["contextual"]`` c are contextual (default
``k // 8``, VisionDrop's 6 of 48).

References: Yang et al., "VisionZip", CVPR 2025 (arXiv:2412.04467); Xu et al., "Rethinking
Visual Token Reduction in LVLMs under Cross-modal Misalignment" (VisionDrop), AAAI 2026
(arXiv:2506.22283); ``Ruixxxx/VisionDrop@b9d5df9 llava/visionzip/clip_encoder.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models._shared.fields import is_int
from pruneax.models.vlm._flowcut import embedded_images
from pruneax.models.vlm._select import VisualSelect


def visiondrop_budget(config: Any, select: VisualSelect) -> tuple[int, int, bool]:
    """``(dominant patches, contextual tokens, cls_as_token)`` of ``select`` for ``config``.

    Raises:
      ValueError: for a ``contextual`` option that is not an int in ``[0, k - 1]`` (one
        dominant patch must remain, plus the CLS token when it is one of the k) or more
        contextual tokens than patches left to merge.
    """
    v = config.vision
    n = v.num_patches
    k = select.num_kept(n)
    cls_token = bool(v.class_token) and config.num_visual_prefix == 0 and k >= 2
    c = dict(select.options).get("contextual", k // 8)
    if not is_int(c) or not 0 <= c <= k - 1 - cls_token:
        raise ValueError(
            f"VLM: select.options['contextual'] must be an int in [0, {k - 1 - cls_token}] "
            f"(k = {k} tokens, at least one dominant patch{' and the CLS' if cls_token else ''}); "
            f"got {c!r}"
        )
    d = k - int(c) - cls_token
    if c > n - d:
        raise ValueError(
            f"VLM: select.options['contextual'] = {c} exceeds the {n - d} patches left to merge"
        )
    return d, int(c), cls_token


def encode_visiondrop(
    vlm: Any, images: jax.Array, select: VisualSelect
) -> tuple[jax.Array, jax.Array]:
    """The VisionDrop / VisionZip vision stage: ``(tokens [B, pv + k, Dv], kept [B, k] int32)``
    to project (the prefix tokens first), with ``kept`` as in the module docstring.

    Raises:
      ValueError: for bad images, or as ``visiondrop_budget``.
    """
    vision, config = vlm.vision, vlm.config
    cfg = vision.config
    x = embedded_images(vision, images)
    d, c, cls_token = visiondrop_budget(config, select)
    h, p, pv = config.feature_layer, cfg.num_prefix, config.num_visual_prefix
    for i in range(h - 1):
        x, _, _ = vision.blocks[i](x)
    with_cls = bool(cfg.class_token)
    x, attn, keys = vision.blocks[h - 1](
        x, return_cls_attention=with_cls, return_attention=not with_cls, return_keys=True
    )
    if config.vision_norm:
        x = vision.norm(x)
    if with_cls:  # [B, H, T]: the CLS row, summed over heads (the published ranking)
        scores = attn[:, :, p:].astype(jnp.float32).sum(axis=1)
    else:
        scores = jax.vmap(lambda a: T.received_attention(a, num_prefix=p))(attn)
    metric = keys[:, :, p:].astype(jnp.float32).mean(axis=1)  # [B, N, hd]
    patches = x[:, p:]

    one = lambda sc, xs, met: T.dominant_contextual(sc, xs, met, d, c)
    tokens, dom, targets = jax.vmap(one)(scores, patches, metric)
    kept = jnp.concatenate([dom, targets], axis=1)
    b = x.shape[0]
    head = [x[:, p - pv : p]]
    if cls_token:
        head.append(x[:, :1])
        kept = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), kept], axis=1)
    return jnp.concatenate([*head, tokens], axis=1), kept.astype(jnp.int32)
