"""The VLM's config (vision encoder + decoder + which hidden state feeds the projector) and its
output pytree."""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import struct

from pruneax.models._shared.fields import is_int, is_real
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
      feature_select: which tokens of that hidden state become visual tokens (LLaVA's
        ``vision_feature_select_strategy``): ``"default"`` drops the prefix tokens (CLS, ...),
        ``"full"`` keeps them (they come first, are never dropped by pre-LLM selection and
        count in ``num_visual``). Encoders without prefix tokens (SigLIP) give the same for both.
      projector: ``"mlp2x_gelu"`` (LLaVA-1.5: ``Linear(Dv, D) -> act -> Linear(D, D)``) or
        ``"linear"`` (PaliGemma: ``Linear(Dv, D)``).
      projector_act: the MLP projector's activation, ``"gelu"`` (exact, erf) or
        ``"gelu_tanh"``; ignored by ``"linear"``.
      projector_bias: whether the projector's linears have biases (LLaVA's
        ``multimodal_projector_bias``).
      image_scale: multiplies the projector outputs (PaliGemma: ``hidden_size ** -0.5``;
        the LLM's embedding normaliser, if any, then applies to them as to the text).
      prefix_lm: attention over the prompt (image and text tokens given to the call) is
        bidirectional, generated tokens causal (PaliGemma's prefix-LM); False: causal.
      image_token_id: the checkpoint's image placeholder token id (bookkeeping, for splitting
        Hugging Face ``input_ids``), or None.
      vision_norm: apply the vision encoder's final norm to the features (PaliGemma reads
        SigLIP's ``last_hidden_state``, after ``post_layernorm``); needs the last block as the
        feature layer and a ViT with a final norm over every token.
      position_offset: added to every RoPE position of the prompt (PaliGemma numbers
        positions from 1); decode steps continue after the prompt's last position.

    Raises:
      ValueError: for configs of the wrong type, a vision classifier, ``vision_layer`` out
        of range, or an option outside the values listed above.
    """

    vision: ViTConfig
    llm: LlamaConfig
    vision_layer: int = -2
    feature_select: str = "default"
    projector: str = "mlp2x_gelu"
    projector_act: str = "gelu"
    projector_bias: bool = True
    image_scale: float = 1.0
    prefix_lm: bool = False
    image_token_id: int | None = None
    vision_norm: bool = False
    position_offset: int = 0

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
        self._check_options()

    def _check_options(self) -> None:
        for name, allowed in (
            ("feature_select", ("default", "full")),
            ("projector", ("mlp2x_gelu", "linear")),
            ("projector_act", ("gelu", "gelu_tanh")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"VLMConfig: {name} must be one of {list(allowed)}; got {getattr(self, name)!r}"
                )
        for name in ("projector_bias", "prefix_lm", "vision_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VLMConfig: {name} must be a bool; got {getattr(self, name)!r}")
        if not is_real(self.image_scale) or not 0 < self.image_scale < math.inf:
            raise ValueError(
                f"VLMConfig: image_scale must be a finite float > 0; got {self.image_scale!r}"
            )
        if self.vision_norm and (
            self.feature_layer != self.vision.num_layers or self.vision.final_norm != "all"
        ):
            raise ValueError(
                "VLMConfig: vision_norm=True needs the last block as the feature layer "
                f"(vision_layer -1) and vision.final_norm 'all'; got vision_layer="
                f"{self.vision_layer}, final_norm={self.vision.final_norm!r}"
            )
        if not is_int(self.position_offset) or self.position_offset < 0:
            raise ValueError(
                f"VLMConfig: position_offset must be an int >= 0; got {self.position_offset!r}"
            )
        if self.image_token_id is not None and (
            not is_int(self.image_token_id) or self.image_token_id < 0
        ):
            raise ValueError(
                f"VLMConfig: image_token_id must be an int >= 0 or None; got "
                f"{self.image_token_id!r}"
            )

    @property
    def feature_layer(self) -> int:
        """The resolved hidden-state index h in [1, L]: blocks 0 .. h - 1 run."""
        return self.vision_layer % (self.vision.num_layers + 1)

    @property
    def num_visual_prefix(self) -> int:
        """Prefix tokens (CLS, ...) among the visual tokens: the encoder's with
        ``feature_select="full"``, else 0. They are always kept."""
        return self.vision.num_prefix if self.feature_select == "full" else 0

    @property
    def num_visual(self) -> int:
        """Visual tokens per image before selection: the vision encoder's N patches, plus its
        prefix tokens with ``feature_select="full"``."""
        return self.vision.num_patches + self.num_visual_prefix


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
