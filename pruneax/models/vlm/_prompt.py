"""The VLM prompt's bookkeeping after pre-LLM selection: which columns of the full prompt the
LLM sees, their attention mask and their original RoPE positions.

The full prompt (what transformers' ``LlavaForConditionalGeneration`` gets, with the image
placeholder expanded) is ``[P prefix tokens] [Nv visual tokens] [Q question tokens]``; after
selection the LLM sees ``[P] [pv prefix visual tokens] [k kept patches] [Q]``
(``pv = VLMConfig.num_visual_prefix``).

References: transformers' ``models/llava/modeling_llava.py`` (``LlavaModel.forward``: the
``attention_mask`` covers the expanded prompt) and ``generation/utils.py`` (positions of a
left-padded prompt: ``cumsum(attention_mask) - 1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from pruneax.models.vlm._select import NO_SELECT, VisualSelect

if TYPE_CHECKING:
    from pruneax.models.vlm._config import VLMConfig


def prompt_columns(prefix_len: int, kept: jax.Array, question_len: int, pv: int, nv: int):
    """int32 [B, P + pv + k + Q]: the columns of the full prompt ``[P] [nv] [Q]`` that the
    LLM sees when the patches ``kept`` [B, k] (indices into the nv - pv patches) survive."""
    b = kept.shape[0]
    head = jnp.arange(prefix_len + pv, dtype=jnp.int32)
    tail = jnp.arange(question_len, dtype=jnp.int32) + prefix_len + nv
    return jnp.concatenate(
        [
            jnp.broadcast_to(head, (b, head.shape[0])),
            kept.astype(jnp.int32) + prefix_len + pv,
            jnp.broadcast_to(tail, (b, question_len)),
        ],
        axis=1,
    )


def check_mask(attention_mask: Any, b: int, t: int) -> jax.Array:
    """``attention_mask`` as bool [B, T] (T = the full prompt), or a ValueError."""
    m = jnp.asarray(attention_mask)
    if m.shape != (b, t) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(
            f"VLM: attention_mask must be bool or 0/1 integers of shape [B, P + Nv + Q] = "
            f"{(b, t)} (the prompt with the Nv visual tokens expanded, as transformers gets "
            f"it); got shape {tuple(m.shape)} dtype {m.dtype}"
        )
    return m.astype(bool)


def full_positions(mask: jax.Array | None, b: int, t: int) -> jax.Array:
    """int32 [B, T] positions of the full prompt: ``0 .. T - 1``, or with a mask the running
    count of valid tokens minus one, floored at 0 (padding gets 0, as transformers)."""
    if mask is None:
        return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


class VLMPrompt:
    """The prompt methods of ``VLM`` (mixed in): columns, mask, positions, LLM arguments."""

    config: VLMConfig

    def _columns(self, prefix_len: int, kept: jax.Array, question_len: int) -> jax.Array:
        c = self.config
        return prompt_columns(prefix_len, kept, question_len, c.num_visual_prefix, c.num_visual)

    def positions(
        self,
        prefix_len: int,
        kept: jax.Array,
        question_len: int,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Original RoPE positions [B, P + pv + k + Q] of a prompt whose patches ``kept``
        [B, k] survived selection: ``0 .. P + pv - 1``, ``P + pv + kept``, ``P + Nv .. P + Nv
        + Q - 1``; with ``attention_mask`` (as ``__call__``) the positions the full prompt's
        valid tokens have (``cumsum(mask) - 1``) at those columns.

        Args:
          prefix_len: P, text tokens before the image.
          kept: [B, k] kept patch indices (``select_visual``'s second output).
          question_len: Q, text tokens after the image.
          attention_mask: None, or [B, P + Nv + Q] validity of the full prompt.

        Returns:
          int32 [B, P + pv + k + Q] (without ``config.position_offset``).

        Raises:
          ValueError: for a mask of the wrong shape or dtype.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> import pruneax.models as M
          >>> cfg = M.VLMConfig(vision=M.vit_config("mnist/4", num_classes=0),
          ...                   llm=M.llm_config("tiny", num_layers=1))
          >>> vlm = M.VLM(cfg, rngs=nnx.Rngs(0))  # 49 patches
          >>> vlm.positions(2, jnp.array([[0, 10]]), 1).tolist()
          [[0, 1, 2, 12, 51]]
        """
        b = kept.shape[0]
        t = prefix_len + self.config.num_visual + question_len
        mask = None if attention_mask is None else check_mask(attention_mask, b, t)
        cols = self._columns(prefix_len, kept, question_len)
        return jnp.take_along_axis(full_positions(mask, b, t), cols, axis=1)

    def llm_attention_mask(
        self, attention_mask: jax.Array, kept: jax.Array, prefix_len: int
    ) -> jax.Array:
        """The LLM's bool mask [B, P + pv + k + Q] from the full prompt's ``attention_mask``
        [B, P + Nv + Q] (transformers' layout: the Nv visual tokens expanded) and the kept
        patches [B, k] (``embed_inputs``' second output).

        Args:
          attention_mask: [B, P + Nv + Q] bool / 0-1 validity of the full prompt.
          kept: [B, k] kept patch indices.
          prefix_len: P.

        Returns:
          bool [B, P + pv + k + Q], the columns the LLM sees.

        Raises:
          ValueError: if ``attention_mask`` is not bool / integer [B, P + Nv + Q].
        """
        b, t = kept.shape[0], jnp.shape(attention_mask)[-1]
        question_len = t - prefix_len - self.config.num_visual
        mask = check_mask(attention_mask, b, max(t, prefix_len + self.config.num_visual))
        cols = self._columns(prefix_len, kept, question_len)
        return jnp.take_along_axis(mask, cols, axis=1)

    def prompt_length(
        self, prefix_len: int, question_len: int, select: VisualSelect = NO_SELECT
    ) -> int:
        """Tokens the LLM sees in the prompt: ``prefix_len + pv + k + question_len``."""
        n = self.config.vision.num_patches
        return prefix_len + self.config.num_visual_prefix + select.num_kept(n) + question_len

    def prepare(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
        select: VisualSelect = NO_SELECT,
        prune: Any = None,
        key: jax.Array | None = None,
        next_position: jax.Array | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of ``self.llm`` for the prompt (see ``__call__``):
        ``inputs_embeds``, ``attention_mask``, ``positions`` and ``bidirectional`` (as
        ``LlamaLM`` takes them), plus ``"kept"`` (the kept patch indices, popped by callers).

        Args:
          images, prefix_ids, question_ids, attention_mask, select, prune, key: as
            ``__call__``.
          next_position: [B] the cache's next position, added to explicit positions.

        Returns:
          The dict above (``attention_mask`` / ``positions`` None when LlamaLM's defaults
          apply; ``bidirectional`` only with ``config.prefix_lm``).

        Raises:
          ValueError: as ``__call__``.
        """
        p = 0 if prefix_ids is None else int(jnp.shape(prefix_ids)[1])
        q = 0 if question_ids is None else int(jnp.shape(question_ids)[1])
        question_mask = None
        if attention_mask is not None and q and jnp.ndim(attention_mask) == 2:
            question_mask = jnp.asarray(attention_mask)[:, jnp.shape(attention_mask)[1] - q :]
        embeds, kept = self.embed_inputs(
            images, prefix_ids, question_ids, select=select, key=key, question_mask=question_mask
        )
        pv, k = self.config.num_visual_prefix, kept.shape[1]
        if prune is not None:
            start, stop = getattr(prune, "start", None), getattr(prune, "stop", None)
            if (start, stop) != (p, p + pv + k):
                span = "P + k" if pv == 0 else f"P + pv + k) with pv = {pv} (prefix visual tokens"
                raise ValueError(
                    f"VLM: prune's image span must be [P, {span}) = [{p}, {p + pv + k}) (P "
                    f"prefix tokens, k visual tokens after select); got [{start}, {stop})"
                )
        mask = None
        if attention_mask is not None:
            check_mask(attention_mask, kept.shape[0], p + self.config.num_visual + q)
            mask = self.llm_attention_mask(attention_mask, kept, p)
        positions = None
        offset = self.config.position_offset
        if select.keep_positions:
            positions = self.positions(p, kept, q, attention_mask) + offset
        elif offset:  # LlamaLM's default numbering, shifted
            b, t = embeds.shape[:2]
            positions = full_positions(mask, b, t) + offset
        if positions is not None and next_position is not None:
            positions = positions + next_position[:, None]
        out = dict(inputs_embeds=embeds, attention_mask=mask, positions=positions, kept=kept)
        if self.config.prefix_lm:
            t = embeds.shape[1]
            out["bidirectional"] = jnp.ones((embeds.shape[0], t), bool)
        return out

    def generate(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        max_new_tokens: int = 16,
        *,
        attention_mask: jax.Array | None = None,
        select: VisualSelect = NO_SELECT,
        prune: Any = None,
        key: jax.Array | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Any:
        """Greedy generation from the prompt ``[prefix] [visual tokens] [question]``: one
        jitted program (prefill as ``__call__``, then ``decode_greedy``; generated tokens
        attend causally, also with ``config.prefix_lm``).

        Args:
          images, prefix_ids, question_ids, attention_mask, select, prune, key: as
            ``__call__``.
          max_new_tokens: tokens to generate, >= 1 (static).
          eos_token_id, pad_token_id: as ``generate_greedy``.

        Returns:
          A ``GenerationOutput`` (``tokens`` [B, max_new_tokens] int32).

        Raises:
          ValueError: as ``__call__``, or for a bad ``max_new_tokens`` / token id.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> import pruneax.models as M
          >>> cfg = M.VLMConfig(vision=M.vit_config("mnist/4", num_classes=0),
          ...                   llm=M.llm_config("tiny", num_layers=1))
          >>> vlm = M.VLM(cfg, rngs=nnx.Rngs(0))
          >>> images, ids = jnp.zeros((2, 28, 28, 1)), jnp.zeros((2, 3), jnp.int32)
          >>> vlm.generate(images, ids, ids, 4).tokens.shape
          (2, 4)
        """
        from pruneax.models.vlm._generate import generate_vlm

        return generate_vlm(
            self,
            images,
            prefix_ids,
            question_ids,
            max_new_tokens,
            attention_mask=attention_mask,
            select=select,
            prune=prune,
            key=key,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
