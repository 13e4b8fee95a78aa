"""LLaVA-NeXT's config (the VLM, the tiling resolutions, the feature strategy) and its output
pytree; see ``_next.py``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

from pruneax.models.llama._model import KVCache, LlamaOutput
from pruneax.models.vlm._anyres import AnyresLayout, anyres_layout, check_pinpoints
from pruneax.models.vlm._config import VLMConfig


@dataclasses.dataclass(frozen=True)
class LlavaNextConfig:
    """Hyperparameters of a ``LlavaNext`` (frozen, hashable).

    Attributes:
      vlm: the ``VLMConfig``: a vision tower with a square image, the LLM, ``vision_layer``
        (transformers' ``vision_feature_layer``, an int) and ``feature_select``
        (``vision_feature_select_strategy``): ``"default"`` drops the CLS token of every
        tile (the tower must have exactly one prefix token), ``"full"`` keeps every token
        (the tower must have none: the tile features must form a g x g grid, as
        transformers' packing requires). ``prefix_lm`` must be False.
      image_grid_pinpoints: the tiling resolutions ``((height, width), ...)``, multiples of
        the vision image size.

    Raises:
      ValueError: for a non-square vision image, bad pinpoints or a strategy that does not
        fit the tower.

    Example:
      >>> from pruneax.models.llama import llm_config
      >>> from pruneax.models.vit import ViTConfig
      >>> vit = ViTConfig(image_size=24, patch_size=6, hidden_size=16, num_layers=2,
      ...                 num_heads=2, mlp_dim=32, num_classes=0)
      >>> cfg = LlavaNextConfig(VLMConfig(vit, llm_config("tiny", num_layers=1)), [[24, 48]])
      >>> cfg.layout((20, 50)).num_tokens
      52
    """

    vlm: VLMConfig
    image_grid_pinpoints: Any

    def __post_init__(self):
        if not isinstance(self.vlm, VLMConfig):
            raise ValueError(f"LlavaNextConfig: vlm must be a VLMConfig; got {type(self.vlm)}")
        v = self.vlm.vision
        h, w = v.image_hw
        if h != w:
            raise ValueError(f"LlavaNextConfig: the vision image must be square; got {(h, w)}")
        points = check_pinpoints(self.image_grid_pinpoints, h, "LlavaNextConfig")
        object.__setattr__(self, "image_grid_pinpoints", points)
        if self.vlm.prefix_lm:
            raise ValueError("LlavaNextConfig: vlm.prefix_lm must be False (a causal LLM)")
        strategy = self.vlm.feature_select
        want = {"default": 1, "full": 0}[strategy]
        if v.num_prefix != want:
            raise ValueError(
                f"LlavaNextConfig: vlm.feature_select={strategy!r} needs a vision "
                f"tower with {want} prefix token(s) (the tile features must form a g x g grid); "
                f"it has {v.num_prefix}"
            )

    @property
    def tile_size(self) -> int:
        """S, the vision encoder's square input size."""
        return self.vlm.vision.image_hw[0]

    def layout(self, image_size: Any) -> AnyresLayout:
        """The ``AnyresLayout`` of an image of original ``(height, width)``."""
        v = self.vlm.vision
        return anyres_layout(
            image_size, self.image_grid_pinpoints, tile_size=v.image_hw[0], patch_size=v.patch_size
        )


@struct.dataclass
class LlavaNextOutput:
    """What ``LlavaNext.__call__`` returns (a pytree).

    Attributes:
      llm: the decoder's ``LlamaOutput``.
      attention_mask: [B, T] bool, the valid prompt tokens (False = padding).
      visual_kept: [B, n_max] int32 positions (into the image's packed, unpruned tokens) of the
        visual tokens that enter the LLM, ascending; -1 pads the shorter rows.
    """

    llm: LlamaOutput
    attention_mask: jax.Array
    visual_kept: jax.Array

    @property
    def logits(self) -> jax.Array:
        return self.llm.logits

    @property
    def cache(self) -> KVCache | None:
        return self.llm.cache


def _static_sizes(image_sizes: Any, b: int) -> tuple[tuple[int, int], ...]:
    try:
        sizes = np.asarray(image_sizes)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "LlavaNext: image_sizes must be static (NumPy / Python ints), not a traced array; "
            "mark it static under jit"
        ) from None
    if sizes.shape != (b, 2) or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(
            f"LlavaNext: image_sizes must be integer [B, 2] (height, width) with B = {b}; got "
            f"shape {sizes.shape} dtype {sizes.dtype}"
        )
    return tuple((int(h), int(w)) for h, w in sizes)
