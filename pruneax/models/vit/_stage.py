"""Token-pruning stages of the ViT: the ``ViTStage`` protocol and ``PruneStage``.

A ``PruningPlan`` (``_plan.py``) is a frozen, hashable tuple of stages. Every stage
reads the attention of block ``layer - 1`` (when it needs one) and block ``layer`` is the first
whose attention sees the reduced tokens. Where it runs depends on its placement:

- ``"in_block"``: inside block ``layer - 1``, after its attention residual and before its MLP,
  as the published ToMe and EViT blocks do (the MLP already runs on fewer tokens). The default
  for ``"tome"`` and ``"evit"``.
- ``"between_blocks"``: before block ``layer``, on the output of block ``layer - 1`` (after its
  MLP), as pre-LLM selection does. The default for the registry's selectors.

Any object satisfying the ``ViTStage`` protocol can be a stage; ``PruneStage`` covers the
methods of ``pruneax.tokens.METHODS`` (any registered selector, also one registered at run
time) plus ToMe merging and EViT fusion. Prefix tokens (CLS, distillation, registers) are never
dropped; the model reports which original patches survive each stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import jax

from pruneax import tokens as T
from pruneax.models.vit import _ops

PLACEMENTS = ("in_block", "between_blocks")
VIT_OPS = ("tome", "evit")  # the ViT's own token ops; every other method is a registry selector
_FIELD_OPTIONS = ("alpha", "stride", "num_chunks")  # PruneStage fields that are method options
_ATTENTION_INPUTS = frozenset({"scores", "shallow_scores", "deep_scores"})  # from attention


@runtime_checkable
class ViTStage(Protocol):
    """What ``ViT`` needs of a pruning stage; implement it to plug in your own stage.

    A stage must be hashable (e.g. a frozen dataclass): plans are static under ``jax.jit``.

    Attributes:
      layer: block ``layer`` is the first whose attention sees the stage's output (>= 1).
      in_block: True: the stage runs inside block ``layer - 1`` after its attention residual,
        before its MLP; False: before block ``layer``, after block ``layer - 1``'s MLP.
      uses_size: token sizes matter: the attention adds ``log(size)`` to the key logits
        (ToMe's proportional attention) and ``pool="mean"`` weighs tokens by size.

    Methods:
      reads(): ``{block: (attention probabilities, keys)}`` the stage needs; blocks in
        ``[previous stage's layer, layer)``.
      out_tokens(n): patch tokens after the stage when ``n`` reach it (synthetic included).
      apply(x, *, size, aux, patch_ids, num_prefix, grid, key): ``x`` [B, P + n, D], ``size``
        [B, P + n] float32, ``aux`` ``{block: {"attn": [B, H, T, T] or None, "keys":
        [B, H, T, hd] or None}}``, ``patch_ids`` [B, n] original patch of each patch token
        (-1: synthetic), ``num_prefix`` P, ``grid`` (rows, cols), ``key`` a PRNG key or None.
        Returns ``(x [B, P + n', D], size [B, P + n'], src [B, n'] int32)``: ``src`` indexes
        the incoming patch tokens (-1 for a synthetic token); prefix tokens stay first.
      cls_row_blocks() (optional): blocks among ``reads()`` whose attention the stage reads
        only as the [CLS] query's row; there the model runs the block fused and passes
        ``aux[block]["cls_attn"]`` [B, H, T] float32 with ``"attn"`` None (when the model has a
        prefix token and ``return_attention`` is off). Without it, ``"attn"`` is the full
        matrix.
      value_blocks() (optional): blocks whose attention value states the stage reads; the
        model passes them as ``aux[block]["values"]`` [B, H, T, hd] (``Block.value_states``).
      carries (optional attribute): True makes the model call ``apply(..., carry=...)`` with
        the dict the previous carrying stage returned (``{}`` at first) and expect ``(x, size,
        src, carry)``; ``FlowCutStage`` carries its cumulative scores this way. A stage may
        return a size of 0 for a token to mask it out of the attention keys (with
        ``uses_size``).

    Example:
      >>> import dataclasses, jax.numpy as jnp
      >>> from pruneax.models.vit import PruningPlan, ViTStage
      >>> @dataclasses.dataclass(frozen=True)
      ... class KeepFirst:
      ...     layer: int
      ...     k: int
      ...     in_block: bool = False
      ...     uses_size: bool = False
      ...     def reads(self):
      ...         return {}
      ...     def out_tokens(self, n):
      ...         return self.k
      ...     def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key):
      ...         src = jnp.broadcast_to(jnp.arange(self.k), (x.shape[0], self.k))
      ...         return x[:, : num_prefix + self.k], size[:, : num_prefix + self.k], src
      >>> isinstance(KeepFirst(2, 4), ViTStage), PruningPlan((KeepFirst(2, 4),)).token_counts(16)
      (True, (4,))
    """

    layer: int
    in_block: bool
    uses_size: bool

    def reads(self) -> Mapping[int, tuple[bool, bool]]: ...

    def out_tokens(self, n: int) -> int: ...

    def apply(
        self,
        x: jax.Array,
        *,
        size: jax.Array,
        aux: dict[int, dict[str, jax.Array | None]],
        patch_ids: jax.Array,
        num_prefix: int,
        grid: tuple[int, int],
        key: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]: ...


class _Methods(Mapping):
    """PruneStage methods, read live from the token registry: name -> (needs attention
    probabilities, needs keys) of block ``layer - 1`` (a shallow layer for HiPrune)."""

    def _table(self) -> dict[str, tuple[bool, bool]]:
        out = {
            name: (bool(_ATTENTION_INPUTS & (m.needs | m.optional)), False)
            for name, m in T.METHODS.items()
        }
        out.update(tome=(False, True), evit=(True, False))
        return out

    def __getitem__(self, name: str) -> tuple[bool, bool]:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"METHODS({self._table()!r})"


METHODS: Mapping[str, tuple[bool, bool]] = _Methods()


@dataclasses.dataclass(frozen=True)
class PruneStage:
    """One pruning stage: a registry selector, ToMe merging or EViT fusion (a ``ViTStage``).

    Attributes:
      layer: block ``layer`` is the first to attend over the reduced tokens; the stage reads
        block ``layer - 1``'s attention; ``1 <= layer < num_layers``.
      keep: patch tokens kept: an int count, or a float ratio in (0, 1] of the patch tokens that
        reach this stage (``ceil(ratio * n)``, as EViT). For ``tome`` it is the count/ratio left
        after merging (``r = n - keep`` tokens are merged away). For ``evit`` the fused token
        comes on top of ``keep`` (none when ``keep`` is every token, as published).
      method: ``"tome"``, ``"evit"`` or a key of ``pruneax.tokens.METHODS`` (see ``METHODS``).
      shallow_layer: methods needing ``shallow_scores`` (HiPrune): the block whose received
        attention picks the anchors (default: ``layer // 2``); it must run after the previous
        stage.
      alpha, stride, num_chunks: the registry options of that name (HiPrune's anchor
        fraction, FEATHER's grid stride, HoloV's chunks); None: the registry default.
      options: further registry options, a mapping (stored as sorted pairs).
      placement: ``"in_block"`` or ``"between_blocks"`` (module docstring); None: in-block for
        ``tome`` / ``evit`` (as published), between blocks for selectors.

    Raises:
      ValueError: for an unknown method or placement, a bad layer or keep, or an option the
        method does not take.

    Example:
      >>> from pruneax.models.vit import PruneStage
      >>> s = PruneStage(layer=4, keep=0.7, method="evit")
      >>> s.in_block, s.kept(196), s.out_tokens(196), s.reads()
      (True, 138, 139, {3: (True, False)})
    """

    layer: int
    keep: int | float
    method: str = "topk"
    shallow_layer: int | None = None
    alpha: float | None = None
    stride: int | None = None
    num_chunks: int | None = None
    options: Any = ()
    placement: str | None = None

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
        if self.shallow_layer is not None and not self._needs("shallow_scores"):
            raise ValueError(
                "PruneStage: shallow_layer only applies to methods that need shallow_scores "
                f"(hiprune); got method={self.method!r}"
            )
        placement = self.placement
        if placement is None:
            placement = "in_block" if self.method in VIT_OPS else "between_blocks"
        if placement not in PLACEMENTS:
            raise ValueError(
                f"PruneStage: placement must be one of {PLACEMENTS}; got {placement!r}"
            )
        object.__setattr__(self, "placement", placement)
        opts = dict(self.options)
        object.__setattr__(self, "options", tuple(sorted(opts.items())))
        takes = {} if self.method in VIT_OPS else T.get_method(self.method).options
        given = [f for f in _FIELD_OPTIONS if getattr(self, f) is not None] + sorted(opts)
        for name in given:
            if name not in takes:
                raise ValueError(
                    f"PruneStage: option {name!r} does not apply to method {self.method!r}; it "
                    f"takes {sorted(takes)}"
                )

    def _needs(self, name: str) -> bool:
        return self.method not in VIT_OPS and name in T.get_method(self.method).needs

    @property
    def method_options(self) -> dict[str, Any]:
        """The registry options this stage passes to its selector."""
        fields = {f: getattr(self, f) for f in _FIELD_OPTIONS if getattr(self, f) is not None}
        return {**fields, **dict(self.options)}

    @property
    def in_block(self) -> bool:
        """True when the stage runs inside block ``layer - 1``, before its MLP."""
        return self.placement == "in_block"

    @property
    def uses_size(self) -> bool:
        """ToMe's merged sizes feed proportional attention."""
        return self.method == "tome"

    @property
    def shallow(self) -> int:
        """HiPrune's shallow block (``shallow_layer`` or ``layer // 2``)."""
        return self.layer // 2 if self.shallow_layer is None else self.shallow_layer

    @property
    def needs_full_grid(self) -> bool:
        """True for methods that take the patch grid: they must be the first stage."""
        return self._needs("grid")

    def kept(self, n: int) -> int:
        """Patch tokens left by this stage when ``n`` reach it (fused EViT token excluded)."""
        k = self.keep if isinstance(self.keep, int) else math.ceil(self.keep * n - 1e-9)
        if not 1 <= k <= n:
            raise ValueError(
                f"PruneStage(layer={self.layer}, keep={self.keep!r}): keeps {k} of the {n} patch "
                f"tokens that reach it; expected 1 <= keep <= {n}"
            )
        return k

    def out_tokens(self, n: int) -> int:
        """Patch tokens after the stage, EViT's fused token included."""
        k = self.kept(n)
        return k + 1 if self.method == "evit" and k < n else k

    def reads(self) -> dict[int, tuple[bool, bool]]:
        """``{block: (attention probabilities, keys)}`` this stage reads."""
        attn, keys = METHODS[self.method]
        out = {self.layer - 1: (attn, keys)} if attn or keys else {}
        if self._needs("shallow_scores"):
            out[self.shallow] = (True, out.get(self.shallow, (False, False))[1])
        return out

    def cls_row_blocks(self) -> frozenset[int]:
        """Blocks whose attention this stage reads only through the [CLS] query's row.

        EViT and the selectors whose only attention input is ``scores`` (CLS attention:
        ``topk``, ``kcenter``, ``maxsum``, ``feather``, ``holov``...) need one row of block
        ``layer - 1``; the model then runs that block fused and computes the row from q and k.
        Received attention (``deep_scores``, ``shallow_scores``: HiPrune) averages all query
        rows, so those blocks keep the full probabilities. Without a prefix token the ViT
        scores by received attention, and the model ignores this.
        """
        if self.method == "evit":
            return frozenset({self.layer - 1})
        if self.method in VIT_OPS:
            return frozenset()
        m = T.get_method(self.method)
        uses = m.needs | m.optional
        if "scores" in uses and not (uses & {"deep_scores", "shallow_scores"}):
            return frozenset({self.layer - 1})
        return frozenset()

    def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key):
        """Runs the stage on a batch (see ``ViTStage``; ``patch_ids`` is unused)."""
        del patch_ids
        return _ops.run_prune_stage(
            self, x, size=size, aux=aux, num_prefix=num_prefix, grid=grid, key=key
        )
