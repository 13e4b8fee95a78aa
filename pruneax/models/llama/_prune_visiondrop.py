"""VisionDrop's LLM stages: progressive dropping of image tokens by visual-only attention, with
the dropped tokens merged into a few contextual tokens.

Published algorithm (``Ruixxxx/VisionDrop@b9d5df9``, ``llava/model/modeling_llama_visiondrop.py``:
``LlamaModel.visiondrop_forward`` / ``visiondrop_rank_drop``), after the output of each block L
in ``layer_list`` (1-based; pruneax: at the INPUT of 0-based layer L, the same point):

1. The image tokens' hidden states go through block L + 1's ``input_layernorm``, ``q_proj`` /
   ``k_proj`` and RoPE at the tokens' current positions. Attention of every IMAGE query over
   every key of the sequence (causal mask), softmax over the full row in float32, mean over the
   heads, restricted to the image keys, mean over the image queries: one score per image token.
2. Dominant tokens: the top ``d_s`` by that score, kept in original order.
3. Contextual tokens (``pruneax.tokens.contextual_merge``): the rest, compared through block
   L + 1's post-RoPE key states averaged over the KV heads, fold into ``c_s`` tokens.
4. The image span becomes ``[dominant, contextual]``; text is untouched; the positions of the
   shortened sequence are renumbered contiguously. Decode steps then run each later layer at
   the position shifted by the tokens removed before it (the published decode branch).

Deviations (pruneax): the selection runs per batch row with LEFT padding (the published code
compacts right-padded rows, batch size 1 in its evaluation); padding keys are masked out of
the scores and the renumbering counts valid tokens only; with grouped-query attention each KV
head serves its query group (the published ``matmul`` assumes as many KV heads as query heads,
LLaVA-1.5's case); the softmax stays in float32 (the published code casts it back to fp16
before averaging); ``pruneax.tokens.topk`` breaks ties toward the lower index; the scores see
the keys of the current call only (the published prefill is one call).

References: Xu et al., "Rethinking Visual Token Reduction in LVLMs under Cross-modal
Misalignment" (VisionDrop), AAAI 2026 (arXiv:2506.22283).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models._shared.fields import is_int
from pruneax.models.llama._prune import (
    PruneContext,
    PruneStep,
)
from pruneax.models.llama._scores import block_query_probs
from pruneax.models.llama._spec_helpers import (
    check_layer,
    check_length,
    check_span,
    context_positions,
    renumber,
    span_keep,
    staged_tokens,
)


def visiondrop_scores(
    block: Any,
    x: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
    start: int,
    stop: int,
) -> tuple[jax.Array, jax.Array]:
    """VisionDrop's visual-only score of the image tokens and their merge metric at one layer.

    Args:
      block: the ``LlamaBlock`` whose input the tokens are (its ``input_layernorm`` and
        ``self_attn`` q / k projections are used).
      x: [B, T, D] hidden states entering the block.
      positions: [B, T] int RoPE positions of the tokens.
      valid: [B, T] bool: real tokens (padding keys are masked out).
      start, stop: the image tokens ``[start, stop)`` among the T (static ints).

    Returns:
      ``(scores [B, n] float32, metric [B, n, head_dim] float32)`` with n = stop - start: the
      attention the image queries give each image key (causal, softmax over all keys, mean
      over heads and over the image queries), and the post-RoPE image keys averaged over the
      KV heads.

    Raises:
      ValueError: for arrays of the wrong shape or a span outside the T tokens.

    References: Xu et al., VisionDrop, AAAI 2026 (arXiv:2506.22283); ``Ruixxxx/VisionDrop``
      ``visiondrop_rank_drop``.

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.llama import LlamaLM, llm_config
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> x, pos = jnp.ones((2, 6, 64)), jnp.arange(6)[None].repeat(2, 0)
      >>> s, m = visiondrop_scores(model.layers[0], x, pos, jnp.ones((2, 6), bool), 1, 5)
      >>> s.shape, m.shape
      ((2, 4), (2, 4, 16))
    """
    if jnp.ndim(x) != 3:
        raise ValueError(f"visiondrop_scores: x must be [B, T, D]; got shape {jnp.shape(x)}")
    b, t, _ = x.shape
    for name, a in (("positions", positions), ("valid", valid)):
        if jnp.shape(a) != (b, t):
            raise ValueError(
                f"visiondrop_scores: {name} must be [B, T] = {(b, t)}; got {jnp.shape(a)}"
            )
    if not (is_int(start) and is_int(stop) and 0 <= start < stop <= t):
        raise ValueError(
            f"visiondrop_scores: need 0 <= start < stop <= T = {t}; got {start!r}, {stop!r}"
        )
    probs, k = block_query_probs(block, x, positions, valid, start, stop)
    scores = probs.mean(axis=1)[:, :, start:stop].mean(axis=1)  # heads, then image queries
    metric = k[:, start:stop].mean(axis=2)
    return scores, metric


@dataclasses.dataclass(frozen=True)
class VisionDropSpec:
    """VisionDrop's in-LLM stages (frozen, hashable: static under jit).

    At the input of each layer in ``layers`` (the output of that many blocks: the published
    1-based ``layer_list``), the ``n`` current image tokens starting at ``start`` are scored by
    ``visiondrop_scores`` with that layer's own projections; the top ``tokens[s][0]`` stay
    (dominant, original order), the rest merge into ``tokens[s][1]`` contextual tokens
    (``pruneax.tokens.contextual_merge``: each target plus the mean of the tokens most similar
    to it); the span becomes ``[dominant, contextual]`` and the sequence's positions are
    renumbered over its valid tokens (see the module docstring for the decode rule and the
    deviations). Text tokens are never dropped. ``LlamaOutput.kept`` lists, for the contextual
    tokens, the call index of their target.

    Attributes:
      start, stop: the image span ``[start, stop)`` of the call's tokens (N = stop - start),
        the tokens the first stage scores (for a VLM: ``[P, P + pv + k)`` after the vision
        stage).
      layers: strictly increasing layers >= 1 (published, LLaVA-1.5-7B: (8, 16, 24)).
      tokens: one ``(dominant, contextual)`` pair per layer, each total smaller than the one
        before (N first); ``dominant >= 1``, ``contextual >= 0`` (published for 48 tokens into
        the LLM, ``--dominant 42 --contextual 6``: ((30, 5), (22, 4), (16, 3))).

    Raises:
      ValueError: for a bad span, layers, or token counts.

    References: Xu et al., VisionDrop, AAAI 2026 (arXiv:2506.22283); ``Ruixxxx/VisionDrop``
      ``visiondrop_forward``.

    Example:
      >>> spec = VisionDropSpec(2, 14, layers=(1, 3), tokens=((6, 2), (3, 1)))
      >>> spec.num_kept, spec.tokens_per_layer(4, 20)
      ((8, 4), (20, 16, 16, 12))
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    layers: tuple[int, ...] = (8, 16, 24)
    tokens: tuple[tuple[int, int], ...] = ((30, 5), (22, 4), (16, 3))

    def __post_init__(self):
        check_span("VisionDropSpec", self)
        layers = tuple(self.layers) if isinstance(self.layers, tuple | list) else None
        if (
            not layers
            or not all(is_int(i) and i >= 1 for i in layers)
            or list(layers) != sorted(set(layers))
        ):
            raise ValueError(
                f"VisionDropSpec: layers must be strictly increasing ints >= 1; got {self.layers!r}"
            )
        object.__setattr__(self, "layers", tuple(int(i) for i in layers))
        try:
            pairs = tuple((int(d), int(c)) for d, c in self.tokens)
            ok = all(is_int(d) and is_int(c) for d, c in self.tokens)
        except (TypeError, ValueError):
            ok = False
        if not ok or len(pairs) != len(layers):
            raise ValueError(
                f"VisionDropSpec: tokens must be one (dominant, contextual) int pair per layer "
                f"({len(layers)}); got {self.tokens!r}"
            )
        before = self.num_image
        for d, c in pairs:
            if d < 1 or c < 0 or d + c >= before:
                raise ValueError(
                    f"VisionDropSpec: each stage needs dominant >= 1, contextual >= 0 and "
                    f"dominant + contextual < the {before} image tokens before it; got "
                    f"{self.tokens!r}"
                )
            before = d + c
        object.__setattr__(self, "tokens", pairs)

    @classmethod
    def with_budget(
        cls, start: int, stop: int, keep: int, num_layers: int, *, num_stages: int = 3
    ) -> VisionDropSpec:
        """The published schedule's shape for other budgets and depths.

        Stages at layers ``round(j L / (S + 1))``, j = 1..S (duplicates and layers outside
        ``[1, L - 1]`` dropped); stage s keeps ``round(N (keep / N)^(s / S'))`` tokens (S' the
        stages left; strictly decreasing, the last exactly ``keep``), of which ``round(0.15 x
        total)`` are contextual. For N = 48, keep = 19, L = 32 this is the published LLaVA-1.5
        schedule: layers (8, 16, 24), tokens ((30, 5), (22, 4), (16, 3)).

        Args:
          start, stop: the image span (N = stop - start tokens enter the first stage).
          keep: image tokens after the last stage, ``1 <= keep < N``.
          num_layers: the LLM's layers L (>= 2).
          num_stages: S >= 1.

        Returns:
          The spec (fewer stages when L or N - keep leave no room for S).

        Raises:
          ValueError: for ``keep`` outside ``[1, N)``, ``num_layers < 2`` or ``num_stages < 1``.

        Example:
          >>> VisionDropSpec.with_budget(35, 83, 19, 32).tokens
          ((30, 5), (22, 4), (16, 3))
        """
        n = stop - start if is_int(start) and is_int(stop) else -1
        if not is_int(keep) or not 1 <= keep < n:
            raise ValueError(
                f"VisionDropSpec.with_budget: keep must be an int in [1, {n - 1}]; got {keep!r}"
            )
        if not is_int(num_layers) or num_layers < 2:
            raise ValueError(
                f"VisionDropSpec.with_budget: num_layers must be an int >= 2; got {num_layers!r}"
            )
        if not is_int(num_stages) or num_stages < 1:
            raise ValueError(
                f"VisionDropSpec.with_budget: num_stages must be an int >= 1; got {num_stages!r}"
            )
        layers = sorted(
            {min(max(round(j * num_layers / (num_stages + 1)), 1), num_layers - 1)
             for j in range(1, num_stages + 1)}
        )  # fmt: skip
        layers = layers[: max(1, min(len(layers), n - keep))]
        m = len(layers)
        totals, before = [], n
        for s in range(1, m + 1):
            total = keep if s == m else round(n * (keep / n) ** (s / m))
            total = min(max(total, keep + m - s), before - 1)
            totals.append(total)
            before = total
        tokens = tuple((t - round(0.15 * t), round(0.15 * t)) for t in totals)
        return cls(start, stop, layers=tuple(layers), tokens=tokens)

    @property
    def num_image(self) -> int:
        """N = stop - start."""
        return self.stop - self.start

    @property
    def num_kept(self) -> tuple[int, ...]:
        """Image tokens after each stage: ``dominant + contextual``."""
        return tuple(d + c for d, c in self.tokens)

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """``layers``."""
        return self.layers

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        """None: the scores come from the pruning layer's own projections."""
        return frozenset()

    def tokens_per_layer(self, num_layers: int, t: int) -> tuple[int, ...]:
        """``t`` before ``layers[0]``, then ``t - N + num_kept[s]`` from ``layers[s]`` on."""
        return staged_tokens(self.layers, self.num_image, self.num_kept, num_layers, t)

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises unless ``layers[-1] < num_layers`` and the image span lies in ``length``."""
        check_layer("prune.layers[-1]", self.layers[-1], num_layers, where)
        check_length(self, length, where)

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """One stage: score, keep the dominant tokens, merge the rest, renumber; reports
        ``scores_{layer}`` (the image tokens' scores before the stage)."""
        s = self.layers.index(layer)
        n = self.num_image if s == 0 else self.num_kept[s - 1]
        d, c = self.tokens[s]
        x, valid = ctx.x, ctx.valid
        t = x.shape[1]
        positions = context_positions(ctx)
        a, z = self.start, self.start + n
        scores, metric = visiondrop_scores(ctx.block, x, positions, valid, a, z)

        one = lambda sc, img, met: T.dominant_contextual(sc, img, met, d, c)
        span, dom, targets = jax.vmap(one)(scores, x[:, a:z], metric)
        keep = span_keep(jnp.concatenate([dom, targets], axis=1), a, n, t)
        new_x = jnp.concatenate([x[:, :a], span, x[:, z:]], axis=1)
        new_positions = renumber(positions, jnp.take_along_axis(valid, keep, axis=1))
        return PruneStep(keep, None, {f"scores_{layer}": scores}, new_x, new_positions)
