"""ToDRE's stage 2: every image token leaves the deep layers once text and image stop attending
to each other.

References: ToDRE, 2025 (stage 2 as summarised in the project's ALGORITHMS.md; no public code).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.models._shared.fields import is_int, is_real
from pruneax.models.llama._prune import (
    PruneContext,
    PruneStep,
)
from pruneax.models.llama._spec_helpers import (
    check_layer,
    check_length,
    check_span,
)


@dataclasses.dataclass(frozen=True)
class TodreSpec:
    """ToDRE's stage 2: drop ALL image tokens deep in the LLM when text and image no longer
    attend to each other (frozen, hashable: static under jit).

    At layer K (``layer``; None means ``round(7 * num_layers / 8)``, resolved against the
    model's config at call time) the head-averaged attention probabilities of layer K-1 give
    two shares per batch row: ``text_to_visual``, the mean over the call's valid text queries
    (tokens outside ``[start, stop)``) of their probability mass on the image keys, and
    ``visual_to_text``, the mean over the valid image queries of their mass on every other
    (text) key, cached prefix included. If BOTH are below ``tau`` the row's image tokens leave
    layers >= K.

    The decision is per row and data-dependent, so with static shapes:

    - ``physical=False`` (default): the image tokens of the rows that drop are masked out of
      the keys of layers >= K and out of those layers' cache validity. The text tokens' outputs
      (and every later decode step) are then those of a model from which the image tokens were
      removed at layer K; all T tokens are still computed (no savings), and the image tokens'
      own outputs in layers >= K are meaningless.
    - ``physical=True``: the image tokens leave layers >= K in EVERY row, whatever the shares
      (static shapes, real savings: for FLOPs / latency measurements). ``prune_info["drop"]``
      still reports what the criterion decided.

    ``LlamaOutput.prune_info`` holds ``"drop"`` bool [B], ``"text_to_visual"`` and
    ``"visual_to_text"`` float32 [B].

    Deviations: ToDRE publishes no code and describes the shares in words; "text" here is every
    token outside the span (system prompt before the image included: under causal attention
    those queries put no mass on the image), and a row with no valid text (image) query gets a
    share of 0. The threshold 0.10 is the reported value, unverified.

    Attributes:
      start, stop: the image span ``[start, stop)`` of the call's tokens; at least one token of
        the call must lie outside it.
      layer: K >= 1, or None for ``round(7 * num_layers / 8)``.
      tau: threshold in [0, 1] (0 never drops, 1 drops whenever both shares are < 1).
      physical: drop unconditionally and physically (see above).

    Raises:
      ValueError: for a bad span, a layer < 1, tau outside [0, 1] or a non-bool ``physical``.

    References: ToDRE, 2025, stage 2 (attention share between text and visual tokens at
      depth 7L/8, threshold 0.10; as summarised in the project's ALGORITHMS.md).

    Example:
      >>> spec = TodreSpec(2, 18, physical=True)  # K = round(7 * 8 / 8) = 7 of 8 layers
      >>> spec.layer_for(8), spec.tokens_per_layer(8, 30)[-2:]
      (7, (30, 14))
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    layer: int | None = None
    tau: float = 0.10
    physical: bool = False

    def __post_init__(self):
        check_span("TodreSpec", self)
        if self.layer is not None:
            if not is_int(self.layer) or self.layer < 1:
                raise ValueError(
                    "TodreSpec: layer must be an int >= 1 (it reads layer - 1's attention) or "
                    f"None; got {self.layer!r}"
                )
            object.__setattr__(self, "layer", int(self.layer))
        if not is_real(self.tau) or not 0 <= self.tau <= 1:
            raise ValueError(f"TodreSpec: tau must be a float in [0, 1]; got {self.tau!r}")
        object.__setattr__(self, "tau", float(self.tau))
        if not isinstance(self.physical, bool):
            raise ValueError(f"TodreSpec: physical must be a bool; got {self.physical!r}")

    @property
    def num_image(self) -> int:
        """N = stop - start."""
        return self.stop - self.start

    def layer_for(self, num_layers: int) -> int:
        """K: ``layer``, or ``round(7 * num_layers / 8)`` (Python's round) when it is None."""
        return round(7 * num_layers / 8) if self.layer is None else self.layer

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """``(K,)``."""
        return (self.layer_for(num_layers),)

    def tokens_per_layer(self, num_layers: int, t: int) -> tuple[int, ...]:
        """``t`` everywhere when masking; ``t - N`` from K on when ``physical``."""
        k = self.layer_for(num_layers)
        late = t - self.num_image if self.physical else t
        return (t,) * min(k, num_layers) + (late,) * max(num_layers - k, 0)

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises unless K is in ``[1, num_layers)`` and the image span leaves a text token
        among the ``length`` tokens."""
        t = length
        k = self.layer_for(num_layers)
        if k < 1:
            raise ValueError(
                f"{where}: prune.layer resolves to {k} for num_layers = {num_layers}; it must be "
                ">= 1"
            )
        check_layer("prune.layer", k, num_layers, where)
        check_length(self, t, where)
        if self.num_image >= t:
            raise ValueError(
                f"{where}: TodreSpec needs at least one text token outside the image span "
                f"[{self.start}, {self.stop}) of the {t} input tokens"
            )

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        """``{K - 1}``: the attention whose shares decide."""
        return frozenset({self.layer_for(num_layers) - 1})

    def attention_form(self, layer: int, num_layers: int) -> tuple[str, int, int]:
        """``("key_mass", start, stop)``: the shares need only each query's probability mass on
        the image keys, computed without the [B, H, T, S] probabilities."""
        return ("key_mass", self.start, self.stop)

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """The shares of ``ctx.attn``; hides (or, ``physical``, drops) the image tokens."""
        x, valid = ctx.x, ctx.valid
        t = x.shape[1]
        if ctx.attn.shape[-1] == 1:  # our attention_form: each query's mass on the image keys
            image_mass = jnp.mean(ctx.attn[..., 0].astype(jnp.float32), axis=1)  # [B, T]
            t2v, v2t = _shares(image_mass, 1.0 - image_mass, valid, self.start, self.stop)
        else:  # the full probabilities (a subclass reading "probs")
            t2v, v2t = todre_shares(ctx.attn, valid, self.start, self.stop, ctx.offset)
        drop = (t2v < self.tau) & (v2t < self.tau)
        info = {"drop": drop, "text_to_visual": t2v, "visual_to_text": v2t}
        image = (jnp.arange(t) >= self.start) & (jnp.arange(t) < self.stop)
        if self.physical:
            text = np.concatenate([np.arange(self.start), np.arange(self.stop, t)])
            keep = jnp.broadcast_to(jnp.asarray(text, jnp.int32), (x.shape[0], text.size))
            return PruneStep(keep, None, info)
        return PruneStep(None, drop[:, None] & image[None], info)


def todre_shares(
    attn: jax.Array, valid: jax.Array, start: int, stop: int, offset: Any = 0
) -> tuple[jax.Array, jax.Array]:
    """ToDRE's attention shares ``(text_to_visual, visual_to_text)`` float32 [B] of one layer.

    Args:
      attn: [B, H, T, S] attention probabilities of the call's T queries over the S key slots
        (S = T without a cache); the call's tokens sit at slots ``[offset, offset + T)``.
      valid: [B, T] bool validity of the queries (padding queries are left out).
      start, stop: the image span among the call's tokens (static ints).
      offset: the cache slot of the call's first token.

    Returns:
      Head-averaged probabilities; ``text_to_visual`` = mean over valid text queries (outside
      the span) of the mass on the image key slots; ``visual_to_text`` = mean over valid image
      queries of the mass on all other key slots. 0 for a row without such queries.

    Example:
      >>> attn = jnp.full((1, 1, 3, 3), 1 / 3)  # token 1 is the image
      >>> t2v, v2t = todre_shares(attn, jnp.ones((1, 3), bool), 1, 2)
      >>> round(float(t2v[0]), 4), round(float(v2t[0]), 4)
      (0.3333, 0.6667)
    """
    a = jnp.mean(attn.astype(jnp.float32), axis=1)  # [B, T, S]
    image_mass = jnp.sum(
        jax.lax.dynamic_slice_in_dim(a, offset + start, stop - start, axis=2), axis=2
    )  # [B, T]
    return _shares(image_mass, jnp.sum(a, axis=2) - image_mass, valid, start, stop)


def _shares(
    image_mass: jax.Array, other_mass: jax.Array, valid: jax.Array, start: int, stop: int
) -> tuple[jax.Array, jax.Array]:
    """The two shares from each query's head-averaged mass on the image keys / the others."""
    t = image_mass.shape[1]
    image = (jnp.arange(t) >= start) & (jnp.arange(t) < stop)
    text_q = valid & ~image[None]
    image_q = valid & image[None]

    def mean(v, m):
        return jnp.sum(jnp.where(m, v, 0.0), axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)

    return mean(image_mass, text_q), mean(other_mass, image_q)
