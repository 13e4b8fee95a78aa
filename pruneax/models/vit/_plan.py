"""``PruningPlan``: an ordered tuple of ViT pruning stages, static under ``jax.jit``.

See ``_stage.py`` for what a stage is (the ``ViTStage`` protocol, ``PruneStage``) and where it
runs (``"in_block"``: inside block ``layer - 1`` before its MLP, as the published ToMe and
EViT; ``"between_blocks"``: before block ``layer``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from pruneax.models.vit._flowcut import check_flowcut, flowcut_stages
from pruneax.models.vit._stage import METHODS, PruneStage, ViTStage

__all__ = ["METHODS", "PruneStage", "PruningPlan", "ViTStage", "apply_stage"]


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """An ordered tuple of stages (``ViTStage``s, e.g. ``PruneStage``) at increasing layers.

    Attributes:
      stages: the stages; their ``layer`` strictly increases.

    Raises:
      ValueError: if a stage is not a hashable ``ViTStage``, layers do not strictly increase,
        a full-grid method (HiPrune, FEATHER, uniform) is not the first stage, or a stage reads
        a block before the previous stage (whose tokens are gone).

    Example:
      >>> from pruneax.models.vit import PruningPlan
      >>> plan = PruningPlan.at((4, 7), 0.7, "evit")
      >>> plan.token_counts(196), plan.wants(3), plan.wants(4)
      ((139, 99), (True, False), (False, False))
    """

    stages: tuple[Any, ...] = ()

    def __post_init__(self):
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        for s in stages:
            if not isinstance(s, ViTStage):
                raise ValueError(
                    "PruningPlan: stages must be ViTStage objects (e.g. PruneStage); got "
                    f"{type(s).__name__}"
                )
            try:
                hash(s)
            except TypeError:
                raise ValueError(
                    f"PruningPlan: stages must be hashable (a frozen dataclass); got "
                    f"{type(s).__name__}"
                ) from None
        layers = [s.layer for s in stages]
        if layers != sorted(set(layers)):
            raise ValueError(f"PruningPlan: stage layers must strictly increase; got {layers}")
        prev = 0
        for i, s in enumerate(stages):
            if i and getattr(s, "needs_full_grid", False):
                raise ValueError(
                    f"PruningPlan: {s.method!r} works on the full patch grid, so it must be the "
                    f"first stage; got it at stage {i} (layer {s.layer})"
                )
            for block in s.reads():
                if not prev <= block < s.layer:
                    raise ValueError(
                        f"PruningPlan: the stage at layer {s.layer} reads block {block}'s "
                        f"attention; expected {prev} <= block < {s.layer}, after the previous "
                        "stage (for hiprune: its shallow_layer)"
                    )
            prev = s.layer
        check_flowcut(stages)

    @classmethod
    def at(
        cls, layers: int | tuple[int, ...], keep: int | float, method: str = "topk", **kw: Any
    ) -> PruningPlan:
        """The same ``PruneStage`` (method, keep, options) at each of ``layers``.

        Args:
          layers: one layer or a tuple of layers.
          keep: ``PruneStage.keep``.
          method: ``PruneStage.method``.
          **kw: further ``PruneStage`` fields.

        Returns:
          The plan.

        Raises:
          ValueError: as ``PruneStage`` and ``PruningPlan``.

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> [s.layer for s in PruningPlan.at((2, 5), 8).stages]
          [2, 5]
        """
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        return cls(tuple(PruneStage(layer=i, keep=keep, method=method, **kw) for i in layers))

    @classmethod
    def merging(
        cls, layer: int, keep: int | float, *, num_patches: int, num_prefix: int = 1
    ) -> PruningPlan:
        """ToMe stages at ``layer, layer + 1, ...`` until ``keep`` patch tokens remain.

        Each step merges as many tokens as one bipartite step can (about half), so the target is
        reached in the fewest blocks; ``PruningPlan.tome`` merges a constant ``r`` per block as
        the ToMe paper.

        Args:
          layer: the first stage's layer (it merges inside block ``layer - 1``).
          keep: patch tokens left at the end (count, or ratio of ``num_patches``).
          num_patches: patch tokens of the input.
          num_prefix: prefix tokens (never merged).

        Returns:
          The plan.

        Raises:
          ValueError: for a bad ``keep`` or a target one bipartite step cannot reach.

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> [s.keep for s in PruningPlan.merging(1, 0.25, num_patches=16).stages]
          [8, 4]
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

    @classmethod
    def tome(
        cls, r: int, *, num_layers: int, num_patches: int, num_prefix: int = 1, start: int = 0
    ) -> PruningPlan:
        """The ToMe paper's schedule: merge ``r`` tokens in every block from ``start`` on.

        As the published ``bipartite_soft_matching``, a block merges ``min(r, (t - P) // 2)``
        of its ``t`` tokens (P prefix tokens); blocks where that is 0 merge nothing. The last
        block does not merge (``validate``): with CLS pooling its merge changes no output.

        Args:
          r: tokens merged per block, an int >= 1.
          num_layers: blocks of the model; blocks ``start .. num_layers - 2`` merge.
          num_patches: patch tokens of the input.
          num_prefix: prefix tokens P.
          start: the first merging block (0-based).

        Returns:
          The plan: in-block ToMe stages at layers ``start + 1 ... num_layers - 1``.

        Raises:
          ValueError: if ``r`` is not an int >= 1 or ``start`` not in [0, num_layers).

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> [s.keep for s in PruningPlan.tome(8, num_layers=12, num_patches=196).stages][:3]
          [188, 180, 172]
        """
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"PruningPlan.tome: r must be an int >= 1; got {r!r}")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < num_layers:
            raise ValueError(f"PruningPlan.tome: start must be in [0, {num_layers}); got {start}")
        stages, n = [], num_patches
        for block in range(start, num_layers - 1):
            step = min(r, n // 2, n - 1)  # the published cap (t - P) // 2, t = P + n
            if step > 0:
                n -= step
                stages.append(PruneStage(layer=block + 1, keep=n, method="tome"))
        return cls(tuple(stages))

    @classmethod
    def flowcut(
        cls,
        keep: int | float,
        *,
        num_layers: int,
        select_layer: int | None = None,
        batch_count: str = "example",
    ) -> PruningPlan:
        """FlowCut (``FlowCutStage``) after every block ``0 .. select_layer - 1``.

        Blocks with even ``rpl = select_layer - 1 - block`` prune an adaptive amount (dead
        tokens stay in the array, masked out of the attention); block ``select_layer - 1``
        leaves ``keep`` patches, gathered in original order after the CLS token.

        Args:
          keep: patches left (count, or ratio of the input's patches).
          num_layers: blocks of the model.
          select_layer: S; None: ``num_layers - 2``, the published LLaVA setting (features of
            the penultimate block, ``apply_flowcut_config``).
          batch_count: ``"example"`` (each example its own amount) or ``"max"`` (the batch's
            largest, as the published batched code).

        Returns:
          The plan: ``FlowCutStage`` at layers ``1 .. select_layer``.

        Raises:
          ValueError: if ``select_layer`` is not in [1, num_layers - 1], or as
            ``FlowCutStage``.

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> plan = PruningPlan.flowcut(4, num_layers=4)
          >>> [s.layer for s in plan.stages], plan.token_counts(16)
          ([1, 2], (16, 4))
        """
        if select_layer is None:
            select_layer = num_layers - 2
        if isinstance(select_layer, bool) or not isinstance(select_layer, int):
            raise ValueError(
                f"PruningPlan.flowcut: select_layer must be an int; got {select_layer!r}"
            )
        if not 1 <= select_layer < num_layers:
            raise ValueError(
                f"PruningPlan.flowcut: select_layer must be in [1, {num_layers - 1}] "
                f"(num_layers={num_layers}); got {select_layer}"
            )
        return cls(flowcut_stages(keep, select_layer=select_layer, batch_count=batch_count))

    def stage_at(self, layer: int) -> Any | None:
        """The stage whose ``layer`` is ``layer``, or None."""
        for s in self.stages:
            if s.layer == layer:
                return s
        return None

    def wants(self, layer: int) -> tuple[bool, bool]:
        """(attention probabilities, keys) the model must keep from block ``layer``."""
        attn = keys = False
        for s in self.stages:
            a, k = s.reads().get(layer, (False, False))
            attn, keys = attn or a, keys or k
        return attn, keys

    def wants_values(self, layer: int) -> bool:
        """True when a stage reads block ``layer``'s value states (its ``value_blocks()``)."""
        return any(layer in getattr(s, "value_blocks", frozenset)() for s in self.stages)

    def cls_row_only(self, layer: int) -> bool:
        """True when the stages read block ``layer``'s attention only through the [CLS] row.

        Every stage that wants that block's probabilities (``reads``) lists it in its
        ``cls_row_blocks()`` (a ``ViTStage`` without that method needs the full matrix). The
        model then runs the block fused and computes the one row from q and k.

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> PruningPlan.at(3, 0.5, "evit").cls_row_only(2)
          True
          >>> PruningPlan.at(3, 0.5, "hiprune").cls_row_only(2)  # received attention: all rows
          False
        """
        readers = [s for s in self.stages if s.reads().get(layer, (False, False))[0]]
        rows = lambda s: getattr(s, "cls_row_blocks", frozenset)()
        return bool(readers) and all(layer in rows(s) for s in readers)

    @property
    def uses_size(self) -> bool:
        """True when a stage makes token sizes matter (ToMe's proportional attention)."""
        return any(s.uses_size for s in self.stages)

    def token_counts(self, num_patches: int) -> tuple[int, ...]:
        """Patch tokens (incl. synthetic ones such as EViT's fused token) after each stage."""
        counts = []
        n = num_patches
        for s in self.stages:
            n = s.out_tokens(n)
            counts.append(n)
        return tuple(counts)

    def block_tokens(self, num_layers: int, num_patches: int) -> tuple[tuple[int, int], ...]:
        """Patch tokens each block's attention and MLP run on (for FLOP counts).

        Args:
          num_layers: blocks of the model.
          num_patches: patch tokens of the input.

        Returns:
          ``num_layers`` pairs ``(attention tokens, MLP tokens)``, prefix tokens excluded; they
          differ in a block where an in-block stage (ToMe, EViT) runs.

        Raises:
          ValueError: as ``validate``.

        Example:
          >>> from pruneax.models.vit import PruningPlan
          >>> PruningPlan.at(2, 0.5, "evit").block_tokens(3, 16)
          ((16, 16), (16, 9), (9, 9))
        """
        self.validate(num_layers, num_patches)
        layers = [s.layer for s in self.stages]
        counts = dict(zip(layers, self.token_counts(num_patches), strict=True))
        inside = {s.layer for s in self.stages if s.in_block}
        out, n = [], num_patches
        for i in range(num_layers):
            if i in counts and i not in inside:
                n = counts[i]
            attn = n
            if i + 1 in inside:
                n = counts[i + 1]
            out.append((attn, n))
        return tuple(out)

    def validate(self, num_layers: int, num_patches: int) -> None:
        """Raises ``ValueError`` unless the plan fits a model of this depth and patch count.

        Every stage needs ``layer < num_layers``, in-block ones too: a merge inside the last
        block would only shorten its MLP and leaves the CLS output unchanged.
        """
        for s in self.stages:
            if s.layer >= num_layers:
                raise ValueError(
                    f"PruningPlan: stage at layer {s.layer} but the model has {num_layers} blocks; "
                    f"expected 1 <= layer < {num_layers}"
                )
        self.token_counts(num_patches)


def apply_stage(
    stage: Any,
    x: jax.Array,
    *,
    size: jax.Array,
    aux: dict[int, dict[str, jax.Array]],
    patch_ids: jax.Array,
    num_prefix: int,
    grid: tuple[int, int],
    key: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs one stage on a batch (``stage.apply``), wherever the model would place it.

    Args:
      stage: a ``ViTStage`` (e.g. ``PruneStage``).
      x: ``[B, P + n, D]`` residual stream (P prefix tokens first).
      size: ``[B, P + n]`` float32 token sizes (1 unless ToMe merged tokens).
      aux: block index -> ``{"attn": [B, H, T, T] probabilities, "keys": [B, H, T, dh]}`` for
        the blocks the stage ``reads``.
      patch_ids: ``[B, n]`` original patch index of each patch token (-1: synthetic).
      num_prefix: P.
      grid: the patch grid ``(rows, cols)`` of the input image.
      key: PRNG key (methods that need one, e.g. ``random``).

    Returns:
      ``(x, size, src)`` (a stage that ``carries`` state gets none here and its carry out is
      dropped): the new stream ``[B, P + n', D]``, sizes ``[B, P + n']`` and ``src``
      ``[B, n']`` int32, the index into the current patch tokens each new patch token comes from
      (-1 for a synthetic token such as EViT's fused token).

    Raises:
      ValueError: if the stage's inputs are missing (attention not kept, no key, a pruned grid)
        or its budget does not fit.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax.models.vit import PruneStage, apply_stage
      >>> x = jax.random.normal(jax.random.key(0), (1, 5, 8))
      >>> s = PruneStage(layer=1, keep=2, method="divprune")
      >>> y, size, src = apply_stage(s, x, size=jnp.ones((1, 5)), aux={},
      ...     patch_ids=jnp.arange(4)[None], num_prefix=1, grid=(2, 2), key=None)
      >>> y.shape, src.shape
      ((1, 3, 8), (1, 2))
    """
    out = stage.apply(
        x,
        size=size,
        aux=aux,
        patch_ids=patch_ids,
        num_prefix=num_prefix,
        grid=tuple(grid),
        key=key,
    )
    return tuple(out[:3])
