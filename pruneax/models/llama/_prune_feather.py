"""FEATHER: two-stage in-LLM pruning by a no-RoPE last-query criterion plus a uniform grid.

References: Endo et al., "Feather the Throttle: Revisiting Visual Token Pruning for
Vision-Language Model Acceleration", 2024 (arXiv:2412.13180).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

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
    staged_tokens,
)


@dataclasses.dataclass(frozen=True)
class FeatherSpec:
    """FEATHER in-LLM token pruning, one or two stages (frozen, hashable: static under jit).

    Criterion (at each pruning layer l, ``feather_criterion``): the last token's query against
    the image keys, both from layer l's OWN ``q_proj`` / ``k_proj`` applied to its
    ``input_layernorm``-ed INPUT hidden states, WITHOUT RoPE, softmax over the image keys only
    (scale 1/sqrt(head_dim)), averaged over the query heads (``pruneax.tokens.
    query_key_attention``). Batches must be left-padded (the last token is real).

    Stage 1 at ``layers[0]``: keep ``num_keep[0] = min(N, int(ratios[0] * N) + G)`` image
    tokens with ``pruneax.tokens.feather``: the G tokens of the uniform grid (every
    ``stride``-th row and column of ``grid``) plus the best-scoring other image tokens.
    Stage 2 at ``layers[1]`` (optional): keep the top ``num_keep[1] = int(ratios[1] *
    num_keep[0])`` survivors by the same criterion recomputed there (plain ``topk``: the
    survivors no longer form a grid). Image tokens that are not kept leave the sequence of the
    later layers and their KV caches; text tokens are never dropped; kept tokens keep their
    original RoPE positions (gathered, not renumbered).

    Deviation from the published method: FEATHER's stage 1 keeps the UNION of the top
    ``int(0.3 N)`` and the grid, whose size depends on the scores (between max(int(0.3 N), G)
    and int(0.3 N) + G). Shapes must be static here, so stage 1 keeps its upper bound, the
    grid plus the top ``int(ratio N)`` NON-grid tokens: a superset of the published union that
    equals it whenever the published top-k holds no grid token, and otherwise adds the next
    best non-grid tokens. Stage 2 then takes ``int(ratios[1] * |S1|)`` of this static
    ``|S1|``. The selection runs per batch row (the published code handles batch size 1).

    Attributes:
      start, stop: the image span ``[start, stop)`` of the call's tokens, N = stop - start.
      grid: ``(rows, cols)`` of the image patch grid in raster order, rows * cols == N; None
        means square, ``(sqrt N, sqrt N)`` (stored resolved).
      layers: one or two strictly increasing layer indices >= 0 (published: (8, 16)).
      ratios: one ratio in (0, 1] per layer (published: 0.3 of N, then 0.09 of stage 1).
      stride: the grid's row / column stride >= 1 (published: 3).

    Raises:
      ValueError: for a bad span, a grid that does not match N (or None for a non-square N),
        layers that are not one or two increasing ints >= 0, ratios out of (0, 1] or of another
        length than ``layers``, a stride < 1, or a stage that keeps no token.

    References: Endo et al., "Feather the Throttle: Revisiting Visual Token Pruning for
      Vision-Language Model Acceleration", 2024 (arXiv:2412.13180).

    Example:
      >>> spec = FeatherSpec(3, 19, grid=(4, 4), layers=(1, 3), ratios=(0.25, 0.5), stride=2)
      >>> spec.num_grid, spec.num_keep, spec.tokens_per_layer(4, 24)
      (4, (8, 4), (24, 16, 16, 12))
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    grid: tuple[int, int] | None = None
    layers: tuple[int, ...] = (8, 16)
    ratios: tuple[float, ...] = (0.3, 0.09)
    stride: int = 3

    def __post_init__(self):
        check_span("FeatherSpec", self)
        side = math.isqrt(self.num_image)
        if self.grid is None and side * side != self.num_image:
            raise ValueError(
                f"FeatherSpec: grid=None needs a square image (N = {self.num_image} is not); "
                "give grid=(rows, cols)"
            )
        try:
            grid = (side, side) if self.grid is None else tuple(self.grid)
        except TypeError:
            grid = ()
        if len(grid) != 2 or not all(is_int(g) and g >= 1 for g in grid):
            raise ValueError(
                f"FeatherSpec: grid must be (rows, cols) of ints >= 1; got {self.grid!r}"
            )
        if grid[0] * grid[1] != self.num_image:
            raise ValueError(
                f"FeatherSpec: grid {grid} has {grid[0] * grid[1]} cells; the image span "
                f"[{self.start}, {self.stop}) has N = {self.num_image} tokens"
            )
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        if not is_int(self.stride) or self.stride < 1:
            raise ValueError(f"FeatherSpec: stride must be an int >= 1; got {self.stride!r}")
        object.__setattr__(self, "stride", int(self.stride))
        layers = tuple(self.layers) if isinstance(self.layers, tuple | list) else None
        if (
            layers is None
            or len(layers) not in (1, 2)
            or not all(is_int(i) and i >= 0 for i in layers)
            or (len(layers) == 2 and not layers[0] < layers[1])
        ):
            raise ValueError(
                "FeatherSpec: layers must be one or two strictly increasing ints >= 0; got "
                f"{self.layers!r}"
            )
        object.__setattr__(self, "layers", tuple(int(i) for i in layers))
        ratios = tuple(self.ratios) if isinstance(self.ratios, tuple | list) else None
        if ratios is None or len(ratios) != len(layers):
            raise ValueError(
                f"FeatherSpec: ratios must have one entry per layer ({len(layers)}); got "
                f"{self.ratios!r}"
            )
        for r in ratios:
            if not is_real(r) or not 0 < r <= 1:
                raise ValueError(f"FeatherSpec: ratios must be in (0, 1]; got {self.ratios!r}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        if min(self.num_keep) < 1:
            raise ValueError(
                f"FeatherSpec: stage 2 keeps no image token: int({self.ratios[-1]} * "
                f"{self.num_keep[0]}) = 0; raise ratios[1]"
            )

    @classmethod
    def with_budget(
        cls, start: int, stop: int, keep: int, layer: int, *, grid=None, stride: int = 3
    ) -> FeatherSpec | None:
        """One FEATHER stage at ``layer`` keeping exactly ``keep`` image tokens: the uniform
        grid at ``stride`` (or the smallest larger stride whose grid has fewer than ``keep``
        tokens) plus the ``keep - G`` best other tokens. For comparisons at an equal token
        budget with methods that keep ``keep`` tokens (FastV at the same layer).

        Args:
          start, stop, grid: as the constructor.
          keep: image tokens to keep, 1 <= keep <= N.
          layer: the pruning layer.
          stride: the smallest grid stride tried (published: 3).

        Returns:
          The spec, or None when no grid leaves room for a scored token (``keep`` = 1, or a
          grid of one token already fills the budget).

        Raises:
          ValueError: for a ``keep`` outside [1, N], or as the constructor.

        Example:
          >>> spec = FeatherSpec.with_budget(1, 65, 12, 2, grid=(8, 8))
          >>> spec.stride, spec.num_grid, spec.num_keep
          (3, 9, (12,))
          >>> spec = FeatherSpec.with_budget(1, 65, 8, 2, grid=(8, 8))  # stride 3's 9 > 8
          >>> spec.stride, spec.num_grid, spec.num_keep
          (4, 4, (8,))
          >>> FeatherSpec.with_budget(1, 65, 1, 2, grid=(8, 8)) is None
          True
        """
        probe = cls(start, stop, grid=grid, layers=(layer,), ratios=(1.0,), stride=stride)
        n = probe.num_image
        if not is_int(keep) or not 1 <= keep <= n:
            raise ValueError(
                f"FeatherSpec.with_budget: keep must be an int in [1, {n}]; got {keep!r}"
            )
        rows, cols = probe.grid
        while T.uniform_grid(probe.grid, stride).shape[0] >= keep and stride < max(rows, cols):
            stride += 1
        g = int(T.uniform_grid(probe.grid, stride).shape[0])
        if g >= keep:
            return None
        ratio = (keep - g + 0.5) / n  # int(ratio * n) == keep - g
        return cls(start, stop, grid=probe.grid, layers=(layer,), ratios=(ratio,), stride=stride)

    @property
    def num_image(self) -> int:
        """N = stop - start."""
        return self.stop - self.start

    @property
    def num_grid(self) -> int:
        """G: tokens of the uniform grid (``pruneax.tokens.uniform_grid(grid, stride)``)."""
        rows, cols = self.grid
        return -(-rows // self.stride) * -(-cols // self.stride)

    @property
    def num_keep(self) -> tuple[int, ...]:
        """Image tokens kept after each stage: ``min(N, int(ratios[0] N) + G)``, then
        ``int(ratios[1] * that)``."""
        k1 = min(self.num_image, int(self.ratios[0] * self.num_image) + self.num_grid)
        if len(self.ratios) == 1:
            return (k1,)
        return (k1, int(self.ratios[1] * k1))

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """``layers``: the layers at whose input image tokens are cut."""
        return self.layers

    def tokens_per_layer(self, num_layers: int, t: int) -> tuple[int, ...]:
        """Tokens each of the ``num_layers`` layers processes for a call of ``t`` tokens:
        ``t``, then ``t - N + num_keep[j]`` from ``layers[j]`` on."""
        return staged_tokens(self.layers, self.num_image, self.num_keep, num_layers, t)

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises unless ``layers[-1] < num_layers`` and the image span lies in ``length``."""
        check_layer("prune.layers[-1]", self.layers[-1], num_layers, where)
        check_length(self, length, where)

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        """None: the criterion comes from the pruning layer's own projections."""
        return frozenset()

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """Stage 1 (grid + top) or 2 (top) at ``layer``; reports ``scores_{layer}``."""
        stage = self.layers.index(layer)
        n = self.num_image if stage == 0 else self.num_keep[0]
        x = ctx.x
        scores = feather_criterion(ctx.block, x, self.start, self.start + n)
        k = self.num_keep[stage]
        if stage == 0:
            pick = lambda s: T.feather(s, k, grid=self.grid, stride=self.stride)
        else:
            pick = lambda s: T.topk(s, k)
        picked = jax.vmap(pick)(scores)
        keep = span_keep(picked, self.start, n, x.shape[1])
        return PruneStep(keep, None, {f"scores_{layer}": scores})


def feather_criterion(block: Any, x: jax.Array, start: int, stop: int) -> jax.Array:
    """FEATHER's criterion at a decoder layer, from that layer's INPUT hidden states.

    ``block.input_layernorm``, then ``block.self_attn.project_qk`` (q / k projections, biases
    included, NO RoPE) of the last token (query) and of the tokens ``[start, stop)`` (keys);
    ``pruneax.tokens.query_key_attention`` per row (softmax over those keys, head mean).

    Args:
      block: a ``LlamaBlock``.
      x: [B, T, D] hidden states entering the block.
      start, stop: the image tokens among the T (static ints).

    Returns:
      float32 [B, stop - start].

    References: Endo et al., "Feather the Throttle", 2024 (arXiv:2412.13180).

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.llama import LlamaLM, llm_config
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> feather_criterion(model.layers[0], jnp.ones((2, 6, 64)), 1, 5).shape
      (2, 4)
    """
    norm = block.input_layernorm
    q, _ = block.self_attn.project_qk(norm(x[:, -1:]))  # [B, 1, H, hd]
    _, k = block.self_attn.project_qk(norm(x[:, start:stop]))  # [B, n, KV, hd]
    keys = jnp.swapaxes(k, 1, 2)  # [B, KV, n, hd]
    return jax.vmap(T.query_key_attention)(q[:, 0], keys)
