"""In-LLM visual token pruning for ``LlamaLM``: FastV, FEATHER and ToDRE's stage 2.

A pruning spec is a frozen, hashable dataclass (static under jit) passed as ``prune=`` to
``LlamaLM.__call__``, ``init_cache`` and ``generate_greedy``. Every spec has the read-only
``start``, ``stop`` (the image span ``[start, stop)`` among the call's tokens, the same for
every batch row) and ``num_image``, and knows statically

- ``pruning_layers(num_layers)``: the layers at whose input it acts;
- ``tokens_per_layer(num_layers, t)``: how many tokens each layer processes (and appends to its
  KV cache) for a call of ``t`` tokens, so that ``init_cache`` sizes every layer's cache and a
  caller can count prefill FLOPs.

At each of its pruning layers the model calls the spec's ``_apply`` with the current hidden
states, their validity, the previous layer's attention probabilities when the spec asked for
them (``_attention_layers``) and the layer itself. It returns a ``PruneStep``: ``keep`` (the
local indices of the tokens that go on, gathered with their ORIGINAL RoPE positions), ``hide``
(tokens that stay in the sequence but leave the keys of this and the later layers, and their
cache validity) and ``info`` (arrays reported in ``LlamaOutput.prune_info``).

- ``FastVSpec``: top-k image tokens by layer K-1's last-query attention (Chen et al., 2024).
- ``FeatherSpec``: FEATHER's two stages: at ``layers[0]`` the uniform grid plus the top image
  tokens by a no-RoPE last-query criterion from that layer's own q / k projections, at
  ``layers[1]`` the top of the survivors by the same criterion (Endo et al., 2024).
- ``TodreSpec``: ToDRE's stage 2: at layer K (default ``round(7 L / 8)``) all image tokens go
  when both head- and token-averaged attention shares text->visual and visual->text of layer K-1
  are below ``tau``; by masking (exact, data-dependent, no savings) or physically
  (unconditional, static shapes, real savings).

References: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2" (FastV), ECCV 2024
(arXiv:2403.06764); Endo et al., "Feather the Throttle: Revisiting Visual Token Pruning for
Vision-Language Model Acceleration", 2024 (arXiv:2412.13180); ToDRE, 2025 (stage 2 as
summarised in the project's ALGORITHMS.md; no public code).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruneax import tokens as T


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _is_float(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(value)


def _check_span(owner: str, spec: Any) -> None:
    """Checks and normalises the ``start`` / ``stop`` fields of a spec (in place)."""
    for name in ("start", "stop"):
        value = getattr(spec, name)
        if not _is_int(value):
            raise ValueError(f"{owner}: {name} must be an int; got {value!r}")
        object.__setattr__(spec, name, int(value))
    if not 0 <= spec.start < spec.stop:
        raise ValueError(
            f"{owner}: need 0 <= start < stop; got start={spec.start}, stop={spec.stop}"
        )


def _check_length(spec: Any, t: int, where: str) -> None:
    if spec.stop > t:
        raise ValueError(
            f"{where}: the image span [{spec.start}, {spec.stop}) must lie inside the {t} input "
            "tokens"
        )


def _check_layer(name: str, layer: int, num_layers: int, where: str) -> None:
    if layer >= num_layers:
        raise ValueError(f"{where}: {name} must be < num_layers = {num_layers}; got {layer}")


class PruneStep(NamedTuple):
    """What a spec does at one of its pruning layers (``_apply``).

    Attributes:
      keep: int32 [B, T_i'] ascending indices into the layer's current T_i tokens of those that
        go on (with their original RoPE positions), or None to keep all.
      hide: bool [B, T_i] tokens masked out of the keys (and the cache validity) of this layer
        and every later one, or None.
      info: arrays to report in ``LlamaOutput.prune_info``.
    """

    keep: jax.Array | None
    hide: jax.Array | None
    info: dict[str, jax.Array]


def _span_keep(picked: jax.Array, start: int, n: int, t: int) -> jax.Array:
    """``arange(start)``, ``start + picked`` [B, k], ``arange(start + n, t)`` per row: the local
    indices of the tokens kept when ``picked`` (ascending) are kept of the n image tokens."""
    b = picked.shape[0]
    head = jnp.broadcast_to(jnp.arange(start, dtype=jnp.int32), (b, start))
    tail = jnp.broadcast_to(jnp.arange(start + n, t, dtype=jnp.int32), (b, t - start - n))
    return jnp.concatenate([head, picked.astype(jnp.int32) + start, tail], axis=1)


# ------------------------------------------------------------------------------ FastV


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
    """

    start: int
    stop: int
    layer: int = 2
    keep_ratio: float | None = None
    drop_ratio: float | None = None

    def __post_init__(self):
        _check_span("FastVSpec", self)
        if not _is_int(self.layer):
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
            if not _is_float(r) or not 0 < r <= 1:
                raise ValueError(f"FastVSpec: keep_ratio must be in (0, 1]; got {r!r}")
        if self.drop_ratio is not None:
            r = self.drop_ratio
            if not _is_float(r) or not 0 <= r < 1:
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

    def _validate(self, num_layers: int, t: int, where: str) -> None:
        _check_layer("prune.layer", self.layer, num_layers, where)
        _check_length(self, t, where)

    def _attention_layers(self, num_layers: int) -> frozenset[int]:
        return frozenset({self.layer - 1})

    def _apply(self, layer: int, num_layers: int, **ctx: Any) -> PruneStep:
        keep = fastv_keep_indices(self, ctx["attn"], ctx["x"].shape[1], ctx["offset"])
        return PruneStep(keep, None, {})


def fastv_keep_indices(spec: FastVSpec, attn: jax.Array, length: int, offset: Any = 0) -> jax.Array:
    """The token indices FastV keeps, from layer K-1's attention probabilities.

    Args:
      spec: the ``FastVSpec``.
      attn: [B, H, T, S] float attention probabilities of layer K-1 (S = T without a cache).
      length: T, the call's tokens.
      offset: the cache slot of the call's first token (0 without a cache).

    Returns:
      int32 [B, T - num_dropped]: ``arange(start)``, the kept image indices, ``arange(stop,
      T)``, ascending (indices into the call's tokens).
    """
    n = spec.num_image
    row = attn[:, :, -1:, :]  # [B, H, 1, S]: the last query
    image = jax.lax.dynamic_slice_in_dim(row, offset + spec.start, n, axis=3)
    scores = jax.vmap(lambda a: T.last_query_attention(a, start=0, stop=n))(image)
    picked = jax.vmap(lambda s: T.topk(s, spec.num_keep))(scores)
    return _span_keep(picked, spec.start, n, length)


# ------------------------------------------------------------------------------ FEATHER


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
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    grid: tuple[int, int] | None = None
    layers: tuple[int, ...] = (8, 16)
    ratios: tuple[float, ...] = (0.3, 0.09)
    stride: int = 3

    def __post_init__(self):
        _check_span("FeatherSpec", self)
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
        if len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
            raise ValueError(
                f"FeatherSpec: grid must be (rows, cols) of ints >= 1; got {self.grid!r}"
            )
        if grid[0] * grid[1] != self.num_image:
            raise ValueError(
                f"FeatherSpec: grid {grid} has {grid[0] * grid[1]} cells; the image span "
                f"[{self.start}, {self.stop}) has N = {self.num_image} tokens"
            )
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        if not _is_int(self.stride) or self.stride < 1:
            raise ValueError(f"FeatherSpec: stride must be an int >= 1; got {self.stride!r}")
        object.__setattr__(self, "stride", int(self.stride))
        layers = tuple(self.layers) if isinstance(self.layers, tuple | list) else None
        if (
            layers is None
            or len(layers) not in (1, 2)
            or not all(_is_int(i) and i >= 0 for i in layers)
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
            if not _is_float(r) or not 0 < r <= 1:
                raise ValueError(f"FeatherSpec: ratios must be in (0, 1]; got {self.ratios!r}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        if min(self.num_keep) < 1:
            raise ValueError(
                f"FeatherSpec: stage 2 keeps no image token: int({self.ratios[-1]} * "
                f"{self.num_keep[0]}) = 0; raise ratios[1]"
            )

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
        out = []
        for i in range(num_layers):
            stage = sum(i >= lay for lay in self.layers)
            out.append(t if stage == 0 else t - self.num_image + self.num_keep[stage - 1])
        return tuple(out)

    def _validate(self, num_layers: int, t: int, where: str) -> None:
        _check_layer("prune.layers[-1]", self.layers[-1], num_layers, where)
        _check_length(self, t, where)

    def _attention_layers(self, num_layers: int) -> frozenset[int]:
        return frozenset()

    def _apply(self, layer: int, num_layers: int, **ctx: Any) -> PruneStep:
        stage = self.layers.index(layer)
        n = self.num_image if stage == 0 else self.num_keep[0]
        x = ctx["x"]
        scores = feather_criterion(ctx["block"], x, self.start, self.start + n)
        k = self.num_keep[stage]
        if stage == 0:
            pick = lambda s: T.feather(s, k, grid=self.grid, stride=self.stride)
        else:
            pick = lambda s: T.topk(s, k)
        picked = jax.vmap(pick)(scores)
        keep = _span_keep(picked, self.start, n, x.shape[1])
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
    """
    norm = block.input_layernorm
    q, _ = block.self_attn.project_qk(norm(x[:, -1:]))  # [B, 1, H, hd]
    _, k = block.self_attn.project_qk(norm(x[:, start:stop]))  # [B, n, KV, hd]
    keys = jnp.swapaxes(k, 1, 2)  # [B, KV, n, hd]
    return jax.vmap(T.query_key_attention)(q[:, 0], keys)


# ------------------------------------------------------------------------------ ToDRE


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
    """

    start: int
    stop: int
    _: dataclasses.KW_ONLY
    layer: int | None = None
    tau: float = 0.10
    physical: bool = False

    def __post_init__(self):
        _check_span("TodreSpec", self)
        if self.layer is not None:
            if not _is_int(self.layer) or self.layer < 1:
                raise ValueError(
                    "TodreSpec: layer must be an int >= 1 (it reads layer - 1's attention) or "
                    f"None; got {self.layer!r}"
                )
            object.__setattr__(self, "layer", int(self.layer))
        if not _is_float(self.tau) or not 0 <= self.tau <= 1:
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

    def _validate(self, num_layers: int, t: int, where: str) -> None:
        k = self.layer_for(num_layers)
        if k < 1:
            raise ValueError(
                f"{where}: prune.layer resolves to {k} for num_layers = {num_layers}; it must be "
                ">= 1"
            )
        _check_layer("prune.layer", k, num_layers, where)
        _check_length(self, t, where)
        if self.num_image >= t:
            raise ValueError(
                f"{where}: TodreSpec needs at least one text token outside the image span "
                f"[{self.start}, {self.stop}) of the {t} input tokens"
            )

    def _attention_layers(self, num_layers: int) -> frozenset[int]:
        return frozenset({self.layer_for(num_layers) - 1})

    def _apply(self, layer: int, num_layers: int, **ctx: Any) -> PruneStep:
        x, valid = ctx["x"], ctx["valid"]
        t = x.shape[1]
        t2v, v2t = todre_shares(ctx["attn"], valid, self.start, self.stop, ctx["offset"])
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
    """
    t = attn.shape[2]
    a = jnp.mean(attn.astype(jnp.float32), axis=1)  # [B, T, S]
    image_mass = jnp.sum(
        jax.lax.dynamic_slice_in_dim(a, offset + start, stop - start, axis=2), axis=2
    )  # [B, T]
    other_mass = jnp.sum(a, axis=2) - image_mass
    image = (jnp.arange(t) >= start) & (jnp.arange(t) < stop)
    text_q = valid & ~image[None]
    image_q = valid & image[None]

    def mean(v, m):
        return jnp.sum(jnp.where(m, v, 0.0), axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)

    return mean(image_mass, text_q), mean(other_mass, image_q)


PruneSpec = FastVSpec | FeatherSpec | TodreSpec
PRUNE_SPECS = (FastVSpec, FeatherSpec, TodreSpec)


def check_prune(prune: Any, num_layers: int, length: int, where: str) -> None:
    """Raises unless ``prune`` is one of ``PRUNE_SPECS`` that fits ``num_layers`` layers and a
    call (or cache) of ``length`` tokens."""
    if not isinstance(prune, PRUNE_SPECS):
        raise ValueError(
            f"{where}: prune must be a FastVSpec, FeatherSpec, TodreSpec or None; got "
            f"{type(prune).__name__}"
        )
    prune._validate(num_layers, length, where)
