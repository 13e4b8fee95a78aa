"""Static token-pruning plans for the ViT: at which blocks, how many tokens, which method.

A ``PruningPlan`` is a frozen, hashable tuple of ``PruneStage``s (static under ``jax.jit``).
Stage ``s`` runs just BEFORE block ``s.layer`` (0-based), on the residual stream that block
``s.layer - 1`` produced, and reads that block's attention probabilities / keys when the method
needs them. Prefix tokens (CLS, distillation, registers) are never dropped; kept patch tokens stay
in their original order; the model reports which original patches survive each stage.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T

# method -> (needs attention probabilities, needs keys) from the block before the stage
METHODS: dict[str, tuple[bool, bool]] = {
    "random": (False, False),
    "topk": (True, False),  # FasterVLM / EViT without fusion: head-averaged CLS attention
    "evit": (True, False),  # top-k by CLS attention + the rest fused into one token
    "tome": (False, True),  # bipartite merging on head-averaged keys, proportional attention
    "divprune": (False, False),  # max-min diversity on the token features
    "kcenter": (True, False),  # k-center, pivot = highest CLS attention
    "maxsum": (True, False),  # max-sum diversity, pivot = highest CLS attention
    "coverage": (False, False),  # MMTok vision-only coverage
    "hiprune": (True, False),  # anchors from a shallow layer, registers from the deep one
    "feather": (True, False),  # uniform grid + top-k by CLS attention
    "holov": (True, False),  # holistic chunks scored by CLS attention
}


@dataclasses.dataclass(frozen=True)
class PruneStage:
    """One pruning stage.

    Attributes:
      layer: block index (0-based) the stage runs before; ``1 <= layer < num_layers``.
      keep: patch tokens kept: an int count, or a float ratio in (0, 1] of the patch tokens that
        reach this stage (``ceil(ratio * n)``, as EViT). For ``tome`` it is the count/ratio left
        after merging (``r = n - keep`` tokens are merged away). For ``evit`` the fused token
        comes on top of ``keep``.
      method: one of ``METHODS``.
      shallow_layer: ``hiprune`` only: the block whose received attention picks the anchors
        (default: ``layer // 2``); it must run after the previous stage.
      alpha: ``hiprune`` anchor fraction.
      stride: ``feather`` grid stride.
      num_chunks: ``holov`` chunks (at most half the patch tokens that reach the stage).
    """

    layer: int
    keep: int | float
    method: str = "topk"
    shallow_layer: int | None = None
    alpha: float = 0.1
    stride: int = 3
    num_chunks: int = 16

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"PruneStage: method must be one of {sorted(METHODS)}; got {self.method!r}"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"PruneStage: layer must be an int >= 1; got {self.layer!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int | float):
            raise ValueError(f"PruneStage: keep must be an int or a float; got {self.keep!r}")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"PruneStage: keep as a ratio must be in (0, 1]; got {self.keep}")
        if isinstance(self.keep, int) and self.keep < 1:
            raise ValueError(f"PruneStage: keep as a count must be >= 1; got {self.keep}")
        if self.shallow_layer is not None and self.method != "hiprune":
            raise ValueError("PruneStage: shallow_layer only applies to method='hiprune'")

    def kept(self, n: int) -> int:
        """Patch tokens left by this stage when ``n`` reach it (fused EViT token excluded)."""
        k = self.keep if isinstance(self.keep, int) else math.ceil(self.keep * n - 1e-9)
        if not 1 <= k <= n:
            raise ValueError(
                f"PruneStage(layer={self.layer}, keep={self.keep!r}): keeps {k} of the {n} patch "
                f"tokens that reach it; expected 1 <= keep <= {n}"
            )
        return k

    @property
    def shallow(self) -> int:
        return self.layer // 2 if self.shallow_layer is None else self.shallow_layer


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """An ordered tuple of stages at strictly increasing layers."""

    stages: tuple[PruneStage, ...] = ()

    def __post_init__(self):
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        for s in stages:
            if not isinstance(s, PruneStage):
                raise ValueError(f"PruningPlan: stages must be PruneStage; got {type(s).__name__}")
        layers = [s.layer for s in stages]
        if layers != sorted(set(layers)):
            raise ValueError(f"PruningPlan: stage layers must strictly increase; got {layers}")
        prev = 0
        for i, s in enumerate(stages):
            if i and s.method in ("hiprune", "feather"):
                raise ValueError(
                    f"PruningPlan: {s.method!r} works on the full patch grid, so it must be the "
                    f"first stage; got it at stage {i} (layer {s.layer})"
                )
            if s.method == "hiprune" and not prev <= s.shallow < s.layer:
                raise ValueError(
                    f"PruningPlan: hiprune stage at layer {s.layer} reads shallow_layer "
                    f"{s.shallow}; expected {prev} <= shallow_layer < {s.layer} (after the "
                    "previous stage)"
                )
            prev = s.layer

    @classmethod
    def at(
        cls, layers: int | tuple[int, ...], keep: int | float, method: str = "topk", **kw: Any
    ) -> PruningPlan:
        """The same stage (method, keep, options) at each of ``layers``."""
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        return cls(tuple(PruneStage(layer=i, keep=keep, method=method, **kw) for i in layers))

    @classmethod
    def merging(
        cls, layer: int, keep: int | float, *, num_patches: int, num_prefix: int = 1
    ) -> PruningPlan:
        """ToMe stages at ``layer, layer + 1, ...`` until ``keep`` patch tokens remain.

        Each step merges as many tokens as one bipartite step can (about half), so the target is
        reached in the fewest blocks; the ToMe paper instead merges a constant ``r`` per block.
        """
        target = PruneStage(layer=layer, keep=keep, method="tome").kept(num_patches)
        stages, n, i = [], num_patches, layer
        while n > target:
            t = n + num_prefix
            step = min(n - target, (t + 1) // 2 - (num_prefix + 1) // 2)
            if step <= 0:
                raise ValueError(f"PruningPlan.merging: cannot merge below {n} tokens")
            n -= step
            stages.append(PruneStage(layer=i, keep=n, method="tome"))
            i += 1
        return cls(tuple(stages))

    def stage_at(self, layer: int) -> PruneStage | None:
        for s in self.stages:
            if s.layer == layer:
                return s
        return None

    def wants(self, layer: int) -> tuple[bool, bool]:
        """(attention probabilities, keys) the model must keep from block ``layer``."""
        attn = keys = False
        for s in self.stages:
            need_attn, need_keys = METHODS[s.method]
            if s.layer == layer + 1:
                attn |= need_attn
                keys |= need_keys
            if s.method == "hiprune" and s.shallow == layer:
                attn = True
        return attn, keys

    @property
    def uses_size(self) -> bool:
        """True when a ToMe stage makes token sizes (proportional attention) matter."""
        return any(s.method == "tome" for s in self.stages)

    def token_counts(self, num_patches: int) -> tuple[int, ...]:
        """Patch tokens (incl. a fused EViT token) entering each block, for ``num_layers``."""
        counts = []
        n = num_patches
        for s in self.stages:
            n = s.kept(n) + (1 if s.method == "evit" else 0)
            counts.append(n)
        return tuple(counts)

    def validate(self, num_layers: int, num_patches: int) -> None:
        """Raises ``ValueError`` unless the plan fits a model of this depth and patch count."""
        for s in self.stages:
            if s.layer >= num_layers:
                raise ValueError(
                    f"PruningPlan: stage at layer {s.layer} but the model has {num_layers} blocks; "
                    f"expected 1 <= layer < {num_layers}"
                )
        self.token_counts(num_patches)


def apply_stage(
    stage: PruneStage,
    x: jax.Array,
    *,
    size: jax.Array,
    aux: dict[int, dict[str, jax.Array]],
    patch_ids: jax.Array,
    num_prefix: int,
    grid: tuple[int, int],
    key: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs one stage on a batch.

    Args:
      x: ``[B, P + n, D]`` residual stream (P prefix tokens first).
      size: ``[B, P + n]`` float32 token sizes (1 unless ToMe merged tokens).
      aux: block index -> ``{"attn": [B, H, T, T] probabilities, "keys": [B, H, T, dh]}`` for the
        blocks ``plan.wants`` asked for since the previous stage.
      patch_ids: ``[B, n]`` original patch index of each patch token (-1: synthetic).
      num_prefix: P.
      grid: the patch grid ``(rows, cols)`` of the input image.
      key: PRNG key (``random`` only).

    Returns:
      ``(x, size, src)``: the new stream ``[B, P + n', D]``, sizes ``[B, P + n']`` and ``src``
      ``[B, n']`` int32, the index into the current patch tokens each new patch token comes from
      (-1 for a synthetic token such as EViT's fused token).
    """
    method = stage.method
    p = num_prefix
    b, t, _ = x.shape
    n = t - p
    k = stage.kept(n)
    xp = x[:, p:]
    need_attn, need_keys = METHODS[method]
    prev = stage.layer - 1
    if (need_attn or need_keys) and prev not in aux:
        raise ValueError(
            f"apply_stage: the {method!r} stage at layer {stage.layer} needs block {prev}'s "
            "attention; the model did not keep it (call it through ViT with this plan)"
        )
    if method in ("hiprune", "feather") and n != grid[0] * grid[1]:
        raise ValueError(
            f"PruneStage(method={method!r}, layer={stage.layer}) needs the full {grid[0]}x"
            f"{grid[1]} patch grid, but {n} patch tokens reach it (an earlier stage pruned): "
            "make it the first stage"
        )

    def scores():  # head-averaged CLS attention over the patch keys; received attention w/o CLS
        attn = aux[prev]["attn"]
        if p == 0:
            return jax.vmap(lambda a: T.received_attention(a, num_prefix=0))(attn)
        return jax.vmap(lambda a: T.cls_attention(a, num_prefix=p))(attn)

    if method == "tome":
        r = n - k
        bound = (t + 1) // 2 - (p + 1) // 2
        if r > bound:
            raise ValueError(
                f"PruneStage(method='tome', layer={stage.layer}, keep={stage.keep!r}): merging "
                f"{r} of {n} patch tokens in one step; one ToMe step merges at most {bound} "
                "(set A); spread it over layers with PruningPlan.merging(...)"
            )
        metric = aux[prev]["keys"].mean(axis=1)  # [B, T, dh]
        merged, new_size, dest = jax.vmap(
            lambda xi, mi, si: T.tome_merge(xi, mi, r, size=si, num_protected=p)
        )(x, metric, size)
        # src: each output row's surviving input token. A row holds one survivor plus the set-A
        # (even-position) tokens merged into it, whose partner is an odd-position (set-B) token;
        # so the survivor is the row's odd-position token if any, else its only token.
        rows = jnp.arange(t, dtype=jnp.int32)
        key_rows = jnp.where(rows % 2 == 1, rows + t, rows)
        src_row = jax.vmap(lambda d: jax.ops.segment_max(key_rows, d, num_segments=t - r))(dest)
        src = src_row[:, p:] % t - p
        return merged, new_size, src.astype(jnp.int32)

    if method == "random":
        if key is None:
            raise ValueError("apply_stage: method='random' needs a PRNG key (ViT(..., key=...))")
        idx = jax.vmap(lambda kk: T.random(kk, n, k))(jax.random.split(key, b))
    elif method in ("topk", "evit"):
        idx = jax.vmap(lambda s: T.topk(s, k))(scores())
    elif method == "divprune":
        idx = jax.vmap(lambda f: T.maxmin_diversity(f, k))(xp)
    elif method == "kcenter":
        idx = jax.vmap(lambda f, s: T.kcenter(f, k, pivot=s))(xp, scores())
    elif method == "maxsum":
        idx = jax.vmap(lambda f, s: T.maxsum_diversity(f, k, pivot=s))(xp, scores())
    elif method == "coverage":
        idx = jax.vmap(lambda f: T.coverage(f, k))(xp)
    elif method == "hiprune":
        rec = jax.vmap(lambda a: T.received_attention(a, num_prefix=p))
        shallow, deep = rec(aux[stage.shallow]["attn"]), rec(aux[prev]["attn"])
        idx = jax.vmap(lambda s, d: T.hiprune(s, d, k, grid=grid, alpha=stage.alpha))(shallow, deep)
    elif method == "feather":
        idx = jax.vmap(lambda s: T.feather(s, k, grid=grid, stride=stage.stride))(scores())
    elif method == "holov":
        idx = jax.vmap(
            lambda s, f: T.holov(s, f, k, num_chunks=max(1, min(stage.num_chunks, n // 2)))
        )(scores(), xp)
    else:  # pragma: no cover - PruneStage validates the method
        raise AssertionError(method)

    kept_x = jnp.take_along_axis(xp, idx[..., None], axis=1)
    kept_size = jnp.take_along_axis(size[:, p:], idx, axis=1)
    src = idx
    if method == "evit":
        a = scores()
        fused = jax.vmap(T.fuse_pruned)(xp, idx, a.astype(xp.dtype))[:, -1:]
        pruned = 1.0 - jax.vmap(lambda i: T.keep_mask(i, n))(idx).astype(jnp.float32)
        fused_size = (size[:, p:] * pruned).sum(axis=1, keepdims=True)
        kept_x = jnp.concatenate([kept_x, fused], axis=1)
        kept_size = jnp.concatenate([kept_size, fused_size], axis=1)
        src = jnp.concatenate([idx, jnp.full((b, 1), -1, jnp.int32)], axis=1)
    x_new = jnp.concatenate([x[:, :p], kept_x], axis=1)
    size_new = jnp.concatenate([size[:, :p], kept_size], axis=1)
    return x_new, size_new, src.astype(jnp.int32)
