"""LLaVA-style vision-language model in Flax NNX: ViT -> MLP projector -> Llama decoder, with
pre-LLM visual-token selection (``VisualSelect``) and in-LLM pruning (``prune=``), combinable.

The prompt is ``[prefix text tokens] [N visual tokens] [question tokens]``. The visual tokens
are the patch tokens (CLS and other prefix tokens dropped) of the vision encoder's hidden state
``vision_layer`` (the penultimate, ``-2``, as LLaVA's ``mm_vision_select_layer``), mapped to the
LLM width by LLaVA-1.5's projector ``Linear(Dv, D) -> GELU -> Linear(D, D)``.

Pre-LLM selection keeps ``k`` of the N visual tokens per example (``jax.vmap`` over the batch)
with a ``pruneax.tokens`` selector; the kept tokens stay in their original (raster) order and
the others never enter the LLM. RoPE positions: as in the published pre-LLM methods
(FasterVLM, DivPrune, MMTok, HiPrune, HoloV all drop the tokens from ``inputs_embeds`` before
the LLM), the LLM numbers the shortened sequence contiguously, so the question follows the
``k`` kept tokens at positions ``P + k, ...``. In-LLM pruning (``FastVSpec`` or any spec with
the same interface) is passed through to ``LlamaLM`` unchanged: it acts on the image span
``[P, P + k)`` of the sequence the LLM sees, and kept tokens keep their (renumbered) positions.
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

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pruneax import tokens as T
from pruneax.models._shared.common import check_images
from pruneax.models.llama._model import FastVSpec, KVCache, LlamaConfig, LlamaLM, LlamaOutput
from pruneax.models.vit._model import ViT, ViTConfig

# method -> (needs vision attention, uses the question) ; "none" keeps every visual token
VLM_SELECT_METHODS: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "fastervlm": (True, False),  # top-k by [CLS] attention of the feature layer
    "divprune": (False, False),  # max-min diversity on projector outputs
    "kcenter": (True, False),  # k-center on projector outputs, pivot = top [CLS] attention
    "maxsum": (True, False),  # ToDRE v2 max-sum diversity, pivot = top [CLS] attention
    "coverage": (False, True),  # MMTok: text + vision coverage (vision-only without question)
    "hiprune": (True, False),  # anchors (shallow layer) + buffers + registers (feature layer)
    "holov": (True, False),  # holistic chunk budgets by [CLS] attention
    "random": (False, False),
    "uniform": (False, False),  # FEATHER's uniform grid, no scores
}

_normal02 = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros


def _is_real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(value)


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


@dataclasses.dataclass(frozen=True)
class VisualSelect:
    """A pre-LLM visual-token selection (frozen, hashable: static under jit).

    Attributes:
      method: one of ``VLM_SELECT_METHODS``: ``"none"`` (keep all), ``"fastervlm"`` (top-k by the
        [CLS] attention of the feature layer; received attention when the encoder has no CLS),
        ``"divprune"`` (max-min diversity of the projector outputs), ``"kcenter"`` /
        ``"maxsum"`` (ToDRE v1 / v2 on the projector outputs, pivot = top [CLS] attention),
        ``"coverage"`` (MMTok: projector outputs, vision features and the question's LLM
        input embeddings; vision-only when there is no question), ``"hiprune"``,
        ``"holov"``, ``"random"`` (needs a key) or ``"uniform"`` (``uniform_visual_indices``).
      keep: visual tokens kept: an int count, or a ratio in (0, 1] of the N visual tokens
        (``pruneax.tokens.budget``: Python ``round(ratio * N)``).
      hiprune_alpha: HiPrune's anchor-and-buffer fraction (0.1).
      shallow_layer: HiPrune's "object" layer, a 0-based vision block; None means
        ``round(L_run * 9 / 24) - 1`` for the ``L_run`` blocks that run (layer 9 of 24,
        1-based, for CLIP-L), at least 0.
      num_chunks: HoloV's raster chunks (16), capped at N // 2.
      coverage_alpha, tau_tv, tau_vv: MMTok's weights and temperatures (LLaVA: 0.5, 0.02, 0.2).
      coverage_text: ``"coverage"`` uses the question's token embeddings as text targets
        (True, MMTok); False gives vision-only coverage even when there is a question.
      keep_positions: RoPE positions of the prompt after selection. False (default, what the
        published pre-LLM methods do: they drop tokens from ``inputs_embeds``): the LLM
        numbers the shortened prompt contiguously. True: the kept visual tokens keep their
        original positions ``P + i`` and the question stays at ``P + N + j``, as FastV /
        FEATHER keep positions inside the LLM (an ablation that separates which tokens are
        kept from the renumbering).

    Raises:
      ValueError: for an unknown method, a bad ``keep``, or out-of-range options.
    """

    method: str = "none"
    keep: int | float = 1.0
    hiprune_alpha: float = 0.1
    shallow_layer: int | None = None
    num_chunks: int = 16
    coverage_alpha: float = 0.5
    tau_tv: float = 0.02
    tau_vv: float = 0.2
    coverage_text: bool = True
    keep_positions: bool = False

    def __post_init__(self):
        if self.method not in VLM_SELECT_METHODS:
            raise ValueError(
                f"VisualSelect: method must be one of {list(VLM_SELECT_METHODS)}; got "
                f"{self.method!r}"
            )
        keep = self.keep
        if _is_int(keep):
            if keep < 1:
                raise ValueError(f"VisualSelect: keep as a count must be >= 1; got {keep}")
            object.__setattr__(self, "keep", int(keep))
        elif _is_real(keep):
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"VisualSelect: keep as a ratio must be in (0, 1]; got {keep}")
            object.__setattr__(self, "keep", float(keep))
        else:
            raise ValueError(f"VisualSelect: keep must be an int or a float; got {keep!r}")
        if self.method == "none" and (isinstance(self.keep, int) or self.keep != 1.0):
            raise ValueError(f"VisualSelect: method='none' keeps every token; got keep={keep!r}")
        if not _is_real(self.hiprune_alpha) or not 0.0 <= self.hiprune_alpha <= 1.0:
            raise ValueError(
                f"VisualSelect: hiprune_alpha must be in [0, 1]; got {self.hiprune_alpha!r}"
            )
        if self.shallow_layer is not None and (
            not _is_int(self.shallow_layer) or self.shallow_layer < 0
        ):
            raise ValueError(
                f"VisualSelect: shallow_layer must be an int >= 0 or None; got "
                f"{self.shallow_layer!r}"
            )
        if not _is_int(self.num_chunks) or self.num_chunks < 1:
            raise ValueError(
                f"VisualSelect: num_chunks must be an int >= 1; got {self.num_chunks!r}"
            )
        if not _is_real(self.coverage_alpha) or self.coverage_alpha < 0:
            raise ValueError(
                f"VisualSelect: coverage_alpha must be a float >= 0; got {self.coverage_alpha!r}"
            )
        for name in ("tau_tv", "tau_vv"):
            value = getattr(self, name)
            if not _is_real(value) or not value > 0:
                raise ValueError(f"VisualSelect: {name} must be a float > 0; got {value!r}")
        if not isinstance(self.keep_positions, bool):
            raise ValueError(
                f"VisualSelect: keep_positions must be a bool; got {self.keep_positions!r}"
            )
        if not isinstance(self.coverage_text, bool):
            raise ValueError(
                f"VisualSelect: coverage_text must be a bool; got {self.coverage_text!r}"
            )

    def num_kept(self, n: int) -> int:
        """Visual tokens kept out of ``n``.

        Raises:
          ValueError: if the budget is outside [1, n].
        """
        if self.method == "none":
            return n
        if isinstance(self.keep, int):
            if self.keep > n:
                raise ValueError(
                    f"VisualSelect: keep={self.keep} exceeds the {n} visual tokens; expected "
                    f"1 <= keep <= {n}"
                )
            return self.keep
        return T.budget(n, self.keep)


NO_SELECT = VisualSelect()


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Hyperparameters of a ``VLM`` (frozen, hashable).

    Attributes:
      vision: the vision encoder's ``ViTConfig``; ``num_classes`` must be 0 (no classifier).
      llm: the decoder's ``LlamaConfig``.
      vision_layer: which vision hidden state feeds the projector, as an index into the
        ``num_layers + 1`` hidden states (0 = embeddings, i = after block i - 1); negative
        counts from the end. Default -2 (the penultimate, LLaVA's ``mm_vision_select_layer``).
        Only the blocks up to it run. Must be >= 1 after resolution (attention-based selection
        reads the attention of the block that produced it).

    Raises:
      ValueError: for configs of the wrong type, a vision classifier, or ``vision_layer`` out
        of range.
    """

    vision: ViTConfig
    llm: LlamaConfig
    vision_layer: int = -2

    def __post_init__(self):
        if not isinstance(self.vision, ViTConfig):
            raise ValueError(f"VLMConfig: vision must be a ViTConfig; got {type(self.vision)}")
        if not isinstance(self.llm, LlamaConfig):
            raise ValueError(f"VLMConfig: llm must be a LlamaConfig; got {type(self.llm)}")
        if self.vision.num_classes != 0:
            raise ValueError(
                f"VLMConfig: vision.num_classes must be 0 (no classifier); got "
                f"{self.vision.num_classes}"
            )
        n = self.vision.num_layers
        v = self.vision_layer
        if not _is_int(v) or not -(n + 1) <= v <= n:
            raise ValueError(
                f"VLMConfig: vision_layer must be an int in [-{n + 1}, {n}] (an index into the "
                f"{n + 1} hidden states); got {v!r}"
            )
        if self.feature_layer < 1:
            raise ValueError(
                f"VLMConfig: vision_layer={v} selects the embeddings; it must select the output "
                "of a block (resolved index >= 1)"
            )

    @property
    def feature_layer(self) -> int:
        """The resolved hidden-state index h in [1, L]: blocks 0 .. h - 1 run."""
        return self.vision_layer % (self.vision.num_layers + 1)

    @property
    def num_visual(self) -> int:
        """N, the visual tokens per image (the vision encoder's patches)."""
        return self.vision.num_patches


@struct.dataclass
class VLMOutput:
    """What ``VLM.__call__`` returns (a pytree).

    Attributes:
      llm: the ``LlamaOutput`` of the decoder (logits, cache, FastV ``kept``, ...).
      visual_kept: [B, k] int32 indices (into the N patches, raster order) of the visual
        tokens that enter the LLM, ascending.
    """

    llm: LlamaOutput
    visual_kept: jax.Array

    @property
    def logits(self) -> jax.Array:
        return self.llm.logits

    @property
    def cache(self) -> KVCache | None:
        return self.llm.cache


def uniform_visual_indices(grid: tuple[int, int], k: int) -> np.ndarray:
    """``k`` patch indices spread over the grid without scores (the ``"uniform"`` method).

    FEATHER's uniform sample (every ``s``-th row and column from (0, 0),
    ``pruneax.tokens.uniform_grid``) at the largest stride ``s`` that still holds ``k`` tokens,
    thinned to exactly ``k`` by taking evenly spaced entries (``round(linspace(0, m - 1,
    k))``) of that grid when it holds ``m > k``.

    Returns:
      int32 [k], ascending, unique (a static NumPy array).

    Raises:
      ValueError: if ``k`` is outside [1, rows * cols].
    """
    rows, cols = int(grid[0]), int(grid[1])
    n = rows * cols
    if not _is_int(k) or not 1 <= k <= n:
        raise ValueError(f"uniform_visual_indices: k must be an int in [1, {n}]; got {k!r}")
    s = max(s for s in range(1, max(rows, cols) + 1) if len(T.uniform_grid(grid, s)) >= k)
    base = T.uniform_grid(grid, s)
    take = np.round(np.linspace(0, len(base) - 1, k)).astype(np.int64)
    return base[take].astype(np.int32)


class Projector(nnx.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: ``linear_2(gelu(linear_1(x)))``, ``Dv -> D -> D``.

    Attribute names follow transformers' ``LlavaMultiModalProjector``. GELU is the exact (erf)
    one of PyTorch's ``nn.GELU``.
    """

    def __init__(self, vision_dim: int, dim: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        kw = dict(
            kernel_init=_normal02, bias_init=_zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.linear_1 = nnx.Linear(vision_dim, dim, **kw)
        self.linear_2 = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))


class VLM(nnx.Module):
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
        self.projector = Projector(config.vision.hidden_size, config.llm.hidden_size, **kw)
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
        ``config.feature_layer``); the later blocks, the final norm and the head are skipped.

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
        return x, attn

    def select_visual(
        self,
        images: jax.Array,
        question_ids: jax.Array | None = None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The projected visual tokens that enter the LLM and their patch indices.

        Args:
          images: [B, H, W, C] float images.
          question_ids: [B, Q] int question tokens (``"coverage"`` embeds them with the LLM's
            table as MMTok's text targets), or None.
          select: the ``VisualSelect`` (static).
          key: PRNG key (``"random"`` only; example ``b`` uses ``split(key, B)[b]``).

        Returns:
          ``(tokens [B, k, D], kept [B, k] int32)``, kept ascending.

        Raises:
          ValueError: for bad images, a ``select`` that is not a ``VisualSelect`` or does not
            fit, or ``"random"`` without a key.
        """
        if not isinstance(select, VisualSelect):
            raise ValueError(f"VLM: select must be a VisualSelect; got {type(select).__name__}")
        vcfg = self.vision.config
        h = self.config.feature_layer
        p, n, grid = vcfg.num_prefix, vcfg.num_patches, vcfg.grid
        k = select.num_kept(n)
        method = select.method
        need_attn, _ = VLM_SELECT_METHODS[method]
        attention_at = (h - 1,) if need_attn else ()
        if method == "hiprune":
            attention_at = (self._shallow(select), h - 1)
        if method == "random" and key is None:
            raise ValueError("VLM: select method 'random' needs a PRNG key (key=...)")
        feats, attn = self.encode(images, attention_at=attention_at)
        fv = feats[:, p:]  # [B, N, Dv] patch features, prefix dropped
        proj = self.projector(fv)  # [B, N, D]
        b = proj.shape[0]

        def cls_scores(a):  # [B, H, T, T] -> [B, N]
            if vcfg.class_token:
                return jax.vmap(lambda x: T.cls_attention(x, num_prefix=p))(a)
            return jax.vmap(lambda x: T.received_attention(x, num_prefix=p))(a)

        if method == "none" or k == n:
            idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
            return proj, idx
        if method == "fastervlm":
            idx = jax.vmap(lambda s: T.topk(s, k))(cls_scores(attn[h - 1]))
        elif method == "divprune":
            idx = jax.vmap(lambda f: T.maxmin_diversity(f, k))(proj)
        elif method == "kcenter":
            idx = jax.vmap(lambda f, s: T.kcenter(f, k, pivot=s))(proj, cls_scores(attn[h - 1]))
        elif method == "maxsum":
            idx = jax.vmap(lambda f, s: T.maxsum_diversity(f, k, pivot=s))(
                proj, cls_scores(attn[h - 1])
            )
        elif method == "coverage":
            kw = dict(alpha=select.coverage_alpha, tau_tv=select.tau_tv, tau_vv=select.tau_vv)
            if not select.coverage_text or question_ids is None or question_ids.shape[1] == 0:
                idx = jax.vmap(lambda f, v: T.coverage(f, k, x_vision=v, **kw))(proj, fv)
            else:
                text = self.llm.embed(question_ids)
                idx = jax.vmap(lambda f, v, z: T.coverage(f, k, text=z, x_vision=v, **kw))(
                    proj, fv, text
                )
        elif method == "hiprune":
            rec = jax.vmap(lambda a: T.received_attention(a, num_prefix=p))
            shallow, deep = rec(attn[self._shallow(select)]), rec(attn[h - 1])
            idx = jax.vmap(lambda s, d: T.hiprune(s, d, k, grid=grid, alpha=select.hiprune_alpha))(
                shallow, deep
            )
        elif method == "holov":
            c = max(1, min(select.num_chunks, n // 2))
            idx = jax.vmap(lambda s, f: T.holov(s, f, k, num_chunks=c))(
                cls_scores(attn[h - 1]), proj
            )
        elif method == "random":
            idx = jax.vmap(lambda kk: T.random(kk, n, k))(jax.random.split(key, b))
        elif method == "uniform":
            idx = jnp.broadcast_to(jnp.asarray(uniform_visual_indices(grid, k)), (b, k))
        else:  # pragma: no cover - VisualSelect validates the method
            raise AssertionError(method)
        idx = idx.astype(jnp.int32)
        return jnp.take_along_axis(proj, idx[..., None], axis=1), idx

    # -------------------------------------------------------------------------- LLM side

    def embed_inputs(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None,
        question_ids: jax.Array | None,
        *,
        select: VisualSelect = NO_SELECT,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``inputs_embeds`` [B, P + k + Q, D] of the prompt and the kept patch indices [B, k].

        Feed them to ``self.llm`` or ``generate_greedy(vlm.llm, inputs_embeds=...)``.

        Raises:
          ValueError: as ``select_visual``, or for token ids that are not integer [B, L]
            with the images' batch size.
        """
        b = images.shape[0] if hasattr(images, "shape") and len(images.shape) else -1
        prefix = _ids(prefix_ids, "prefix_ids", b)
        question = _ids(question_ids, "question_ids", b)
        visual, kept = self.select_visual(images, question, select=select, key=key)
        parts = []
        if prefix is not None:
            parts.append(self.llm.embed(prefix).astype(visual.dtype))
        parts.append(visual)
        if question is not None:
            parts.append(self.llm.embed(question).astype(visual.dtype))
        return jnp.concatenate(parts, axis=1), kept

    def positions(self, prefix_len: int, kept: jax.Array, question_len: int) -> jax.Array:
        """Original RoPE positions [B, P + k + Q] of a prompt whose visual tokens ``kept``
        [B, k] survived selection: ``0 .. P - 1``, ``P + kept``, ``P + N .. P + N + Q - 1``."""
        b = kept.shape[0]
        n = self.config.num_visual
        head = jnp.broadcast_to(jnp.arange(prefix_len, dtype=jnp.int32), (b, prefix_len))
        tail = jnp.arange(question_len, dtype=jnp.int32) + prefix_len + n
        tail = jnp.broadcast_to(tail, (b, question_len))
        return jnp.concatenate([head, kept.astype(jnp.int32) + prefix_len, tail], axis=1)

    def prompt_length(
        self, prefix_len: int, question_len: int, select: VisualSelect = NO_SELECT
    ) -> int:
        """Tokens the LLM sees in the prompt: ``prefix_len + k + question_len``."""
        return prefix_len + select.num_kept(self.config.num_visual) + question_len

    def __call__(
        self,
        images: jax.Array,
        prefix_ids: jax.Array | None = None,
        question_ids: jax.Array | None = None,
        *,
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
          select: pre-LLM ``VisualSelect`` (static); default keeps all N visual tokens.
          prune: an in-LLM pruning spec (``FastVSpec`` or one with the same interface:
            ``start``, ``stop``, ...), passed to ``LlamaLM`` unchanged (static). Its image span
            must be ``[P, P + k)``, the visual tokens left after ``select``.
          cache: a ``KVCache`` to fill (``init_cache(config.llm, B, max_len, prune=prune)``
            with ``max_len >= prompt_length(P, Q, select)``), or None.
          key: PRNG key for ``select.method == "random"``.
          logits_to_keep: as ``LlamaLM`` (1: only the last token's logits; static).
          return_attention_at: LLM layers whose attention to return (static).

        Returns:
          A ``VLMOutput``. Positions: the LLM numbers the prompt contiguously after
          pre-LLM selection (``0 .. P + k + Q - 1``, continuing from ``cache.next_position``),
          unless ``select.keep_positions`` (original positions, see ``positions``).

        Raises:
          ValueError: for bad images / ids / select (see ``embed_inputs``), a ``prune`` whose
            image span is not ``[P, P + k)``, or anything ``LlamaLM`` refuses.
        """
        embeds, kept = self.embed_inputs(images, prefix_ids, question_ids, select=select, key=key)
        if prune is not None:
            p = 0 if prefix_ids is None else int(jnp.shape(prefix_ids)[1])
            k = kept.shape[1]
            start, stop = getattr(prune, "start", None), getattr(prune, "stop", None)
            if (start, stop) != (p, p + k):
                raise ValueError(
                    f"VLM: prune's image span must be [P, P + k) = [{p}, {p + k}) (P prefix "
                    f"tokens, k visual tokens after select); got [{start}, {stop})"
                )
        positions = None
        if select.keep_positions:
            positions = self.positions(
                0 if prefix_ids is None else int(jnp.shape(prefix_ids)[1]),
                kept,
                0 if question_ids is None else int(jnp.shape(question_ids)[1]),
            )
            if cache is not None:
                positions = positions + cache.next_position[:, None]
        out = self.llm(
            inputs_embeds=embeds,
            positions=positions,
            cache=cache,
            prune=prune,
            logits_to_keep=logits_to_keep,
            return_attention_at=return_attention_at,
        )
        return VLMOutput(llm=out, visual_kept=kept)


def _ids(ids: Any, name: str, b: int) -> jax.Array | None:
    if ids is None:
        return None
    x = jnp.asarray(ids)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer) or x.shape[0] != b:
        raise ValueError(
            f"VLM: {name} must be integer [B, L] with B = {b} (the images' batch); got shape "
            f"{tuple(x.shape)} dtype {x.dtype}"
        )
    return None if x.shape[1] == 0 else x


# ------------------------------------------------------------------------------ FLOPs


def llm_tokens_per_layer(num_layers: int, t: int, prune: Any = None) -> tuple[int, ...]:
    """Tokens each LLM layer processes in a prefill of ``t`` tokens under ``prune``.

    Uses ``prune.tokens_per_layer(num_layers, t)`` when the spec has it; a ``FastVSpec`` keeps
    ``t`` before ``prune.layer`` and ``t - prune.num_dropped`` from it on.

    Raises:
      ValueError: for a spec of unknown kind.
    """
    if prune is None:
        return (t,) * num_layers
    if hasattr(prune, "tokens_per_layer"):
        return tuple(int(v) for v in prune.tokens_per_layer(num_layers, t))
    if isinstance(prune, FastVSpec):
        return tuple(t if i < prune.layer else t - prune.num_dropped for i in range(num_layers))
    raise ValueError(
        f"llm_tokens_per_layer: prune must be a FastVSpec or have tokens_per_layer; got "
        f"{type(prune).__name__}"
    )


def vlm_prefill_flops(
    config: VLMConfig,
    *,
    prefix_len: int,
    question_len: int,
    select: VisualSelect = NO_SELECT,
    prune: Any = None,
    logits_to_keep: int = 1,
) -> float:
    """Prefill FLOPs (2 x multiply-adds) of the projector and the LLM for one example.

    Projector: every one of the N patch tokens (selection reads the projector outputs before
    choosing): ``2 N (Dv D + D D)``. LLM layer with ``t`` tokens (FastV's count, full
    ``t x t`` attention, GQA-aware, SwiGLU): ``2 [t D (H hd) 2 + 2 t D (KV hd) + 2 t^2 H hd +
    3 t D F]``, with ``t`` from ``llm_tokens_per_layer``. LM head: ``2 D V`` per kept logit row.
    The vision encoder (the same for every method), the embeddings, norms, softmax and the
    selection itself are not counted.

    Raises:
      ValueError: for negative lengths or a ``select`` / ``prune`` that does not fit.

    References: Chen et al., FastV, ECCV 2024, Sec. 4.3 (the per-layer count).
    """
    for name, value in (("prefix_len", prefix_len), ("question_len", question_len)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"vlm_prefill_flops: {name} must be an int >= 0; got {value!r}")
    if not isinstance(select, VisualSelect):
        raise ValueError(f"vlm_prefill_flops: select must be a VisualSelect; got {select!r}")
    c, v = config.llm, config.vision
    n = config.num_visual
    t = prefix_len + select.num_kept(n) + question_len
    d, hd, f = c.hidden_size, c.head_dim, c.intermediate_size
    proj = 2.0 * n * (v.hidden_size * d + d * d)
    llm = 0.0
    for tl in llm_tokens_per_layer(c.num_layers, t, prune):
        llm += 2.0 * (
            2 * tl * d * c.num_heads * hd
            + 2 * tl * d * c.num_kv_heads * hd
            + 2 * tl * tl * c.num_heads * hd
            + 3 * tl * d * f
        )
    rows = t if logits_to_keep == 0 else min(logits_to_keep, t)
    return proj + llm + 2.0 * rows * d * c.vocab_size
