"""The VLM's config (vision encoder + decoder + which hidden state feeds the projector) and its
output pytree."""

from __future__ import annotations

import dataclasses

import jax
from flax import struct

from pruneax.models._shared.fields import is_int
from pruneax.models.llama._model import KVCache, LlamaConfig, LlamaOutput
from pruneax.models.vit._model import ViTConfig


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Hyperparameters of a ``VLM`` (frozen, hashable).

    Attributes:
      vision: the vision encoder's ``ViTConfig``; ``num_classes`` must be 0 (no classifier).
      llm: the decoder's ``LlamaConfig``.
      vision_layer: which vision hidden state feeds the projector, as an index into the
        ``num_layers + 1`` hidden states (0 = embeddings, i = after block i - 1); negative
        counts from the end. Default -2 (the penultimate, LLaVA's ``mm_vision_select_layer``).
        Only the blocks up to it run. Must be >= 1 after resolution (attention-based selection
        reads the attention of the block that produced it).

    Raises:
      ValueError: for configs of the wrong type, a vision classifier, or ``vision_layer`` out
        of range.
    """

    vision: ViTConfig
    llm: LlamaConfig
    vision_layer: int = -2

    def __post_init__(self):
        if not isinstance(self.vision, ViTConfig):
            raise ValueError(f"VLMConfig: vision must be a ViTConfig; got {type(self.vision)}")
        if not isinstance(self.llm, LlamaConfig):
            raise ValueError(f"VLMConfig: llm must be a LlamaConfig; got {type(self.llm)}")
        if self.vision.num_classes != 0:
            raise ValueError(
                f"VLMConfig: vision.num_classes must be 0 (no classifier); got "
                f"{self.vision.num_classes}"
            )
        n = self.vision.num_layers
        v = self.vision_layer
        if not is_int(v) or not -(n + 1) <= v <= n:
            raise ValueError(
                f"VLMConfig: vision_layer must be an int in [-{n + 1}, {n}] (an index into the "
                f"{n + 1} hidden states); got {v!r}"
            )
        if self.feature_layer < 1:
            raise ValueError(
                f"VLMConfig: vision_layer={v} selects the embeddings; it must select the output "
                "of a block (resolved index >= 1)"
            )

    @property
    def feature_layer(self) -> int:
        """The resolved hidden-state index h in [1, L]: blocks 0 .. h - 1 run."""
        return self.vision_layer % (self.vision.num_layers + 1)

    @property
    def num_visual(self) -> int:
        """N, the visual tokens per image (the vision encoder's patches)."""
        return self.vision.num_patches


@struct.dataclass
class VLMOutput:
    """What ``VLM.__call__`` returns (a pytree).

    Attributes:
      llm: the ``LlamaOutput`` of the decoder (logits, cache, FastV ``kept``, ...).
      visual_kept: [B, k] int32 indices (into the N patches, raster order) of the visual
        tokens that enter the LLM, ascending.
    """

    llm: LlamaOutput
    visual_kept: jax.Array

    @property
    def logits(self) -> jax.Array:
        return self.llm.logits

    @property
    def cache(self) -> KVCache | None:
        return self.llm.cache
