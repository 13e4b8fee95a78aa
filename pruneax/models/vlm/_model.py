"""LLaVA-style vision-language model in Flax NNX: ViT -> MLP projector -> Llama decoder, with
pre-LLM visual-token selection (``VisualSelect``) and in-LLM pruning (``prune=``), combinable.

The prompt is ``[prefix text tokens] [N visual tokens] [question tokens]``. The visual tokens
are the patch tokens (CLS and other prefix tokens dropped) of the vision encoder's hidden state
``vision_layer`` (the penultimate, ``-2``, as LLaVA's ``mm_vision_select_layer``), mapped to the
LLM width by LLaVA-1.5's projector ``Linear(Dv, D) -> GELU -> Linear(D, D)``. ``VLMConfig``
also describes LLaVA's ``"full"`` strategy (CLS kept, always first), PaliGemma's linear
projector, final-normed SigLIP features, 1-based positions and prefix-LM attention
(``load_vlm`` maps Hugging Face checkpoints onto it). Batches may be left-padded
(``attention_mask`` over the full prompt, ``_prompt.py``); ``generate`` decodes greedily.

Pre-LLM selection keeps ``k`` of the N visual tokens per example (``jax.vmap`` over the batch)
with a ``pruneax.tokens`` selector; the kept tokens stay in their original (raster) order and
the others never enter the LLM. RoPE positions: as in the published pre-LLM methods
(FasterVLM, DivPrune, MMTok, HiPrune, HoloV all drop the tokens from ``inputs_embeds`` before
the LLM), the LLM numbers the shortened sequence contiguously, so the question follows the
``k`` kept tokens at positions ``P + k, ...``. In-LLM pruning (``FastVSpec`` or any spec with
the same interface) is passed through to ``LlamaLM`` unchanged: it acts on the image span
``[P, P + pv + k)`` of the sequence the LLM sees (pv prefix visual tokens, "full" only), and
kept tokens keep their (renumbered) positions.
``VisualSelect(keep_positions=True)`` instead keeps the original positions (an ablation).

References: Liu et al., "Visual Instruction Tuning" (LLaVA), NeurIPS 2023 (arXiv:2304.08485);
Liu et al., "Improved Baselines with Visual Instruction Tuning" (LLaVA-1.5), CVPR 2024
(arXiv:2310.03744); Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual
Token Pruning" (FasterVLM), 2024 (arXiv:2412.01818); Alvar et al., "DivPrune", CVPR 2025
(arXiv:2503.02175); ToDRE, 2025; MMTok, 2025; HiPrune, 2025; Zou et al., HoloV, NeurIPS 2025;
Endo et al., "Feather the Throttle" (FEATHER), 2024 (arXiv:2412.13180); Chen et al., FastV,
ECCV 2024 (arXiv:2403.06764).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax import tokens as T
from pruneax.models._shared.common import check_images
from pruneax.models.llama._model import KVCache, LlamaLM
from pruneax.models.vit._model import ViT
from pruneax.models.vlm._config import VLMConfig, VLMOutput
from pruneax.models.vlm._flowcut import encode_selected
from pruneax.models.vlm._focal import encode_focal
from pruneax.models.vlm._projector import Projector
from pruneax.models.vlm._prompt import VLMPrompt
from pruneax.models.vlm._select import (
    NO_SELECT,
    VLM_SELECT_ALIASES,
    VLM_SELECT_METHODS,
    VisualSelect,
    _ids,
    uniform_visual_indices,
)
from pruneax.models.vlm._visiondrop import encode_visiondrop

__all__ = [
    "NO_SELECT",
    "VLM",
    "VLM_SELECT_ALIASES",
    "VLM_SELECT_METHODS",
    "VLMConfig",
    "VLMOutput",
    "VisualSelect",
    "uniform_visual_indices",
]


class VLM(nnx.Module, VLMPrompt):
    """A LLaVA-style VLM: ``vision`` (``ViT``) -> ``projector`` -> ``llm`` (``LlamaLM``).

    Args:
      config: a ``VLMConfig``.
      rngs: ``nnx.Rngs`` for the initializers of the parts not given.
      vision: an existing ``ViT`` (e.g. from ``load_vit``) whose config equals
        ``config.vision``; None builds one from scratch.
      llm: an existing ``LlamaLM`` (e.g. from ``load_llm``) whose config equals
        ``config.llm``; None builds one.
      dtype, param_dtype: computation and parameter dtypes of the parts built here; selection
        always runs in float32.

    Raises:
      ValueError: for a config of the wrong type or given parts that do not match it; at call
        time for bad inputs (see ``__call__``).

    References: Liu et al., LLaVA-1.5, CVPR 2024 (arXiv:2310.03744).
    """

    def __init__(
        self,
        config: VLMConfig,
        *,
        rngs: nnx.Rngs,
        vision: ViT | None = None,
        llm: LlamaLM | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, VLMConfig):
            raise ValueError(f"VLM: config must be a VLMConfig; got {type(config).__name__}")
        if vision is not None and (not isinstance(vision, ViT) or vision.config != config.vision):
            raise ValueError("VLM: vision must be a ViT whose config equals config.vision")
        if llm is not None and (not isinstance(llm, LlamaLM) or llm.config != config.llm):
            raise ValueError("VLM: llm must be a LlamaLM whose config equals config.llm")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.config = config
        self.vision = vision if vision is not None else ViT(config.vision, **kw)
        self.projector = Projector(config, **kw)
        self.llm = llm if llm is not None else LlamaLM(config.llm, **kw)

    # -------------------------------------------------------------------------- vision side

    def _shallow(self, select: VisualSelect) -> int:
        h = self.config.feature_layer
        if select.shallow_layer is None:
            return max(0, round(h * 9 / 24) - 1)
        if select.shallow_layer >= h:
            raise ValueError(
                f"VLM: select.shallow_layer must be < {h} (the vision blocks that run, "
                f"vision_layer={self.config.vision_layer}); got {select.shallow_layer}"
            )
        return select.shallow_layer

    def encode(
        self, images: jax.Array, *, attention_at: tuple[int, ...] = ()
    ) -> tuple[jax.Array, dict[int, jax.Array]]:
        """Vision features of the feature layer and the asked blocks' attention.

        Runs the vision embeddings (and ``pre_norm``) and blocks ``0 .. h - 1`` (h =
        ``config.feature_layer``); the later blocks, the head and (unless
        ``config.vision_norm``) the final norm are skipped.

        Args:
          images: [B, H, W, C] float images.
          attention_at: vision blocks (0-based, < h) whose attention probabilities to return.

        Returns:
          ``(features [B, P + N, Dv], {block: [B, heads, P + N, P + N] float32})`` with the
          prefix tokens (CLS, ...) first.
        """
        vision = self.vision
        cfg = vision.config
        check_images(images, (*cfg.image_hw, cfg.num_channels), "VLM")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"VLM: images must be floating point; got dtype {images.dtype}")
        x = vision.embed(images)
        if vision.pre_norm is not None:
            x = vision.pre_norm(x)
        attn: dict[int, jax.Array] = {}
        for i in range(self.config.feature_layer):
            x, probs, _ = vision.blocks[i](x, return_attention=i in attention_at)
            if probs is not None:
                attn[i] = probs
        if self.config.vision_norm:
            x = vision.norm(x)
        return x, attn

    def select_visual(
        self,
        images: jax.Array,
        question_ids: jax.Array | None = None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
        question_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The projected visual tokens that enter the LLM and their patch indices.

        Runs the registry method ``select.registry_name`` (``pruneax.tokens.select_tokens``)
        per example under ``jax.vmap``, given the inputs it needs or takes (computed only then):
        ``scores`` = the [CLS] attention of the feature layer's block; an encoder without a
        CLS token (SigLIP: PaliGemma) has no such row, and ``scores`` is then the attention
        each patch receives at that block (``pruneax.tokens.received_attention``, mean over
        heads and queries), the same as ``deep_scores``; ``deep_scores`` / ``shallow_scores`` = the
        attention each patch receives at that block / at ``select.shallow_layer``'s block;
        ``features`` = the projector outputs [N, D]; ``vision_features`` = the vision
        features [N, Dv]; ``text`` = the question's LLM input embeddings (when
        ``select.coverage_text`` and there is a question); ``grid`` = the patch grid;
        ``key`` = ``split(key, B)[b]`` for example ``b``. ``select.in_vision`` methods
        (``"flowcut"``, ``"visiondrop"``, ``"fopru"``) instead prune inside the vision encoder
        (``_flowcut.py``: blocks up to the feature layer under ``PruningPlan.flowcut``;
        ``_visiondrop.py``: dominant + contextual tokens at the feature block), and only the
        kept tokens are projected.

        Args:
          images: [B, H, W, C] float images.
          question_ids: [B, Q] int question tokens, or None.
          select: the ``VisualSelect`` (static).
          key: PRNG key, for methods that need one (``"random"``).
          question_mask: [B, Q] bool validity of ``question_ids`` (padding inside the
            question is False), or None (all valid). Masked positions are left out of
            ``text`` (their rows become NaN, which the coverage selector ignores).

        Returns:
          ``(tokens [B, pv + k, D], kept [B, k] int32)``: the ``pv =
          config.num_visual_prefix`` prefix tokens (``feature_select="full"``: CLS, ...) then
          the kept patches; ``kept`` indexes the N patches, ascending (``"visiondrop"``: -1
          for the CLS token, the dominant patches, then the contextual tokens' targets).

        Raises:
          ValueError: for bad images, a ``select`` that is not a ``VisualSelect`` or does not
            fit, a method that needs a key without one, or an input the method needs that the
            VLM cannot give (e.g. ``text`` without a question).
        """
        if not isinstance(select, VisualSelect):
            raise ValueError(f"VLM: select must be a VisualSelect; got {type(select).__name__}")
        vcfg = self.vision.config
        h = self.config.feature_layer
        p, n = vcfg.num_prefix, vcfg.num_patches
        pv = self.config.num_visual_prefix  # prefix tokens kept ("full"), always first
        if select.method in ("visiondrop", "fopru"):
            encode = encode_visiondrop if select.method == "visiondrop" else encode_focal
            feats, idx = encode(self, images, select)
            return self.projector(feats), idx
        if select.in_vision:
            feats, idx = encode_selected(self, images, select, key)
            return self.projector(feats[:, p - pv :]), idx
        k = select.num_kept(n)
        name = select.registry_name
        method = None if name is None else T.get_method(name)
        uses = frozenset() if method is None else method.needs | method.optional
        if method is not None and "key" in method.needs and key is None:
            raise ValueError(f"VLM: select method {select.method!r} needs a PRNG key (key=...)")
        attention_at = (h - 1,) if uses & {"scores", "deep_scores"} else ()
        if "shallow_scores" in uses:
            attention_at = (self._shallow(select), *attention_at)
        feats, attn = self.encode(images, attention_at=attention_at)
        fv = feats[:, p:]  # [B, N, Dv] patch features, prefix dropped
        proj_all = self.projector(feats[:, p - pv :])  # [B, pv + N, D]
        head, proj = proj_all[:, :pv], proj_all[:, pv:]
        b = proj.shape[0]
        if method is None or k == n:
            return proj_all, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))

        received = jax.vmap(lambda a: T.received_attention(a, num_prefix=p))
        inputs: dict[str, jax.Array] = {}
        if "scores" in uses:
            cls = jax.vmap(lambda x: T.cls_attention(x, num_prefix=p))
            inputs["scores"] = (cls if vcfg.class_token else received)(attn[h - 1])
        if "deep_scores" in uses:
            inputs["deep_scores"] = received(attn[h - 1])
        if "shallow_scores" in uses:
            inputs["shallow_scores"] = received(attn[self._shallow(select)])
        if "features" in uses:
            inputs["features"] = proj
        if "vision_features" in uses:
            inputs["vision_features"] = fv
        if "text" in uses and select.coverage_text and question_ids is not None:
            if question_ids.shape[1]:
                text = self.llm.embed(question_ids)
                if question_mask is not None:
                    valid = jnp.asarray(question_mask).astype(bool)[..., None]
                    text = jnp.where(valid, text, jnp.nan)
                inputs["text"] = text
        if "key" in uses and key is not None:
            inputs["key"] = jax.random.split(key, b)
        static = {"grid": vcfg.grid} if "grid" in uses else {}
        options = select.method_options()

        def one(row):
            return T.select_tokens(name, k, **row, **static, **options)

        if inputs:
            idx = jax.vmap(one)(inputs)
        else:  # nothing per example (e.g. "uniform"): one selection for the batch
            idx = jnp.broadcast_to(one({}), (b, k))
        idx = idx.astype(jnp.int32)
        tokens = jnp.take_along_axis(proj, idx[..., None], axis=1)
        return jnp.concatenate([head, tokens], axis=1), idx

    # -------------------------------------------------------------------------- LLM side

    def embed_inputs(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None,
        question_ids: jax.Array | None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
        question_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``inputs_embeds`` [B, P + pv + k + Q, D] of the prompt and the kept patch indices
        [B, k] (``pv = config.num_visual_prefix``); ``question_mask`` as ``select_visual``.

        Feed them to ``self.llm`` or ``generate_greedy(vlm.llm, inputs_embeds=...,
        attention_mask=vlm.llm_attention_mask(...))``, or use ``generate``.

        Raises:
          ValueError: as ``select_visual``, or for token ids that are not integer [B, L]
            with the images' batch size.
        """
        b = images.shape[0] if hasattr(images, "shape") and len(images.shape) else -1
        prefix = _ids(prefix_ids, "prefix_ids", b)
        question = _ids(question_ids, "question_ids", b)
        visual, kept = self.select_visual(
            images, question, select=select, key=key, question_mask=question_mask
        )
        parts = []
        if prefix is not None:
            parts.append(self.llm.embed(prefix).astype(visual.dtype))
        parts.append(visual)
        if question is not None:
            parts.append(self.llm.embed(question).astype(visual.dtype))
        return jnp.concatenate(parts, axis=1), kept

    def __call__(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
        select: VisualSelect = NO_SELECT,
        prune: Any = None,
        cache: KVCache | None = None,
        key: jax.Array | None = None,
        logits_to_keep: int = 0,
        return_attention_at: tuple[int, ...] = (),
    ) -> VLMOutput:
        """Runs the prompt ``[prefix] [visual tokens] [question]`` through the VLM.

        Args:
          images: [B, H, W, C] float images (NHWC, the vision encoder's size).
          prefix_ids: [B, P] int text tokens before the image, or None (P = 0).
          question_ids: [B, Q] int text tokens after the image, or None (Q = 0).
          attention_mask: [B, P + Nv + Q] bool / 0-1 validity of the full prompt with the Nv
            = ``config.num_visual`` visual tokens expanded (transformers' layout), e.g. left
            padding inside ``prefix_ids``; sliced to the tokens the LLM sees
            (``llm_attention_mask``). Padding may also sit inside ``question_ids`` as long as
            every row's last token is valid (same outputs at the valid tokens). None: all valid.
          select: pre-LLM ``VisualSelect`` (static); default keeps all N visual tokens.
          prune: an in-LLM pruning spec (``FastVSpec`` or one with the same interface:
            ``start``, ``stop``, ...), passed to ``LlamaLM`` unchanged (static). Its image span
            must be ``[P, P + pv + k)``: the pv = ``config.num_visual_prefix`` prefix visual
            tokens and the k patches left after ``select``.
          cache: a ``KVCache`` to fill (``init_cache(config.llm, B, max_len, prune=prune)``
            with ``max_len >= prompt_length(P, Q, select)``), or None.
          key: PRNG key for ``select.method == "random"``.
          logits_to_keep: as ``LlamaLM`` (1: only the last token's logits; static).
          return_attention_at: LLM layers whose attention to return (static).

        Returns:
          A ``VLMOutput``. Positions: the LLM numbers the valid tokens of the prompt
          contiguously after pre-LLM selection (``0 .. P + pv + k + Q - 1`` without padding,
          continuing from ``cache.next_position``), unless ``select.keep_positions``
          (original positions, see ``positions``). With ``config.prefix_lm`` (PaliGemma) the
          prompt attends bidirectionally.

        Raises:
          ValueError: for bad images / ids / select (see ``embed_inputs``), a mask of the
            wrong shape, a ``prune`` whose image span is not ``[P, P + pv + k)``, or anything
            ``LlamaLM`` refuses.
        """
        start = None if cache is None else cache.next_position
        kw = self.prepare(
            images,
            prefix_ids,
            question_ids,
            attention_mask=attention_mask,
            select=select,
            prune=prune,
            key=key,
            next_position=start,
        )
        kept = kw.pop("kept")
        out = self.llm(
            **kw,
            cache=cache,
            prune=prune,
            logits_to_keep=logits_to_keep,
            return_attention_at=return_attention_at,
        )
        return VLMOutput(llm=out, visual_kept=kept)
