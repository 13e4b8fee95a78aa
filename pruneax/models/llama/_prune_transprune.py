"""TransPrune's LLM stages: progressive dropping of image tokens scored by their token transition
variation (TTV) plus the instruction-guided attention (IGA) they receive.

Published algorithm (``liaolea/TransPrune``, ``llava/model/modeling_llama_transprune.py``:
``LlamaDecoderLayer_TransPrune.compute_transf_weight``, ``LlamaModel.transprune_forward`` /
``transprune_rank_drop``; read at f4cb73b8):

1. TTV. Every block k in ``accmulating_layer_list`` (1-based: after block k has run) measures
   its two sub-blocks: b = the sub-block's normalised input (``input_layernorm`` /
   ``post_attention_layernorm`` output), a = its output before the residual add; per token
   ``w = (||a|| / ||b||) * exp(1 - cos(b, a)) / sum(exp(1 - cos(b, a)))`` and the layer's
   vector is ``w_attn + w_mlp``. The vectors are kept for the rest of the forward pass and
   gathered along with every later pruning.
2. At the output of each block L in ``pruning_layer_list`` (pruneax: at the INPUT of 0-based
   layer L, the same point) with n current image tokens: TTV_img = the sum of the kept vectors
   on the image span, divided by (its sum + 1e-8); IGA = with block L + 1's ``input_layernorm``,
   q / k projections and RoPE at the current positions, the attention of every token AFTER the
   image span (the instruction through "ASSISTANT:") over every key (causal), softmax in
   float32, mean over the heads, the image keys, mean over those queries, divided by (its sum
   + 1e-8).
3. Score = TTV_img + IGA; the top ``int(N * ratio[s])`` stay in original order (N = the image
   tokens entering the LLM, ``ratio`` the ``image_token_ratio_list`` without its leading 1.0),
   the rest are dropped, and the positions of the shortened sequence are renumbered 0..len-1.
   Decode steps then run each later layer at the position shifted by the tokens removed before
   it (``LlamaLM`` continues each layer's own numbering, ``layer_shifts``).

Defaults (every published script, LLaVA-1.5-7B and 1.6-7B): ``accmulating_layer_list = [7..12]``
(layers 6..11 here, 0-based), ``pruning_layer_list = [7, 9, 12]``, ratios ``[0.875, 0.625,
0.125]``: 576 -> 504 -> 360 -> 72 image tokens.

Deviations (pruneax): the TTV softmax runs over the valid tokens of ONE example at the
measuring layer (the published ``exp / exp.sum()`` has no ``dim``: it runs over every token of
every batch row; identical for batch 1, the published evaluation's only size); ``||b||`` is
guarded by ``max(||b||, 1e-8)`` (0 for zero padding embeddings; the cosine uses torch's eps
1e-8 on both norms, as ``F.cosine_similarity``); the selection runs per batch row with LEFT
padding (the published code accepts right padding only, and inside its per-row loop replaces
the stored vectors by one-row tensors: "Only available when batch_size is 1"), padding keys
are masked out of the IGA, invalid queries and tokens are left out of its means and of the
TTV softmax, and the renumbering counts valid tokens only; with grouped-query
attention each KV head serves its query group (the published ``matmul`` needs as many KV heads
as query heads, LLaVA's case); the IGA softmax stays in float32 (the published code casts it
back to fp16 before averaging); ``pruneax.tokens.topk`` breaks ties toward the lower index;
TTV and IGA see the tokens of the current call only (the published prefill is one call).

References: "TransPrune: Token Transition Pruning for Efficient Large Vision-Language Model",
CVPR 2026 (arXiv:2507.20630).
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models._shared.fields import is_int
from pruneax.models.llama._layers import TRANSITION_EPS, transition_stats
from pruneax.models.llama._prune import (
    PruneContext,
    PruneStep,
)
from pruneax.models.llama._scores import block_query_probs
from pruneax.models.llama._spec_helpers import (
    check_layer,
    check_span,
    context_positions,
    renumber,
    span_keep,
    staged_tokens,
)

_F32 = jnp.float32
_NORM_EPS = 1e-8  # the published "/ (sum + 1e-8)" of both criteria


def _ttv_from_stats(stats: jax.Array, valid: jax.Array) -> jax.Array:
    """TTV [B, T] of one sub-block from its ``(||b||, ||a||, cos)`` [B, T, 3] over ``valid``."""
    nb, na, cos = stats[..., 0], stats[..., 1], stats[..., 2]
    e = jnp.where(valid, jnp.exp(1.0 - cos), 0.0)
    ratio = na / jnp.maximum(nb, TRANSITION_EPS)
    return jnp.where(valid, ratio * e / jnp.sum(e, axis=-1, keepdims=True), 0.0)


def transprune_ttv(
    before: jax.Array, after: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """TransPrune's token transition variation of one sub-block (attention or MLP).

    ``w_i = (||a_i|| / max(||b_i||, 1e-8)) * exp(1 - cos(b_i, a_i)) / sum_j exp(1 - cos(b_j,
    a_j))``, the sum over the valid tokens j of the row (the published ``compute_transf_weight``
    sums over the whole batch: identical for one row). Invalid tokens get 0.

    Args:
      before: [B, T, D] b, the sub-block's normalised input (the ``input_layernorm`` /
        ``post_attention_layernorm`` output).
      after: [B, T, D] a, the sub-block's output before the residual add.
      valid: [B, T] bool, or None (all valid).

    Returns:
      [B, T] float32.

    Raises:
      ValueError: for arrays of the wrong shape.

    References: TransPrune, CVPR 2026 (arXiv:2507.20630); ``liaolea/TransPrune``
      ``compute_transf_weight``.

    Example:
      >>> b = jnp.array([[[1.0, 0.0], [0.0, 2.0]]])
      >>> a = jnp.array([[[2.0, 0.0], [0.0, -1.0]]])  # cos 1 and -1: exp(0), exp(2)
      >>> w = transprune_ttv(b, a)
      >>> [round(v, 4) for v in w[0].tolist()]
      [0.2384, 0.4404]
    """
    if jnp.ndim(before) != 3 or jnp.shape(after) != jnp.shape(before):
        raise ValueError(
            f"transprune_ttv: before and after must both be [B, T, D]; got shapes "
            f"{jnp.shape(before)} and {jnp.shape(after)}"
        )
    b, t, _ = jnp.shape(before)
    if valid is None:
        valid = jnp.ones((b, t), bool)
    elif jnp.shape(valid) != (b, t):
        raise ValueError(f"transprune_ttv: valid must be [B, T] = {(b, t)}; got {jnp.shape(valid)}")
    stats = transition_stats(jnp.asarray(before), jnp.asarray(after))
    return _ttv_from_stats(stats, jnp.asarray(valid, bool))


def transprune_iga(
    block: Any,
    x: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
    start: int,
    stop: int,
) -> jax.Array:
    """TransPrune's instruction-guided attention of the image tokens at one layer.

    The tokens after the image span (``[stop, T)``: the instruction) query every key with the
    block's own ``input_layernorm``, q / k projections and RoPE at ``positions`` (causal,
    padding keys masked, softmax over the row in float32); the probabilities are averaged over
    the heads, restricted to the image keys ``[start, stop)``, averaged over the valid queries
    and divided by (their sum + 1e-8).

    Args:
      block: the ``LlamaBlock`` whose input the tokens are.
      x: [B, T, D] hidden states entering the block.
      positions: [B, T] int RoPE positions of the tokens.
      valid: [B, T] bool: real tokens.
      start, stop: the image tokens ``[start, stop)`` among the T (static ints, ``stop < T``:
        at least one query).

    Returns:
      [B, stop - start] float32, summing to about 1 per row.

    Raises:
      ValueError: for arrays of the wrong shape or a span that leaves no query.

    References: TransPrune, CVPR 2026 (arXiv:2507.20630); ``liaolea/TransPrune``
      ``transprune_rank_drop``.

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.llama import LlamaLM, llm_config
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> x, pos = jnp.ones((2, 6, 64)), jnp.arange(6)[None].repeat(2, 0)
      >>> transprune_iga(model.layers[0], x, pos, jnp.ones((2, 6), bool), 1, 5).shape
      (2, 4)
    """
    if jnp.ndim(x) != 3:
        raise ValueError(f"transprune_iga: x must be [B, T, D]; got shape {jnp.shape(x)}")
    b, t, _ = x.shape
    for name, a in (("positions", positions), ("valid", valid)):
        if jnp.shape(a) != (b, t):
            raise ValueError(
                f"transprune_iga: {name} must be [B, T] = {(b, t)}; got {jnp.shape(a)}"
            )
    if not (is_int(start) and is_int(stop) and 0 <= start < stop < t):
        raise ValueError(
            f"transprune_iga: need 0 <= start < stop < T = {t} (the tokens after the image "
            f"span are the queries); got {start!r}, {stop!r}"
        )
    valid = jnp.asarray(valid, bool)
    probs, _ = block_query_probs(block, x, positions, valid, stop, t)  # [B, H, T - stop, T]
    img = probs.mean(axis=1)[:, :, start:stop]  # heads, then the image keys
    w = valid[:, stop:, None].astype(_F32)
    iga = jnp.sum(img * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    return iga / (jnp.sum(iga, axis=-1, keepdims=True) + _NORM_EPS)


@dataclasses.dataclass(frozen=True)
class TransPruneSpec:
    """TransPrune's in-LLM stages (frozen, hashable: static under jit).

    Every layer in ``accumulate`` measures its token transition variation (``transprune_ttv`` of
    its attention and its MLP sub-block, summed; ``LlamaLM`` measures it through
    ``transition_layers``). At the input of each layer in ``layers``, the n current image tokens
    starting at ``start`` get the score ``TTV_img + IGA``: the accumulated TTV of the layers so
    far on the image span, normalised to sum 1, plus ``transprune_iga`` with that layer's own
    projections; the top ``num_kept[s] = int(N * ratios[s])`` stay in original order, the rest
    are dropped, and the sequence's positions are renumbered over its valid tokens (see the
    module docstring for the decode rule and the deviations). Text tokens are never dropped.

    Attributes:
      start, stop: the image span ``[start, stop)`` of the call's tokens (N = stop - start);
        at least one token must follow it (the instruction queries of the IGA).
      layers: strictly increasing layers >= 1 (published 1-based ``pruning_layer_list``:
        (7, 9, 12), the output of that many blocks).
      accumulate: strictly increasing 0-based layers < ``layers[-1]`` whose TTV is accumulated
        (published 1-based blocks 7..12 = (6, 7, 8, 9, 10, 11)); () scores by the IGA alone.
      ratios: one per layer, the image tokens kept after each stage as a share of N, in (0, 1],
        non-increasing (published ``image_token_ratio_list`` without its leading 1.0:
        (0.875, 0.625, 0.125)).

    Raises:
      ValueError: for a bad span, layers, accumulate or ratios.

    References: TransPrune, CVPR 2026 (arXiv:2507.20630); ``liaolea/TransPrune``
      ``transprune_forward`` and the scripts in ``scripts/transprune``.

    Example:
      >>> spec = TransPruneSpec(35, 611)  # LLaVA-1.5: 576 image tokens
      >>> spec.num_kept
      (504, 360, 72)
      >>> TransPruneSpec(2, 14, layers=(1, 3), accumulate=(0, 1, 2), ratios=(0.5, 0.25)
      ...                ).tokens_per_layer(4, 20)
      (20, 14, 14, 11)
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    layers: tuple[int, ...] = (7, 9, 12)
    accumulate: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    ratios: tuple[float, ...] = (0.875, 0.625, 0.125)

    def __post_init__(self):
        check_span("TransPruneSpec", self)
        layers = tuple(self.layers) if isinstance(self.layers, tuple | list) else None
        if not layers or not all(is_int(i) and i >= 1 for i in layers) or not _increasing(layers):
            raise ValueError(
                f"TransPruneSpec: layers must be strictly increasing ints >= 1; got {self.layers!r}"
            )
        object.__setattr__(self, "layers", tuple(int(i) for i in layers))
        acc = tuple(self.accumulate) if isinstance(self.accumulate, tuple | list) else None
        if (
            acc is None
            or not all(is_int(i) and 0 <= i < self.layers[-1] for i in acc)
            or not _increasing(acc)
        ):
            raise ValueError(
                f"TransPruneSpec: accumulate must be strictly increasing ints in [0, "
                f"layers[-1] = {self.layers[-1]}); got {self.accumulate!r}"
            )
        object.__setattr__(self, "accumulate", tuple(int(i) for i in acc))
        ratios = tuple(self.ratios) if isinstance(self.ratios, tuple | list) else ()
        if len(ratios) != len(self.layers) or not all(
            isinstance(r, numbers.Real) and not isinstance(r, bool) and 0 < r <= 1 for r in ratios
        ):
            raise ValueError(
                f"TransPruneSpec: ratios must be one real in (0, 1] per layer "
                f"({len(self.layers)}); got {self.ratios!r}"
            )
        if any(a < b for a, b in itertools.pairwise(ratios)):
            raise ValueError(f"TransPruneSpec: ratios must be non-increasing; got {self.ratios!r}")
        if int(self.num_image * ratios[-1]) < 1:
            raise ValueError(
                f"TransPruneSpec: ratios must keep at least one of the {self.num_image} image "
                f"tokens (int(N * ratio) >= 1); got {self.ratios!r}"
            )
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))

    @classmethod
    def with_budget(cls, start: int, stop: int, keep: int, layer: int) -> TransPruneSpec:
        """One TransPrune stage at the input of ``layer`` keeping exactly ``keep`` image tokens,
        its TTV from block ``layer - 1`` alone (the published first stage reads only the block
        it follows): for comparisons with FastV / FEATHER at the same layer and budget.

        Args:
          start, stop: the image span (N = stop - start).
          keep: image tokens kept, ``1 <= keep <= N``.
          layer: the pruning layer, >= 1.

        Returns:
          The spec (``ratios = ((keep + 0.5) / N,)``, so ``int(N * ratio) == keep``).

        Raises:
          ValueError: for ``keep`` outside ``[1, N]`` or as the constructor.

        Example:
          >>> TransPruneSpec.with_budget(1, 17, 4, 2).num_kept
          (4,)
        """
        n = stop - start if is_int(start) and is_int(stop) else 0
        if not is_int(keep) or not 1 <= keep <= n:
            raise ValueError(
                f"TransPruneSpec.with_budget: keep must be an int in [1, {n}]; got {keep!r}"
            )
        ratio = min((keep + 0.5) / n, 1.0)
        acc = (layer - 1,) if is_int(layer) else layer
        return cls(start, stop, layers=(layer,), accumulate=acc, ratios=(ratio,))

    @property
    def num_image(self) -> int:
        """N = stop - start."""
        return self.stop - self.start

    @property
    def num_kept(self) -> tuple[int, ...]:
        """Image tokens after each stage: ``int(N * ratios[s])`` (the published rounding)."""
        return tuple(int(self.num_image * r) for r in self.ratios)

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """``layers``."""
        return self.layers

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        """None: the IGA comes from the pruning layer's own projections."""
        return frozenset()

    def transition_layers(self, num_layers: int) -> frozenset[int]:
        """``accumulate``: the layers whose per-token transition statistics ``apply`` reads."""
        return frozenset(self.accumulate)

    def tokens_per_layer(self, num_layers: int, t: int) -> tuple[int, ...]:
        """``t`` before ``layers[0]``, then ``t - N + num_kept[s]`` from ``layers[s]`` on."""
        return staged_tokens(self.layers, self.num_image, self.num_kept, num_layers, t)

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises unless ``layers[-1] < num_layers`` and a token follows the image span."""
        check_layer("prune.layers[-1]", self.layers[-1], num_layers, where)
        if self.stop >= length:
            raise ValueError(
                f"{where}: TransPruneSpec's image span [{self.start}, {self.stop}) must end "
                f"before the {length} input tokens (the tokens after it query the image)"
            )

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """One stage: score, keep the top tokens, renumber; reports ``scores_{layer}`` (TTV_img
        + IGA), ``ttv_{layer}`` and ``iga_{layer}`` over the image tokens before the stage."""
        s = self.layers.index(layer)
        n = self.num_image if s == 0 else self.num_kept[s - 1]
        x, valid = ctx.x, ctx.valid
        b, t, _ = x.shape
        positions = context_positions(ctx)
        a, z = self.start, self.start + n
        iga = transprune_iga(ctx.block, x, positions, valid, a, z)
        stored = ctx.transitions or {}
        missing = [i for i in self.accumulate if i < layer and i not in stored]
        if missing:
            raise ValueError(
                f"TransPruneSpec.apply at layer {layer}: PruneContext.transitions lacks layers "
                f"{missing} (LlamaLM measures the spec's transition_layers)"
            )
        ttv = jnp.zeros((b, n), _F32)
        for i in self.accumulate:
            if i < layer:
                st = stored[i]
                w = _ttv_from_stats(st.stats[..., :3], st.valid)
                w = w + _ttv_from_stats(st.stats[..., 3:], st.valid)
                ttv = ttv + jnp.take_along_axis(w, st.index, axis=1)[:, a:z]
        ttv = ttv / (jnp.sum(ttv, axis=-1, keepdims=True) + _NORM_EPS)
        scores = ttv + iga
        picked = jax.vmap(lambda sc: T.topk(sc, self.num_kept[s]))(scores)
        keep = span_keep(picked, a, n, t)
        new_positions = renumber(positions, jnp.take_along_axis(valid, keep, axis=1))
        info = {f"scores_{layer}": scores, f"ttv_{layer}": ttv, f"iga_{layer}": iga}
        return PruneStep(keep, None, info, None, new_positions)


def _increasing(items: tuple) -> bool:
    return all(a < b for a, b in itertools.pairwise(items))
