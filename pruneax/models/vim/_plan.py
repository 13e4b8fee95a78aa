"""Vim's static ToP-ViM pruning plan: ``VimPruneStage`` and ``VimPruningPlan`` (frozen,
hashable, so a plan is a static argument of ``jax.jit``). The modes are defined in
``pruneax.models.mamba._prune`` (``pruned_mixer_forward``).

References: Zhan et al., "Exploring Token Pruning in Vision State Space Models" (ToP-ViM),
NeurIPS 2024 (arXiv:2409.18962) and ZLKong/ToP-ViM.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from pruneax.models.mamba._ssm import GAP_RULES
from pruneax.models.vim._config import CLS_POSITIONS, TOPVIM_LAYERS, VIM_METRICS, VIM_MODES


@dataclasses.dataclass(frozen=True)
class VimPruneStage:
    """One ToP-ViM pruning stage (frozen, hashable).

    Attributes:
      layer: the 0-based block the stage runs before (``1 <= layer < depth``); it scores the
        tokens with block ``layer - 1``'s mixer output ``y``.
      keep: patch tokens kept (the class token comes on top): an int count, or a float ratio
        in (0, 1] of the patch tokens reaching the stage, ``ceil(ratio * n)``.
      mode: one of ``VIM_MODES`` (see the module docstring); every stage of a plan has the
        same mode.
      metric: importance of a token from the previous block's ``y`` [T, E] (both directions,
        original order): ``"clipped"`` ``sum_e max(0, y_te)`` (ToP-ViM), ``"unclipped"``
        ``sum_e y_te``, ``"l1"`` ``sum_e |y_te|``, ``"l2"`` ``||y_t||_2``, or ``"random"``
        (uniform, needs ``Vim(..., key=...)``).
      gap_rule: ``"aligned_gap"`` only: ``"own"`` (default), ``"prev"`` or ``"true"``; it
        applies to the blocks from this stage to the next.
      cls_position: ``"original"`` (default; the class token keeps its relative place among
        the kept tokens) or ``"middle"`` (``"naive"`` only: re-inserted at the middle of the
        kept patches, as the released ToP-ViM code).

    Raises:
      ValueError: for a bad layer, keep, mode, metric, gap_rule or cls_position.

    Example:
      >>> VimPruneStage(layer=5, keep=0.8).kept(196)
      157
    """

    layer: int
    keep: int | float
    mode: str = "aligned_gap"
    metric: str = "clipped"
    gap_rule: str | None = None
    cls_position: str = "original"

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral):
            raise ValueError(f"VimPruneStage: layer must be an int >= 1; got {self.layer!r}")
        if self.layer < 1:
            raise ValueError(f"VimPruneStage: layer must be an int >= 1; got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
            raise ValueError(f"VimPruneStage: keep must be an int or a float; got {keep!r}")
        if isinstance(keep, numbers.Integral):
            if keep < 1:
                raise ValueError(f"VimPruneStage: keep as a count must be >= 1; got {keep}")
            object.__setattr__(self, "keep", int(keep))
        else:
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"VimPruneStage: keep as a ratio must be in (0, 1]; got {keep}")
            object.__setattr__(self, "keep", float(keep))
        if self.mode not in VIM_MODES:
            raise ValueError(
                f"VimPruneStage: mode must be one of {list(VIM_MODES)}; got {self.mode!r}"
            )
        if self.metric not in VIM_METRICS:
            raise ValueError(
                f"VimPruneStage: metric must be one of {list(VIM_METRICS)}; got {self.metric!r}"
            )
        if self.gap_rule is None:
            if self.mode == "aligned_gap":
                object.__setattr__(self, "gap_rule", "own")
        elif self.mode != "aligned_gap":
            raise ValueError(
                f"VimPruneStage: gap_rule applies to mode='aligned_gap' only; got "
                f"gap_rule={self.gap_rule!r} with mode={self.mode!r}"
            )
        elif self.gap_rule not in GAP_RULES:
            raise ValueError(
                f"VimPruneStage: gap_rule must be one of {list(GAP_RULES)}; got {self.gap_rule!r}"
            )
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(
                f"VimPruneStage: cls_position must be one of {list(CLS_POSITIONS)}; got "
                f"{self.cls_position!r}"
            )
        if self.cls_position == "middle" and self.mode != "naive":
            raise ValueError(
                "VimPruneStage: cls_position='middle' needs mode='naive' (the aligned modes keep "
                f"every token at its original position); got mode={self.mode!r}"
            )

    def kept(self, n: int) -> int:
        """Patch tokens left by this stage when ``n`` reach it."""
        k = self.keep if isinstance(self.keep, int) else math.ceil(self.keep * n - 1e-9)
        if not 1 <= k <= n:
            raise ValueError(
                f"VimPruneStage(layer={self.layer}, keep={self.keep!r}): keeps {k} of the {n} "
                f"patch tokens that reach it; expected 1 <= keep <= {n}"
            )
        return k


@dataclasses.dataclass(frozen=True)
class VimPruningPlan:
    """Stages at strictly increasing layers, all of one mode (frozen, hashable: static).

    Raises:
      ValueError: if a stage is not a ``VimPruneStage``, the layers do not strictly increase,
        or the stages mix modes.

    Example:
      >>> VimPruningPlan.top_vim("aligned_gap").token_counts(196)
      (157, 126, 101)
    """

    stages: tuple[VimPruneStage, ...] = ()

    def __post_init__(self):
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        for s in stages:
            if not isinstance(s, VimPruneStage):
                raise ValueError(
                    f"VimPruningPlan: stages must be VimPruneStage; got {type(s).__name__}"
                )
        layers = [s.layer for s in stages]
        if layers != sorted(set(layers)):
            raise ValueError(f"VimPruningPlan: stage layers must strictly increase; got {layers}")
        modes = sorted({s.mode for s in stages})
        if len(modes) > 1:
            raise ValueError(f"VimPruningPlan: all stages must share one mode; got {modes}")

    @classmethod
    def at(
        cls, layers: int | tuple[int, ...], keep: int | float, mode: str = "aligned_gap", **kw: Any
    ) -> VimPruningPlan:
        """The same stage (keep, mode, metric, ...) before each of ``layers``."""
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        return cls(tuple(VimPruneStage(layer=i, keep=keep, mode=mode, **kw) for i in layers))

    @classmethod
    def top_vim(
        cls, mode: str = "aligned_gap", *, keep: int | float = 0.8, **kw: Any
    ) -> VimPruningPlan:
        """ToP-ViM's schedule: before the 0-based blocks 5, 10, 15 (``TOPVIM_LAYERS``).

        That is after the 5th, 10th and 15th block (1-based ``layernum`` of the released code),
        keeping ``keep`` = 0.8 of the patch tokens each time; needs ``depth >= 16``.
        """
        return cls.at(TOPVIM_LAYERS, keep, mode, **kw)

    @property
    def mode(self) -> str | None:
        """The plan's mode (None for an empty plan)."""
        return self.stages[0].mode if self.stages else None

    def stage_at(self, layer: int) -> VimPruneStage | None:
        for s in self.stages:
            if s.layer == layer:
                return s
        return None

    def token_counts(self, num_patches: int) -> tuple[int, ...]:
        """Patch tokens left after each stage."""
        counts, n = [], num_patches
        for s in self.stages:
            n = s.kept(n)
            counts.append(n)
        return tuple(counts)

    def block_tokens(self, depth: int, num_patches: int) -> tuple[int, ...]:
        """Kept tokens (class token included) entering each of the ``depth`` blocks."""
        layers = [s.layer for s in self.stages]
        counts = dict(zip(layers, self.token_counts(num_patches), strict=True))
        out, n = [], num_patches
        for i in range(depth):
            n = counts.get(i, n)
            out.append(n + 1)
        return tuple(out)

    def validate(self, depth: int, num_patches: int) -> None:
        """Raises ``ValueError`` unless the plan fits a model of this depth and patch count."""
        for s in self.stages:
            if s.layer >= depth:
                raise ValueError(
                    f"VimPruningPlan: stage at layer {s.layer} but the model has {depth} "
                    f"blocks; expected 1 <= layer < {depth}"
                )
        self.token_counts(num_patches)
