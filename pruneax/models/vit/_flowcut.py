"""FlowCut in the ViT: ``FlowCutStage``, one ``ViTStage`` per scoring block.

FlowCut (``pruneax.tokens.flowcut_step``) scores the patches after every block ``0 .. S - 1``
(``S = select_layer``), keeps an exponential moving average of the scores and prunes at the
blocks whose ``rpl = S - 1 - block`` is even, by a data-dependent amount; block ``S - 1``
leaves exactly ``k`` patches. Shapes are static under ``jax.jit``, so the stages after blocks
``0 .. S - 2`` do not shorten the token array: they mark the pruned tokens dead with size 0,
which the attention turns into a ``log(0) = -inf`` bias over the keys (ToMe's size channel), so
every alive token attends to the alive tokens only, exactly as on the published shortened
sequence. The stage after block ``S - 1`` gathers the ``k`` alive patches (original order,
CLS first); blocks ``S ..`` run on ``1 + k`` tokens. Until then every block still computes all
tokens: FlowCut saves compute here only from block ``S`` on (``PruningPlan.block_tokens``
says so).

The stages pass the cumulative scores to each other through the model's ``carry``
(``carries = True``) and read their block's value states (``value_blocks``).

References: Tong et al., "FlowCut", NeurIPS 2025 (arXiv:2505.19536); TungChintao/FlowCut
(``flowcut/modeling_clip_flowcut.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T

BATCH_COUNTS = ("example", "max")
_CARRY = "flowcut_cum"


@dataclasses.dataclass(frozen=True)
class FlowCutStage:
    """FlowCut after block ``layer - 1`` (a ``ViTStage``; build a plan with
    ``PruningPlan.flowcut``).

    Attributes:
      layer: the stage runs before block ``layer`` on block ``layer - 1``'s output and reads
        that block's [CLS] attention row and value states; ``1 <= layer <= select_layer``.
      keep: patches left after the last stage: an int count or a float ratio in (0, 1] of
        the patches of the input.
      select_layer: ``S``: blocks ``0 .. S - 1`` score, block ``S - 1`` leaves ``keep``.
      batch_count: ``"example"``: each example prunes its own adaptive amount; ``"max"``:
        every example prunes the batch's largest amount (the published batched code).

    Raises:
      ValueError: for a bad layer, keep, select_layer or batch_count; at run time if the
        model does not have exactly one prefix token (the [CLS] token) or the carry from the
        previous FlowCut stage is missing.

    Example:
      >>> from pruneax.models.vit import FlowCutStage
      >>> s = FlowCutStage(layer=3, keep=8, select_layer=4)
      >>> s.rpl, s.final, s.out_tokens(16), s.reads()
      (1, False, 16, {2: (True, False)})
    """

    layer: int
    keep: int | float
    select_layer: int
    batch_count: str = "example"

    in_block = False
    uses_size = True  # size 0 masks a dead token out of the attention keys
    carries = True
    method = "flowcut"

    def __post_init__(self):
        for name in ("layer", "select_layer"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FlowCutStage: {name} must be an int >= 1; got {v!r}")
        if self.layer > self.select_layer:
            raise ValueError(
                f"FlowCutStage: layer must be <= select_layer = {self.select_layer}; got "
                f"{self.layer}"
            )
        if isinstance(self.keep, bool) or not isinstance(self.keep, int | float):
            raise ValueError(f"FlowCutStage: keep must be an int or a float; got {self.keep!r}")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"FlowCutStage: keep as a ratio must be in (0, 1]; got {self.keep}")
        if isinstance(self.keep, int) and self.keep < 1:
            raise ValueError(f"FlowCutStage: keep as a count must be >= 1; got {self.keep}")
        if self.batch_count not in BATCH_COUNTS:
            raise ValueError(
                f"FlowCutStage: batch_count must be one of {BATCH_COUNTS}; got {self.batch_count!r}"
            )

    @property
    def rpl(self) -> int:
        """The published ``remain_prune_layer`` of the block read: ``select_layer - layer``."""
        return self.select_layer - self.layer

    @property
    def final(self) -> bool:
        """True for the last stage (``rpl == 0``), which gathers the ``keep`` patches."""
        return self.rpl == 0

    def kept(self, n: int) -> int:
        """Patches left after the last stage when ``n`` enter the model."""
        return keep_count("FlowCutStage", self.keep, n)

    def out_tokens(self, n: int) -> int:
        """Patch tokens in the array after the stage: ``n`` (dead ones included) until the
        last stage, then ``keep``. ``n`` is the input's patch count at every stage."""
        k = self.kept(n)
        return k if self.final else n

    def reads(self) -> dict[int, tuple[bool, bool]]:
        """The [CLS] attention of block ``layer - 1`` (no keys)."""
        return {self.layer - 1: (True, False)}

    def cls_row_blocks(self) -> frozenset[int]:
        """Only the [CLS] row of the attention is read."""
        return frozenset({self.layer - 1})

    def value_blocks(self) -> frozenset[int]:
        """Blocks whose value states [B, H, T, hd] the stage reads."""
        return frozenset({self.layer - 1})

    def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key, carry=None):
        """Runs the stage on a batch; returns ``(x, size, src, carry)`` (see ``ViTStage``).

        Until the last stage ``x`` is unchanged, ``size`` is 1 for CLS and the alive patches
        and 0 for the dead ones, and ``src`` is -1 for a dead patch (the model then reports
        id -1 for it in ``ViTOutput.kept``). The last stage gathers the ``keep`` alive patches.
        """
        del patch_ids, grid, key
        if num_prefix != 1:
            raise ValueError(
                "FlowCutStage: FlowCut scores with the [CLS] token; the model must have exactly "
                f"one prefix token (the CLS); got {num_prefix}"
            )
        block = self.layer - 1
        got = aux.get(block, {})
        row = got.get("cls_attn")
        if row is None and got.get("attn") is not None:
            row = got["attn"][:, :, 0]
        values = got.get("values")
        if row is None or values is None:
            raise ValueError(
                f"FlowCutStage(layer={self.layer}): needs block {block}'s CLS attention and value "
                "states; the model did not keep them (run it through ViT with this plan)"
            )
        carry = {} if carry is None else dict(carry)
        cum = carry.get(_CARRY)
        if cum is None and self.layer != 1:
            raise ValueError(
                f"FlowCutStage(layer={self.layer}): no cumulative scores from the stage before; "
                "FlowCut stages must run after every block 0 .. select_layer - 1 "
                "(PruningPlan.flowcut)"
            )
        b, n = x.shape[0], x.shape[1] - 1
        k = self.kept(n)
        alive = size[:, 1:] > 0
        count = None
        if self.batch_count == "max" and self.rpl % 2 == 0:
            rel = jnp.where(alive, jnp.mean(row[:, :, 1:].astype(jnp.float32), axis=1), 0.0)
            n_alive = jnp.sum(alive, axis=1, dtype=jnp.int32)
            one = lambda r, m: T.flowcut_prune_count(r, m, k, self.rpl)
            count = jnp.broadcast_to(jnp.max(jax.vmap(one)(rel, n_alive)), (b,))
        step = lambda a, v, al, c, r: T.flowcut_step(a, v, al, c, k, self.rpl, r)
        alive, cum = jax.vmap(step)(row, values, alive, cum, count)
        if not self.final:
            sizes = jnp.concatenate([size[:, :1], alive.astype(size.dtype)], axis=1)
            src = jnp.where(alive, jnp.arange(n, dtype=jnp.int32), -1)
            return x, sizes, src, {**carry, _CARRY: cum}
        idx = jax.vmap(lambda a: jnp.flatnonzero(a, size=k))(alive).astype(jnp.int32)
        patches = jnp.take_along_axis(x[:, 1:], idx[..., None], axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        carry.pop(_CARRY, None)
        return x, jnp.ones(x.shape[:2], size.dtype), idx, carry


def keep_count(owner: str, keep: int | float, n: int) -> int:
    """``keep`` as a count of the ``n`` patch tokens: the int, or ``ceil(keep * n)`` (as
    ``PruneStage``).

    Raises:
      ValueError: naming ``owner`` unless the count is in ``[1, n]``.
    """
    k = keep if isinstance(keep, int) else math.ceil(keep * n - 1e-9)
    if not 1 <= k <= n:
        raise ValueError(
            f"{owner}(keep={keep!r}): keeps {k} of the {n} patch tokens; expected 1 <= keep <= {n}"
        )
    return k


def flowcut_stages(
    keep: int | float, *, select_layer: int, batch_count: str = "example"
) -> tuple[FlowCutStage, ...]:
    """The FlowCut stages after blocks ``0 .. select_layer - 1`` (layers ``1 .. S``)."""
    return tuple(
        FlowCutStage(layer=i, keep=keep, select_layer=select_layer, batch_count=batch_count)
        for i in range(1, select_layer + 1)
    )


def check_flowcut(stages: tuple[Any, ...]) -> None:
    """Raises unless the plan's FlowCut stages are the whole schedule of one FlowCut run:
    layers ``1 .. S`` with the same keep / select_layer / batch_count and no other stage
    before layer ``S``."""
    flow = [s for s in stages if isinstance(s, FlowCutStage)]
    if not flow:
        return
    s0 = flow[0]
    want = flowcut_stages(s0.keep, select_layer=s0.select_layer, batch_count=s0.batch_count)
    before = [s for s in stages if s.layer <= s0.select_layer]
    if tuple(flow) != want or tuple(before) != want:
        raise ValueError(
            "PruningPlan: FlowCut stages must be one FlowCut schedule, FlowCutStage(layer=i) "
            f"for i = 1 .. select_layer with the same options and no other stage among them "
            f"(PruningPlan.flowcut); got layers {[s.layer for s in stages]}"
        )
