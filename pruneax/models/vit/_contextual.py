"""VisionZip / VisionDrop's vision stage as a ViT pruning stage (``ContextualStage``).

Before block ``layer``, on block ``layer - 1``'s output: the dominant patches are the top
``keep - c`` by that block's [CLS] attention row summed over heads (``pruneax.tokens.topk``,
original order); the other patches fold into ``c`` contextual tokens
(``pruneax.tokens.contextual_merge``: every ``R // c``-th remaining patch is a target, each
other remaining patch joins its most cosine-similar target under the block's key states
averaged over heads, and a contextual token is its target plus the mean of its members). The
tokens after the stage are ``[prefix, dominant patches, contextual tokens]``; the contextual
tokens are synthetic (``ViTOutput.kept`` reports -1 for them). In a classifier the CLS token is a
prefix token and is always kept, so all ``keep - c`` dominant tokens are patches (in the VLM,
``VisualSelect("visiondrop")`` counts the CLS among them, as the published ``--dominant`` does).

References: Yang et al., "VisionZip", CVPR 2025 (arXiv:2412.04467); Xu et al., VisionDrop,
AAAI 2026 (arXiv:2506.22283).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pruneax import tokens as T
from pruneax.models.vit._flowcut import keep_count


@dataclasses.dataclass(frozen=True)
class ContextualStage:
    """VisionZip's dominant + contextual tokens before block ``layer`` (a ``ViTStage``).

    Attributes:
      layer: the stage reads block ``layer - 1``'s [CLS] attention row and key states and runs
        on its output; >= 1.
      keep: tokens after the stage (dominant patches + contextual tokens): an int count or a
        float ratio in (0, 1] of the patches that reach it (``math.ceil``, as ``PruneStage``).
      contextual: c, the contextual tokens among them; None: ``keep // 8`` (VisionDrop's 6 of
        48); ``0 <= c < keep``.

    Raises:
      ValueError: for a bad layer, keep or contextual; at run time if the model has no [CLS]
        token first or ``c`` exceeds the patches left to merge.

    Example:
      >>> from pruneax.models.vit import ContextualStage, PruningPlan
      >>> s = ContextualStage(layer=3, keep=0.5, contextual=2)
      >>> s.out_tokens(16), s.reads(), PruningPlan((s,)).token_counts(16)
      (8, {2: (True, True)}, (8,))
    """

    layer: int
    keep: int | float
    contextual: int | None = None

    in_block = False
    uses_size = False
    method = "visiondrop"

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"ContextualStage: layer must be an int >= 1; got {self.layer!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int | float):
            raise ValueError(f"ContextualStage: keep must be an int or a float; got {self.keep!r}")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"ContextualStage: keep as a ratio must be in (0, 1]; got {self.keep}")
        if isinstance(self.keep, int) and self.keep < 1:
            raise ValueError(f"ContextualStage: keep as a count must be >= 1; got {self.keep}")
        c = self.contextual
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise ValueError(f"ContextualStage: contextual must be an int >= 0 or None; got {c!r}")

    def kept(self, n: int) -> int:
        """Tokens after the stage when ``n`` patches reach it."""
        return keep_count("ContextualStage", self.keep, n)

    def num_contextual(self, n: int) -> int:
        """c when ``n`` patches reach the stage (``keep // 8`` by default)."""
        k = self.kept(n)
        c = k // 8 if self.contextual is None else self.contextual
        if not c < k or (k < n and c > n - (k - c)):
            raise ValueError(
                f"ContextualStage: contextual must be < keep = {k} and at most the patches left "
                f"to merge; got {c}"
            )
        return c

    def out_tokens(self, n: int) -> int:
        """``keep`` tokens (dominant + contextual)."""
        return self.kept(n)

    def reads(self) -> dict[int, tuple[bool, bool]]:
        """Block ``layer - 1``'s attention (its [CLS] row) and key states."""
        return {self.layer - 1: (True, True)}

    def cls_row_blocks(self) -> frozenset[int]:
        """Only the [CLS] row of the attention is read."""
        return frozenset({self.layer - 1})

    def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key):
        """``(x, size, src)`` (see ``ViTStage``): ``src`` is the incoming index of each dominant
        patch and -1 for each contextual token."""
        del patch_ids, grid, key
        block = self.layer - 1
        got = aux.get(block, {})
        row = got.get("cls_attn")
        if row is None and got.get("attn") is not None:
            row = got["attn"][:, :, 0]
        keys = got.get("keys")
        if num_prefix < 1 or row is None or keys is None:
            raise ValueError(
                f"ContextualStage(layer={self.layer}): needs a [CLS] token first and block "
                f"{block}'s CLS attention and keys (run it through ViT with this plan)"
            )
        p = num_prefix
        n = x.shape[1] - p
        k = self.kept(n)
        c = self.num_contextual(n)
        scores = jnp.sum(row[:, :, p:].astype(jnp.float32), axis=1)  # heads summed
        metric = jnp.mean(keys[:, :, p:].astype(jnp.float32), axis=1)  # [B, n, hd]

        one = lambda sc, xs, met: T.dominant_contextual(sc, xs, met, k - c, c)
        tokens, dom, _ = jax.vmap(one)(scores, x[:, p:], metric)
        src = jnp.concatenate([dom, jnp.full((dom.shape[0], c), -1, jnp.int32)], axis=1)
        x = jnp.concatenate([x[:, :p], tokens], axis=1)
        return x, jnp.ones(x.shape[:2], size.dtype), src.astype(jnp.int32)
