"""FastV: in-LLM pruning of the image tokens by the previous layer's last-query attention.

References: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
Acceleration for Large Vision-Language Models" (FastV), ECCV 2024 (arXiv:2403.06764).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from pruneax import tokens as T
from pruneax.models._shared.fields import is_int, is_real
from pruneax.models.llama._prune import (
    PruneContext,
    PruneStep,
)
from pruneax.models.llama._spec_helpers import (
    check_layer,
    check_length,
    check_span,
    span_keep,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FastVSpec:
    """FastV in-LLM token pruning (frozen, hashable: static under jit).

    At layer ``layer`` (K), the image tokens ``[start, stop)`` of the input sequence (indices
    into the current call's tokens, the same for every batch row) are scored by layer K-1's
    attention probabilities: head-averaged, last query row (the last input token: batches must
    be left-padded), image keys only (``pruneax.tokens.last_query_attention``). The top
    ``num_keep`` (``pruneax.tokens.topk``: ties to the lower index) are kept in original
    order; the other image tokens leave the sequence of layers >= K and their KV cache. Text
    tokens are never dropped; kept tokens keep their original RoPE positions.

    This is the published code's "inplace" variant (hidden states pruned during the prefill,
    so the caches of layers >= K only ever hold the kept tokens, and decode steps continue at
    the original positions), except that the selection runs per batch row (the published code
    handles batch size 1). It acts on the prefill call that contains the image; decode calls
    pass ``prune=None``.

    Attributes:
      start, stop: the image span ``[start, stop)``, N = stop - start image tokens.
      layer: K >= 1 (the paper's default 2).
      keep_ratio: keep ``round(N * keep_ratio)`` image tokens, in (0, 1].
      drop_ratio: or drop ratio R in [0, 1): keep ``round(N * (1 - R))``. Give at most one
        of the two; neither means R = 0.5 (the paper's default). Stored as given.

    Raises:
      ValueError: for non-int / out-of-range fields, both ratios, or a budget of 0 tokens.

    References: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
      Inference Acceleration for Large Vision-Language Models" (FastV), ECCV 2024
      (arXiv:2403.06764), Sec. 4 (K = 2, R = 50%).

    Example:
      >>> spec = FastVSpec(start=2, stop=18, layer=2)  # 16 image tokens, R = 50%
      >>> spec.num_keep, spec.tokens_per_layer(4, 24)
      (8, (24, 24, 16, 16))
    """

    start: int
    stop: int
    layer: int = 2
    keep_ratio: float | None = None
    drop_ratio: float | None = None

    def __post_init__(self):
        check_span("FastVSpec", self)
        if not is_int(self.layer):
            raise ValueError(f"FastVSpec: layer must be an int; got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        if self.layer < 1:
            raise ValueError(
                f"FastVSpec: layer must be >= 1 (it scores with layer - 1's attention); got "
                f"{self.layer}"
            )
        if self.keep_ratio is not None and self.drop_ratio is not None:
            raise ValueError(
                f"FastVSpec: give keep_ratio or drop_ratio, not both; got {self.keep_ratio}, "
                f"{self.drop_ratio}"
            )
        if self.keep_ratio is not None:
            r = self.keep_ratio
            if not is_real(r) or not 0 < r <= 1:
                raise ValueError(f"FastVSpec: keep_ratio must be in (0, 1]; got {r!r}")
        if self.drop_ratio is not None:
            r = self.drop_ratio
            if not is_real(r) or not 0 <= r < 1:
                raise ValueError(f"FastVSpec: drop_ratio must be in [0, 1); got {r!r}")
        if self.num_keep < 1:
            raise ValueError(
                f"FastVSpec: keeps no image token: N = {self.num_image}, keep_ratio="
                f"{self.keep_ratio}, drop_ratio={self.drop_ratio}"
            )

    @property
    def num_image(self) -> int:
        """N = stop - start."""
        return self.stop - self.start

    @property
    def num_keep(self) -> int:
        """Image tokens kept: Python ``round(N * keep_ratio)`` or ``round(N * (1 - R))``."""
        if self.keep_ratio is not None:
            return round(self.num_image * self.keep_ratio)
        r = 0.5 if self.drop_ratio is None else self.drop_ratio
        return round(self.num_image * (1 - r))

    @property
    def num_dropped(self) -> int:
        """Image tokens dropped, N - num_keep."""
        return self.num_image - self.num_keep

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """``(layer,)``: the layer at whose input the image tokens are cut."""
        return (self.layer,)

    def tokens_per_layer(self, num_layers: int, t: int) -> tuple[int, ...]:
        """Tokens each of the ``num_layers`` layers processes for a call of ``t`` tokens:
        ``t`` before ``layer``, ``t - num_dropped`` from it on."""
        k = self.layer
        return (t,) * min(k, num_layers) + (t - self.num_dropped,) * max(num_layers - k, 0)

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises unless ``layer < num_layers`` and the image span lies in ``length`` tokens."""
        check_layer("prune.layer", self.layer, num_layers, where)
        check_length(self, length, where)

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        """``{layer - 1}``: the attention FastV scores with."""
        return frozenset({self.layer - 1})

    def attention_form(self, layer: int, num_layers: int) -> str:
        """``"last_query"``: FastV reads only the last query's row, so layer K-1 computes those
        probabilities [B, H, 1, S] alone (its output uses the fused attention)."""
        return "last_query"

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """Keeps the top ``num_keep`` image tokens by ``ctx.attn`` (``fastv_keep_indices``)."""
        keep = fastv_keep_indices(self, ctx.attn, ctx.x.shape[1], ctx.offset)
        return PruneStep(keep, None, {})


def fastv_keep_indices(spec: FastVSpec, attn: jax.Array, length: int, offset: Any = 0) -> jax.Array:
    """The token indices FastV keeps, from layer K-1's attention probabilities.

    Args:
      spec: the ``FastVSpec``.
      attn: [B, H, T, S] float attention probabilities of layer K-1 (S = T without a cache),
        or just the last query's row [B, H, 1, S] (only that row is read).
      length: T, the call's tokens.
      offset: the cache slot of the call's first token (0 without a cache).

    Returns:
      int32 [B, T - num_dropped]: ``arange(start)``, the kept image indices, ``arange(stop,
      T)``, ascending (indices into the call's tokens).

    Example:
      >>> import jax.numpy as jnp
      >>> spec = FastVSpec(start=1, stop=3, keep_ratio=0.5)
      >>> attn = jnp.zeros((1, 1, 4, 4)).at[0, 0, -1].set(jnp.array([0.1, 0.2, 0.6, 0.1]))
      >>> fastv_keep_indices(spec, attn, 4).tolist()
      [[0, 2, 3]]
    """
    n = spec.num_image
    row = attn[:, :, -1:, :]  # [B, H, 1, S]: the last query
    image = jax.lax.dynamic_slice_in_dim(row, offset + spec.start, n, axis=3)
    scores = jax.vmap(lambda a: T.last_query_attention(a, start=0, stop=n))(image)
    picked = jax.vmap(lambda s: T.topk(s, spec.num_keep))(scores)
    return span_keep(picked, spec.start, n, length)
