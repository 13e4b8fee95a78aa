"""Llama-family decoder (Llama 2 / 3, Qwen2, Gemma 1) in Flax NNX: KV cache, in-LLM pruning.

``LlamaLM`` is the decoder-only transformer of Llama as transformers' ``LlamaForCausalLM``
computes it: token embedding (or caller-supplied ``inputs_embeds``, so that a VLM can splice
projected image tokens into the sequence), ``num_layers`` x [RMSNorm -> grouped-query attention
with rotary position embedding (RoPE, rotate-half layout) at EXPLICIT position ids -> residual
-> RMSNorm -> SwiGLU MLP -> residual], a final RMSNorm and an LM head (tied to the embedding or
not). Qwen2 is the same network with biases on the query / key / value projections; Gemma
(v1) the same with a GeGLU MLP (tanh GELU), unit-offset RMSNorms computed in float32, and the
embeddings multiplied by sqrt(hidden_size) (see ``LlamaConfig``).

The pieces live beside it: ``_config`` (``LlamaConfig``, variants), ``_rope``, ``_layers``
(attention, MLP, norm, block), ``_cache`` (``KVCache``, one ``LayerCache`` threaded through each
layer), ``_flow`` (the tokens of one call, one layer run on them, the transition statistics a
spec asked for), ``_checks`` (argument checks), ``_prune`` (the ``PruneSpec`` protocol) and the
built-in specs ``_prune_fastv`` / ``_prune_feather`` / ``_prune_todre`` / ``_prune_visiondrop``
/ ``_prune_transprune``, ``_generate`` (greedy decoding).

In-LLM visual token pruning (``prune=``, one hashable ``PruneSpec`` per call): at each of the
spec's pruning layers the spec returns which tokens go on; pruned tokens leave the sequence of
the later layers and their KV caches, text tokens are never dropped, kept tokens keep their
ORIGINAL RoPE position ids (unless the spec renumbers them: ``VisionDropSpec``,
``TransPruneSpec``; later calls then continue each layer's own numbering, ``layer_shifts``).
Later decode steps then attend over fewer entries.

References: Touvron et al., "Llama 2: Open Foundation and Fine-Tuned Chat Models", 2023
(arXiv:2307.09288); Yang et al., "Qwen2 Technical Report", 2024 (arXiv:2407.10671);
transformers' ``modeling_llama.py``, ``modeling_qwen2.py``, ``modeling_gemma.py``; Gemma Team,
"Gemma: Open Models Based on Gemini Research and Technology", 2024 (arXiv:2403.08295).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax.models._shared.layers import lm_head, lm_logits
from pruneax.models.llama._cache import KVCache, init_cache, layer_shifts
from pruneax.models.llama._checks import (
    plan_call,
    token_flags,
    token_inputs,
    token_mask,
    token_positions,
)
from pruneax.models.llama._config import LLM_VARIANTS, LlamaConfig, llm_config
from pruneax.models.llama._flow import Tokens, follow_keep, measured, run_layer
from pruneax.models.llama._layers import LlamaAttention, LlamaBlock, LlamaMlp, normal02, rms_norm
from pruneax.models.llama._prune import (
    PruneContext,
    PruneSpec,
    PruneStep,
    TransitionStats,
    check_prune,
    check_step,
)
from pruneax.models.llama._prune_fastv import FastVSpec, fastv_keep_indices
from pruneax.models.llama._prune_feather import FeatherSpec
from pruneax.models.llama._prune_todre import TodreSpec
from pruneax.models.llama._prune_visiondrop import VisionDropSpec
from pruneax.models.llama._rope import apply_rope, rope_cos_sin, rope_inv_freq
from pruneax.models.llama._scores import reduce_probs

# names other modules import from here (pruneax.models.vlm, pruneax.models.structured, _hf)
__all__ = [
    "LLM_VARIANTS",
    "FastVSpec",
    "FeatherSpec",
    "KVCache",
    "LlamaAttention",
    "LlamaBlock",
    "LlamaConfig",
    "LlamaLM",
    "LlamaMlp",
    "LlamaOutput",
    "PruneContext",
    "PruneSpec",
    "PruneStep",
    "TodreSpec",
    "VisionDropSpec",
    "apply_rope",
    "check_prune",
    "fastv_keep_indices",
    "init_cache",
    "llm_config",
    "rope_cos_sin",
    "rope_inv_freq",
]

_F32 = jnp.float32


@struct.dataclass
class LlamaOutput:
    """What ``LlamaLM.__call__`` returns (a pytree: it passes through ``jax.jit``).

    T' is the number of tokens that reach the last layer: T, or
    ``prune.tokens_per_layer(num_layers, T)[-1]`` after pruning.

    Attributes:
      logits: [B, T', V] float32 (only the last ``logits_to_keep`` tokens when that is > 0).
        With an overflowing cache under jit (more tokens than slots) every logit is NaN.
      hidden: [B, T', D] the last hidden state, after the final RMSNorm.
      positions: [B, T'] int32 RoPE positions of the last layer's tokens.
      kept: [B, T'] int32 ascending indices (into the call's tokens) of the tokens the last
        layer processes; None without pruning (``arange(T)`` for a masking ``TodreSpec``).
      attentions: {layer: [B, H, T_l, S_l] float32 probabilities} for the layers in
        ``return_attention_at`` (S_l = T_l without a cache, the layer's cache size with one).
      hidden_states: when asked, the residual stream entering layer 0 and after each layer
        (``num_layers + 1`` arrays, the last before the final norm; lengths shrink after
        pruning: entry l is the input of layer l BEFORE that layer prunes).
      cache: the updated ``KVCache``, or None when called without one.
      prune_info: what the spec reports, or None without pruning / for FastV:
        ``FeatherSpec``: ``"scores_{l}"`` float32 [B, N_l] the criterion over the image tokens
        entering pruning layer l; ``TodreSpec``: ``"drop"`` bool [B], ``"text_to_visual"``,
        ``"visual_to_text"`` float32 [B]; ``VisionDropSpec``: ``"scores_{l}"``;
        ``TransPruneSpec``: ``"scores_{l}"``, ``"ttv_{l}"``, ``"iga_{l}"`` float32 [B, n_l].
    """

    logits: jax.Array
    hidden: jax.Array
    positions: jax.Array
    kept: jax.Array | None = None
    attentions: dict[int, jax.Array] = struct.field(default_factory=dict)
    hidden_states: tuple[jax.Array, ...] | None = None
    cache: KVCache | None = None
    prune_info: dict[str, jax.Array] | None = None


class LlamaLM(nnx.Module):
    """Llama-family causal language model: embedding, decoder layers, final RMSNorm, LM head.

    Leaf names mirror transformers' (so that ``load_llm`` maps them one to one):
    ``embed_tokens/embedding`` [V, D], ``layers/{i}/input_layernorm/scale``,
    ``layers/{i}/self_attn/{q,k,v,o}_proj/{kernel,bias}``,
    ``layers/{i}/post_attention_layernorm/scale``, ``layers/{i}/mlp/{gate,up,down}_proj/kernel``,
    ``norm/scale``, ``lm_head/kernel`` [D, V] (absent when tied). Every dense weight is a
    ``kernel``, so ``pruneax.weights``' default predicate selects the projections and the
    untied head. From scratch (HF's init): weights and the embedding N(0, 0.02^2), biases 0,
    norm scales 1 (0 for Gemma's unit-offset norms: ``rms_norm_unit_offset``).

    Args:
      config: a ``LlamaConfig`` (``llm_config("tiny")`` for a named variant).
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype; RMSNorm statistics, RoPE angles, explicit attention softmax and
        the logits are float32 whatever it is.
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``LlamaConfig``; at call time for bad
        inputs (see ``__call__``).

    References: Touvron et al., "Llama 2", 2023 (arXiv:2307.09288); transformers'
      ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``.

    Example:
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 7), jnp.int32)).logits.shape
      (2, 7, 256)
    """

    def __init__(
        self,
        config: LlamaConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"LlamaLM: config must be a LlamaConfig; got {type(config).__name__}")
        cfg = config
        self.config = cfg
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=normal02,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.List([LlamaBlock(cfg, layer=i, **kw) for i in range(cfg.num_layers)])
        self.norm = rms_norm(cfg, dtype, param_dtype, rngs)
        self.lm_head = lm_head(
            cfg.hidden_size, cfg.vocab_size, tied=cfg.tie_word_embeddings, init=normal02, **kw
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, D] of ``input_ids`` [B, T] (what ``inputs_embeds`` replaces):
        the embedding rows, WITHOUT Gemma's normaliser (``scale_inputs`` applies it)."""
        return self.embed_tokens(input_ids)

    def scale_inputs(self, x: jax.Array) -> jax.Array:
        """The residual stream entering layer 0 from embeddings ``x`` [B, T, D] (``embed``'s, or
        ``inputs_embeds``): ``x * sqrt(hidden_size)`` with the normaliser cast to ``x``'s dtype
        first when ``config.scale_embeddings`` (Gemma), else ``x`` unchanged."""
        if not self.config.scale_embeddings:
            return x
        return x * jnp.asarray(self.config.hidden_size**0.5, dtype=x.dtype)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(cos, sin)`` [B, T, head_dim] for positions [B, T] (see ``rope_cos_sin``)."""
        return rope_cos_sin(positions, self.config, self.dtype)

    def head(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits of final-normed hidden states (tied or untied LM head)."""
        return lm_logits(hidden, self.embed_tokens, self.lm_head)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        attention_mask: jax.Array | None = None,
        return_attention_at: tuple[int, ...] = (),
        return_hidden_states: bool = False,
        prune: PruneSpec | None = None,
        logits_to_keep: int = 0,
        bidirectional: jax.Array | None = None,
    ) -> LlamaOutput:
        """Runs the decoder on T new tokens (a whole prompt, or a prefill / decode chunk).

        Args:
          input_ids: [B, T] integer token ids; or
          inputs_embeds: [B, T, D] floating embeddings instead (exactly one of the two), in
            ``embed``'s scale: for a Gemma config (``scale_embeddings``) they are multiplied by
            ``sqrt(hidden_size)`` like the token embeddings (transformers 4.x's GemmaModel;
            PaliGemma divides its image features by ``sqrt(hidden_size)`` before, so they
            enter layer 0 unscaled).
          positions: [B, T] (or [T]) integer RoPE positions; default: continue from
            ``cache.next_position`` (0 without a cache) over the valid tokens, i.e.
            ``next_position + cumsum(attention_mask) - 1`` (HF's rule for left padding;
            padding tokens get ``next_position``).
          cache: a ``KVCache`` (``init_cache``) to read the past from and write the new keys /
            values to; None runs without one (plain causal attention over the T tokens).
          attention_mask: [B, T] bool / 0-1 validity of the NEW tokens (False = padding; the
            cache remembers the past ones). Batches must be LEFT-padded: the last token of
            every row is real (FastV scores with it, ``next_position`` follows it).
          return_attention_at: layers whose attention probabilities to return (static).
          return_hidden_states: also return the residual stream before / after each layer.
          prune: a ``PruneSpec`` (static: ``FastVSpec``, ``FeatherSpec``, ``TodreSpec`` or
            your own) acting at the input of its ``pruning_layers``; the cache, if any, must
            have room (``init_cache(..., prune=prune)`` sizes it). Decode calls after a pruned
            prefill pass None.
          logits_to_keep: compute logits for the last n tokens only (0: all; static).
          bidirectional: [B, T] bool / 0-1 flags of the new tokens that form a bidirectional
            prefix (PaliGemma's prefix-LM: image + prompt tokens, ``token_type_ids == 0``):
            token i attends to token j when j <= i (causal) or both are flagged, among the
            valid tokens; flagged tokens see flagged tokens of THIS call only (earlier cached
            tokens are before them anyway). None: plain causal. Decode steps after a
            bidirectional prefill pass None. The flags follow the tokens an in-LLM ``prune``
            keeps.

        Returns:
          A ``LlamaOutput``.

        Raises:
          ValueError: for missing / both / malformed inputs, a mask, positions or cache of the
            wrong shape, layers out of range, a ``prune`` that does not fit, or (outside jit)
            a cache without room for the new tokens.

        Example:
          >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
          >>> out = model(jnp.zeros((1, 5), jnp.int32), prune=FastVSpec(start=1, stop=5, layer=1))
          >>> out.logits.shape, out.kept.shape  # 2 of the 4 image tokens leave at layer 1
          ((1, 3, 256), (1, 3))
        """
        x = self.scale_inputs(token_inputs(self, input_ids, inputs_embeds))
        b, t = x.shape[:2]
        valid = token_mask(attention_mask, b, t)
        bidir = token_flags(bidirectional, b, t)
        plan = plan_call(self.config, b, t, cache, prune, return_attention_at, logits_to_keep)
        start = cache.next_position if cache is not None else jnp.zeros((b,), jnp.int32)
        positions = token_positions(positions, valid, start, b, t)
        kept = None if prune is None else jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        seq = Tokens(x, positions, *self.rope(positions), valid, kept, bidir)
        # per-layer numbering lag behind layer 0 (nonzero only after a renumbering prefill)
        shifts = None if cache is None else layer_shifts(cache)
        attentions: dict[int, jax.Array] = {}
        scores: dict[int, jax.Array] = {}  # what the spec reads, in its attention_form
        info: dict[str, jax.Array] = {}
        stored: dict[int, TransitionStats] = {}  # the spec's transition_layers so far
        hidden_states, layer_caches = [x], []
        for i, layer in enumerate(self.layers):
            if shifts is not None:  # seq.positions stay in layer 0's numbering
                seq = self._shifted(seq, shifts[i])
            if i in plan.events:
                offset = cache.lengths[i - 1] if cache is not None and i > 0 else 0
                ctx = PruneContext(
                    seq.x, seq.valid, scores.get(i - 1), offset, layer, seq.positions, dict(stored)
                )
                seq, step_info, keep = self._prune(prune, i, ctx, seq, plan.tokens[i])
                info.update(step_info)
                stored = follow_keep(stored, keep)
            layer_cache = None if cache is None else cache.layer(i)
            form, explicit = plan.forms.get(i), i in plan.explicit
            tr = i in plan.transitions
            x, probs, new_cache, stats = run_layer(layer, seq, layer_cache, explicit, form, tr)
            if tr:
                stored[i] = measured(stats, seq.valid)
            seq = seq._replace(x=x)
            if shifts is not None:
                seq = self._shifted(seq, -shifts[i])
            if i in plan.asked:
                attentions[i] = probs
            if form is not None:
                offset = 0 if layer_cache is None else layer_cache.length
                scores[i] = reduce_probs(probs, form, offset) if explicit else probs
            hidden_states.append(x)
            layer_caches.append(new_cache)

        hidden = self.norm(seq.x)
        logits = self.head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        new_cache = None
        out_positions = seq.positions
        if cache is not None:
            new_cache = KVCache.from_layers(layer_caches, positions[:, -1] + 1)
            overflow = jnp.any(new_cache.lengths > jnp.asarray(new_cache.sizes))
            logits = jnp.where(overflow, jnp.nan, logits)
            out_positions = seq.positions - shifts[-1][:, None]
        return LlamaOutput(
            logits=logits,
            hidden=hidden,
            positions=out_positions,
            kept=seq.kept,
            attentions=attentions,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
            cache=new_cache,
            prune_info=info or None,
        )

    def _shifted(self, seq: Tokens, shift: jax.Array) -> Tokens:
        """``seq`` with its positions lowered by ``shift`` [B] (and the RoPE recomputed)."""
        return self._renumbered(seq, seq.positions - shift[:, None])

    def _renumbered(self, seq: Tokens, positions: jax.Array) -> Tokens:
        """``seq`` at ``positions`` [B, T] (and their RoPE)."""
        cos, sin = self.rope(positions)
        return seq._replace(positions=positions, cos=cos, sin=sin)

    def _prune(
        self, prune: PruneSpec, i: int, ctx: PruneContext, seq: Tokens, tokens: int
    ) -> tuple[Tokens, dict[str, jax.Array], jax.Array | None]:
        """Runs ``prune.apply`` at the input of layer ``i``: gathers the kept tokens (with their
        original positions, unless the step renumbers them; the step's merged hidden states
        replace the gathered ones) and hides the hidden ones; returns them, the info and the
        step's ``keep``."""
        b, t = seq.valid.shape
        step = check_step(prune.apply(i, self.config.num_layers, ctx), prune, i, b, t, tokens)
        if step.keep is not None:
            gather = lambda a: jnp.take_along_axis(a, step.keep, axis=1)
            x = jnp.take_along_axis(seq.x, step.keep[..., None], axis=1)
            positions = gather(seq.positions)
            cos, sin = self.rope(positions)
            bidir = None if seq.bidir is None else gather(seq.bidir)
            seq = Tokens(x, positions, cos, sin, gather(seq.valid), gather(seq.kept), bidir)
        if step.x is not None:
            seq = seq._replace(x=jnp.asarray(step.x).astype(seq.x.dtype))
        if step.positions is not None:
            positions = jnp.asarray(step.positions).astype(jnp.int32)
            seq = self._renumbered(seq, positions)
        if step.hide is not None:  # out of the keys (and cache) of this layer on
            seq = seq._replace(valid=seq.valid & ~step.hide)
        return seq, step.info, step.keep
