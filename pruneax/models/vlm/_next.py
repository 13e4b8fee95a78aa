"""LLaVA-NeXT (LLaVA-1.6, "anyres") in Flax NNX: the ``VLM``'s vision tower, projector and LLM run
on high-resolution images cut into tiles, with LLaVA-NeXT's spatial packing, unpadding and
``image_newline`` (see ``_anyres.py``), pre-LLM selection over the packed tokens and in-LLM
pruning.

``LlavaNext`` composes a ``VLM`` (``.vlm.vision`` / ``.vlm.projector`` / ``.vlm.llm``) and adds
``image_newline``. Per image: every tile (base tile first, then the grid tiles in raster order)
runs through the vision tower up to ``vision_layer``; ``"default"`` drops the CLS token,
``"full"`` keeps every token (a tower without prefix tokens); the projector maps the patches to
the LLM width; the tokens are packed as transformers' ``pack_image_features`` does.

Batching: images of different sizes give different token counts. ``image_sizes`` is STATIC (a
NumPy array or nested tuple of Python ints; a new set of sizes compiles a new program under
jit), so every count is a Python int. The vision tower runs once on the real tiles of all
images (the processor's zero padding tiles are skipped). Each row is then padded to the
longest prompt ``P + n_max + Q`` with an ``attention_mask``: ``padding="left"`` puts the pad
tokens first, exactly as transformers' left-padded ``input_ids``; ``padding="image"`` puts
them just before the image, so that the image span is ``[P, P + n_max)`` in every row (what a
static in-LLM ``prune`` span such as ``FastVSpec`` needs). Pad tokens are invisible (masked keys;
positions count only valid tokens), so both layouts give the same logits at real tokens. Under
in-LLM pruning with ``padding="image"``, a row's pad tokens are part of the span: they score 0
and go first, so a shorter row can keep fewer real tokens than ``num_keep``. The packed span
is not one raster grid (base tile, then unpadded rows with newlines): specs that need a grid
(``FeatherSpec``) take ``grid=(1, n_max)``.

Transcribed from transformers v5 ``models/llava_next/modeling_llava_next.py``
(``LlavaNextModel.get_image_features``, ``pack_image_features``, ``forward``).

References: Liu et al., LLaVA-NeXT, 2024 (https://llava-vl.github.io/blog/2024-01-30-llava-next/).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax import tokens as T
from pruneax.models.llama._model import KVCache
from pruneax.models.vlm._anyres import AnyresLayout
from pruneax.models.vlm._model import VLM
from pruneax.models.vlm._next_config import LlavaNextConfig, LlavaNextOutput, _static_sizes
from pruneax.models.vlm._next_select import num_selected, select_image
from pruneax.models.vlm._select import NO_SELECT, VisualSelect, _ids


class LlavaNext(nnx.Module):
    """LLaVA-NeXT: a ``VLM`` (``vlm``) run on anyres tiles, plus ``image_newline``.

    Args:
      config: a ``LlavaNextConfig``.
      rngs: ``nnx.Rngs`` for the parts built here.
      vlm: an existing ``VLM`` whose config equals ``config.vlm``; None builds one.
      dtype, param_dtype: computation and parameter dtypes of the parts built here.

    Raises:
      ValueError: for a config of the wrong type or a ``vlm`` that does not match it; at call
        time for bad inputs (see ``__call__``).

    Example:
      >>> from pruneax.models.llama import llm_config
      >>> from pruneax.models.vit import ViTConfig
      >>> from pruneax.models.vlm import VLMConfig
      >>> vit = ViTConfig(image_size=24, patch_size=6, hidden_size=16, num_layers=2,
      ...                 num_heads=2, mlp_dim=32, num_classes=0)
      >>> cfg = LlavaNextConfig(VLMConfig(vit, llm_config("tiny", num_layers=1)), [[24, 48]])
      >>> model = LlavaNext(cfg, rngs=nnx.Rngs(0))
      >>> pixels = jnp.zeros((1, 3, 24, 24, 3))  # [B, tiles, H, W, C]
      >>> model(pixels, [(20, 50)], jnp.zeros((1, 2), jnp.int32)).logits.shape
      (1, 54, 256)
    """

    def __init__(
        self,
        config: LlavaNextConfig,
        *,
        rngs: nnx.Rngs,
        vlm: VLM | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, LlavaNextConfig):
            raise ValueError(f"LlavaNext: config must be a LlavaNextConfig; got {type(config)}")
        if vlm is not None and (not isinstance(vlm, VLM) or vlm.config != config.vlm):
            raise ValueError("LlavaNext: vlm must be a VLM whose config equals config.vlm")
        self.config = config
        self.vlm = (
            vlm
            if vlm is not None
            else VLM(config.vlm, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        )
        d = config.vlm.llm.hidden_size
        init = jax.random.normal(rngs.params(), (d,), jnp.float32) / math.sqrt(d)
        self.image_newline = nnx.Param(init.astype(param_dtype))

    # -------------------------------------------------------------------------- vision side

    def layouts(self, image_sizes: Any) -> tuple[AnyresLayout, ...]:
        """The ``AnyresLayout`` of every image of ``image_sizes`` [B, 2] (static)."""
        sizes = _static_sizes(image_sizes, np.shape(image_sizes)[0])
        return tuple(self.config.layout(s) for s in sizes)

    def image_tokens(
        self,
        pixel_values: jax.Array,
        image_sizes: Any,
        question_ids: jax.Array | None = None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
        question_mask: jax.Array | None = None,
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """The packed visual tokens of every image and their packed positions.

        Args:
          pixel_values: [B, tiles, S, S, C] float tiles, NHWC (the processor's
            ``pixel_values.transpose(0, 1, 3, 4, 2)``; padding tiles past an image's own are
            ignored).
          image_sizes: [B, 2] original ``(height, width)`` per image, static.
          question_ids: [B, Q] question tokens (for methods that take ``text``), or None.
          select: a pre-LLM ``VisualSelect`` (see ``_next_select``); default keeps all.
          key: PRNG key for methods that need one.
          question_mask: [B, Q] validity of ``question_ids`` (masked rows leave ``text``, as
            in ``VLM.select_visual``), or None.

        Returns:
          ``(tokens, kept)``: per image, [n_b, D] tokens and int32 [n_b] packed positions.

        Raises:
          ValueError: for bad shapes, sizes, a ``select`` that does not fit, or a method that
            needs a key without one.
        """
        if not isinstance(select, VisualSelect):
            raise ValueError(f"LlavaNext: select must be a VisualSelect; got {type(select)}")
        if select.keep_positions:
            raise ValueError("LlavaNext: select.keep_positions=True is not supported")
        x = jnp.asarray(pixel_values)
        v = self.config.vlm.vision
        s = self.config.tile_size
        if x.ndim != 5 or x.shape[2:] != (s, s, v.num_channels):
            raise ValueError(
                f"LlavaNext: pixel_values must be [B, tiles, {s}, {s}, {v.num_channels}] (NHWC "
                f"tiles); got shape {tuple(x.shape)}"
            )
        lays = tuple(self.config.layout(hw) for hw in _static_sizes(image_sizes, x.shape[0]))
        if max(lay.num_tiles for lay in lays) > x.shape[1]:
            raise ValueError(
                f"LlavaNext: image_sizes need {[lay.num_tiles for lay in lays]} tiles; "
                f"pixel_values has {x.shape[1]}"
            )
        name = select.registry_name
        method = None if name is None else T.get_method(name)
        uses = frozenset() if method is None else method.needs | method.optional
        if "key" in uses and key is None:
            raise ValueError(f"LlavaNext: select method {select.method!r} needs a key (key=...)")
        for lay in lays:  # budget errors before any compute
            num_selected(lay, select)
        h = self.config.vlm.feature_layer
        at = (h - 1,) if uses & {"scores", "deep_scores"} else ()
        if "shallow_scores" in uses:
            at = (self.vlm._shallow(select), *at)
        tiles = jnp.concatenate([x[b, : lay.num_tiles] for b, lay in enumerate(lays)], axis=0)
        feats, attn = self.vlm.encode(tiles, attention_at=at)
        p = v.num_prefix
        fv = feats[:, p:]  # [tiles, g*g, Dv]
        proj = self.vlm.projector(fv)  # [tiles, g*g, D]
        flat = _per_tile_inputs(uses, attn, fv, proj, p, v.class_token, h, self.vlm, select)
        text = None
        if "text" in uses and select.coverage_text and question_ids is not None:
            q = _ids(question_ids, "question_ids", x.shape[0])
            text = None if q is None else self.vlm.llm.embed(q)
            if text is not None and question_mask is not None:
                text = jnp.where(jnp.asarray(question_mask).astype(bool)[..., None], text, jnp.nan)
        keys = [None] * len(lays) if key is None else list(jax.random.split(key, len(lays)))
        newline = self.image_newline[...].astype(proj.dtype)
        out_tokens, out_kept = [], []
        start = 0
        for b, lay in enumerate(lays):
            stop = start + lay.num_tiles
            src = lay.pack_index()
            feats_b = proj[start:stop].reshape(-1, proj.shape[-1])
            packed = jnp.where(
                (src < 0)[:, None], newline[None], feats_b[jnp.asarray(np.maximum(src, 0))]
            )
            if name is None:
                kept = jnp.arange(src.size, dtype=jnp.int32)
            else:
                inputs = {n: a[start:stop].reshape(lay.num_tiles * lay.base, *a.shape[2:])
                          for n, a in flat.items()}  # fmt: skip
                if text is not None:
                    inputs["text"] = text[b]
                kept = select_image(lay, select, inputs, keys[b])
                packed = packed[kept]
            out_tokens.append(packed)
            out_kept.append(kept)
            start = stop
        return out_tokens, out_kept

    # -------------------------------------------------------------------------- LLM side

    def embed_inputs(
        self,
        pixel_values: jax.Array,
        image_sizes: Any,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
        padding: str = "left",
        prefix_mask: jax.Array | None = None,
        question_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The padded prompt embeddings, its mask and the kept packed positions.

        Feed ``(embeds, mask)`` to ``self.vlm.llm(inputs_embeds=..., attention_mask=...)`` or
        ``generate_greedy(model.vlm.llm, inputs_embeds=..., attention_mask=...)``.

        Args:
          pixel_values, image_sizes, select, key: as ``image_tokens``.
          prefix_ids: [B, P] text tokens before the image, or None.
          question_ids: [B, Q] text tokens after the image, or None.
          padding: ``"left"`` (pads first, transformers' layout) or ``"image"`` (pads right
            before the image: the image span is ``[P, P + n_max)`` in every row).
          prefix_mask, question_mask: [B, P] / [B, Q] bool / 0-1 validity of the text tokens
            (e.g. prompts of different lengths left-padded inside ``prefix_ids``), or None
            (all valid). Every row's last token must be valid.

        Returns:
          ``(embeds [B, T, D], attention_mask [B, T] bool, kept [B, n_max] int32)`` with
          T = P + n_max + Q; ``kept`` is -1 past a row's own tokens.

        Raises:
          ValueError: as ``image_tokens``, for bad ids or an unknown ``padding``.
        """
        if padding not in ("left", "image"):
            raise ValueError(f"LlavaNext: padding must be 'left' or 'image'; got {padding!r}")
        b = jnp.shape(pixel_values)[0]
        prefix = _ids(prefix_ids, "prefix_ids", b)
        question = _ids(question_ids, "question_ids", b)
        pairs = (("prefix_mask", prefix_mask, prefix), ("question_mask", question_mask, question))
        masks_in = [_text_mask(m, x, name, b) for name, m, x in pairs]
        tokens, kept = self.image_tokens(
            pixel_values, image_sizes, question, select=select, key=key,
            question_mask=masks_in[1] if question is not None else None,
        )  # fmt: skip
        n_max = max(t.shape[0] for t in tokens)
        d = tokens[0].shape[-1]
        dtype = tokens[0].dtype
        rows, masks, kepts = [], [], []
        for i, (tok, kp) in enumerate(zip(tokens, kept, strict=True)):
            n = tok.shape[0]
            pad = jnp.zeros((n_max - n, d), dtype)
            pre = [] if prefix is None else [self.vlm.llm.embed(prefix[i]).astype(dtype)]
            post = [] if question is None else [self.vlm.llm.embed(question[i]).astype(dtype)]
            m_pad, m_img = jnp.zeros((n_max - n,), bool), jnp.ones((n,), bool)
            m_pre, m_post = (m[i] for m in masks_in)
            if padding == "left":
                parts = [pad, *pre, tok, *post]
                mask = [m_pad, m_pre, m_img, m_post]
            else:
                parts = [*pre, pad, tok, *post]
                mask = [m_pre, m_pad, m_img, m_post]
            rows.append(jnp.concatenate(parts, axis=0))
            masks.append(jnp.concatenate(mask))
            kepts.append(jnp.pad(kp, (0, n_max - n), constant_values=-1))
        return jnp.stack(rows), jnp.stack(masks), jnp.stack(kepts)

    def __call__(
        self,
        pixel_values: jax.Array,
        image_sizes: Any,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        *,
        select: VisualSelect = NO_SELECT,
        prune: Any = None,
        cache: KVCache | None = None,
        key: jax.Array | None = None,
        padding: str = "left",
        prefix_mask: jax.Array | None = None,
        question_mask: jax.Array | None = None,
        logits_to_keep: int = 0,
        return_attention_at: tuple[int, ...] = (),
    ) -> LlavaNextOutput:
        """Runs the prompt ``[prefix] [packed visual tokens] [question]`` (padded) through the LLM.

        Args:
          pixel_values: [B, tiles, S, S, C] NHWC tiles (see ``image_tokens``).
          image_sizes: [B, 2] original ``(height, width)``, static.
          prefix_ids, question_ids: [B, P] / [B, Q] text tokens, or None.
          select: pre-LLM ``VisualSelect`` over the packed tokens (static).
          prune: an in-LLM spec (``FastVSpec`` ...) whose image span must be ``[P, P + n_max)``;
            with images of different token counts it needs ``padding="image"`` (static).
          cache: a ``KVCache`` to fill (``init_cache(config.vlm.llm, B, max_len, prune=prune)``).
          key: PRNG key for methods that need one.
          padding: ``"left"`` or ``"image"`` (see ``embed_inputs``).
          prefix_mask, question_mask: validity of the text tokens (see ``embed_inputs``).
          logits_to_keep, return_attention_at: as ``LlamaLM`` (static).

        Returns:
          A ``LlavaNextOutput``; positions count the valid tokens only (transformers' rule).

        Raises:
          ValueError: as ``embed_inputs``, for a ``prune`` span that is not the image span, or
            anything ``LlamaLM`` refuses.
        """
        embeds, mask, kept = self.embed_inputs(
            pixel_values, image_sizes, prefix_ids, question_ids,
            select=select, key=key, padding=padding, prefix_mask=prefix_mask,
            question_mask=question_mask,
        )  # fmt: skip
        if prune is not None:
            p = 0 if prefix_ids is None else int(jnp.shape(prefix_ids)[1])
            n_max = kept.shape[1]
            lengths = {num_selected(lay, select) for lay in self.layouts(image_sizes)}
            span = (getattr(prune, "start", None), getattr(prune, "stop", None))
            if span != (p, p + n_max):
                raise ValueError(
                    f"LlavaNext: prune's image span must be [P, P + n_max) = [{p}, {p + n_max}); "
                    f"got [{span[0]}, {span[1]})"
                )
            if padding == "left" and len(lengths) > 1:
                raise ValueError(
                    "LlavaNext: images with different token counts under padding='left' have "
                    "different image spans; use padding='image' with an in-LLM prune"
                )
        out = self.vlm.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            cache=cache,
            prune=prune,
            logits_to_keep=logits_to_keep,
            return_attention_at=return_attention_at,
        )
        return LlavaNextOutput(llm=out, attention_mask=mask, visual_kept=kept)


def _text_mask(mask: Any, ids: jax.Array | None, name: str, b: int) -> jax.Array:
    """[B, L] bool validity of text tokens ``ids`` (all True when ``mask`` is None)."""
    length = 0 if ids is None else ids.shape[1]
    if mask is None:
        return jnp.ones((b, length), bool)
    m = jnp.asarray(mask)
    if m.shape != (b, length) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(
            f"LlavaNext: {name} must be bool / 0-1 [B, L] = {(b, length)} like its ids; got "
            f"shape {tuple(m.shape)} dtype {m.dtype}"
        )
    return m.astype(bool)


def _per_tile_inputs(uses, attn, fv, proj, p, class_token, h, vlm, select) -> dict[str, jax.Array]:
    """Per-tile selection inputs [tiles, g*g, ...] that the method uses."""
    received = jax.vmap(lambda a: T.received_attention(a, num_prefix=p))
    out: dict[str, jax.Array] = {}
    if "scores" in uses:
        cls = jax.vmap(lambda a: T.cls_attention(a, num_prefix=p))
        out["scores"] = (cls if class_token else received)(attn[h - 1])
    if "deep_scores" in uses:
        out["deep_scores"] = received(attn[h - 1])
    if "shallow_scores" in uses:
        out["shallow_scores"] = received(attn[vlm._shallow(select)])
    if "features" in uses:
        out["features"] = proj
    if "vision_features" in uses:
        out["vision_features"] = fv
    return out
