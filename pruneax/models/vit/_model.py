"""Vision Transformer (ViT / DeiT / CLIP image tower) in Flax NNX, with token-pruning hooks.

One model covers the encoders that ``load_vit`` imports from Hugging Face checkpoints (ViT,
DeiT with or without the distillation head, the CLIP vision tower) and the small variants
trained from scratch here (``VIT_VARIANTS``). A static ``PruningPlan`` drops, merges or fuses
patch tokens, inside a block before its MLP (ToMe, EViT, as published) or between blocks; the
prefix tokens (CLS, distillation, registers) are never dropped.

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (arXiv:2010.11929);
Touvron et al. (DeiT), ICML 2021 (arXiv:2012.12877); Radford et al. (CLIP), ICML 2021
(arXiv:2103.00020); Darcet et al., "Vision Transformers Need Registers", ICLR 2024; Bolya et
al., "Token Merging: Your ViT But Faster", ICLR 2023; Liang et al., "Not All Patches are What
You Need" (EViT), ICLR 2022.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pruneax.models._shared.common import check_images
from pruneax.models.vit._config import ViTConfig
from pruneax.models.vit._head import MapHead
from pruneax.models.vit._layers import Block, _layer_norm, _trunc02, _zeros
from pruneax.models.vit._plan import PruningPlan
from pruneax.models.vit._pos import FixedEmbedding, sincos_pos_embed

__all__ = ["ViT", "ViTConfig", "ViTOutput"]


class _Tokens:
    """Bookkeeping of a forward pass under a plan: sizes, original patch ids, kept attention.

    ``stage(x, layer, in_block)`` runs the plan's stage at ``layer`` if its placement matches.
    """

    def __init__(self, plan, x, *, num_patches, num_prefix, grid, key):
        b = x.shape[0]
        self.plan, self.p, self.grid, self.key = plan, num_prefix, grid, key
        self.size = jnp.ones(x.shape[:2], jnp.float32)
        self.ids = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (b, num_patches))
        self.uses_size = plan is not None and plan.uses_size
        self.aux: dict[int, dict[str, jax.Array | None]] = {}
        self.kept: list[jax.Array] = []
        self.carry: dict[str, jax.Array] = {}  # state passed between stages that ``carries``

    def run_block(self, block: Any, i: int, x: jax.Array, everything: bool):
        """Block ``i`` with the plan's stages around it: ``(x, probabilities or None)``."""
        x = self.stage(x, layer=i, in_block=False)
        full, row, want_keys = self.wants(i, everything)
        wants_values = self.plan is not None and self.plan.wants_values(i)
        values = block.value_states(x) if wants_values else None
        x, probs, keys = block.attend(
            x, size=self.attn_size, return_attention=full, return_keys=want_keys,
            return_cls_attention=row,
        )  # fmt: skip
        self.record(i, probs, keys, row, values)
        x = self.stage(x, layer=i + 1, in_block=True)  # the published ToMe / EViT place
        return block.feed_forward(x), probs

    def wants(self, block: int, everything: bool) -> tuple[bool, bool, bool]:
        """(full probabilities, the CLS row only, keys) block ``block`` must return."""
        attn, keys = self.plan.wants(block) if self.plan is not None else (False, False)
        row = attn and not everything and self.p > 0 and self.plan.cls_row_only(block)
        return (attn and not row) or everything, row, keys

    def record(self, block: int, attention, keys, row: bool, values=None) -> None:
        if self.plan is not None and (any(self.plan.wants(block)) or values is not None):
            self.aux[block] = {
                "attn": None if row else attention,
                "cls_attn": attention if row else None,
                "keys": keys,
                "values": values,
            }

    @property
    def attn_size(self) -> jax.Array | None:
        return self.size if self.uses_size else None

    def stage(self, x: jax.Array, layer: int, in_block: bool) -> jax.Array:
        stage = self.plan.stage_at(layer) if self.plan is not None else None
        if stage is None or bool(stage.in_block) != in_block:
            return x
        key = None if self.key is None else jax.random.fold_in(self.key, layer)
        kw = dict(
            size=self.size, aux=self.aux, patch_ids=self.ids, num_prefix=self.p, grid=self.grid,
            key=key,
        )  # fmt: skip
        if getattr(stage, "carries", False):
            x, self.size, src, self.carry = stage.apply(x, carry=self.carry, **kw)
        else:
            x, self.size, src = stage.apply(x, **kw)
        safe = jnp.maximum(src, 0)
        self.ids = jnp.where(src >= 0, jnp.take_along_axis(self.ids, safe, axis=1), -1)
        self.kept.append(self.ids)
        self.aux = {}
        return x


@struct.dataclass
class ViTOutput:
    """What ``ViT.__call__`` returns (a pytree: it passes through ``jax.jit``).

    Attributes:
      logits: [B, num_classes], or None without a classifier.
      pooled: [B, D] the pooled token after the final (or pooled-only) LayerNorm, before the
        pooler and the head. For CLIP this is HF's ``pooler_output``; for ``pool="cls_dist"``
        it is the CLS token.
      pooler_output: [B, D] ``tanh(pooler(pooled))`` (HF ``ViTModel``), SigLIP's MAP head
        over the final tokens (``map_head``), or None.
      hidden: [B, T_final, D] the last hidden state: after the final LayerNorm when
        ``final_norm="all"``, raw otherwise (HF CLIP's ``last_hidden_state``).
      kept: one [B, n_i] int32 per pruning stage: the original patch index (row-major over the
        patch grid) of every patch token after stage i, row for row; -1 for synthetic tokens
        (EViT's fused token). Selectors and EViT keep the original order; after a ToMe merge
        the tokens follow the published order [unmerged A; B] and the id is the patch whose
        token survived the merge (the representative of the group). FlowCut's stages before
        its last keep every token and mark the pruned (dead) ones -1. Empty tuple without a
        plan.
      sizes: [B, T_final] float32 token sizes (1 unless ToMe merged tokens; 0 marks a token
        masked out of the attention, e.g. by FlowCut, when the plan ends with it dead).
      attentions: one [B, H, T_i, T_i] float32 per block when ``return_attention``, else None.
      hidden_states: the residual stream entering block 0 (after the embeddings and
        ``pre_norm``) and after each block (the last one before the final norm), when
        ``return_hidden_states``, else None: HF's ``hidden_states`` convention.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import PruningPlan, ViT, vit_config
      >>> cfg = vit_config("mnist/4", hidden_size=16, num_heads=2, mlp_dim=32, num_layers=2)
      >>> out = ViT(cfg, rngs=nnx.Rngs(0))(jnp.ones((1, 28, 28, 1)), plan=PruningPlan.at(1, 9))
      >>> out.logits.shape, out.kept[0].shape, out.hidden.shape
      ((1, 10), (1, 9), (1, 10, 16))
    """

    logits: jax.Array | None
    pooled: jax.Array
    pooler_output: jax.Array | None
    hidden: jax.Array
    kept: tuple[jax.Array, ...]
    sizes: jax.Array
    attentions: tuple[jax.Array, ...] | None = None
    hidden_states: tuple[jax.Array, ...] | None = None


class ViT(nnx.Module):
    """Vision Transformer: patch embedding, prefix tokens, pre-norm blocks, pooling and head.

    Tokens are ordered ``[CLS, distillation, registers..., patches]`` (each present as the
    config says); patches are flattened row-major over the patch grid, as HF's
    ``flatten(2).transpose(1, 2)``. Learned position embeddings cover CLS, distillation and
    patches (not registers). Every dense / conv weight is a leaf named ``kernel``
    (``patch_embed``, ``blocks/{i}/attn/{query,key,value,out}``, ``blocks/{i}/mlp/{fc1,fc2}``,
    ``pooler``, ``map_head/{in_proj,out}``, ``map_head/mlp/{fc1,fc2}``, ``head``,
    ``head_dist``), so ``pruneax.weights``' default predicate selects exactly them; the
    classifier is ``head`` (glob ``"head/*"``).

    Initialization (training from scratch, timm style): kernels, the patch embedding, the
    learned position embedding and the CLS / distillation / register tokens ~ N(0, 0.02)
    truncated at 2 std; biases 0; LayerNorm scale 1 and offset 0. Pretrained weights come from
    ``load_vit``.

    Shapes:
      ``images`` [B, H, W, C] float (NHWC) with ``(H, W, C) == (*config.image_hw,
      config.num_channels)``. See ``ViTOutput`` for the outputs.

    Args:
      config: a ``ViTConfig`` (``vit_config("Ti/16")`` for a named variant).
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); attention logits / softmax and
        LayerNorm statistics are float32 whatever it is.
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``ViTConfig``; at call time if the
        images are not [B, H, W, C] of the configured size and a floating dtype, or the plan
        is not a ``PruningPlan`` or does not fit the model.

    References: Dosovitskiy et al., ICLR 2021 (arXiv:2010.11929); Touvron et al. (DeiT),
      ICML 2021; Radford et al. (CLIP), ICML 2021; Darcet et al., "Vision Transformers Need
      Registers", ICLR 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.vit import PruningPlan, ViT, vit_config
      >>> cfg = vit_config("mnist/4", hidden_size=16, num_heads=2, mlp_dim=32, num_layers=2)
      >>> model = ViT(cfg, rngs=nnx.Rngs(0))
      >>> plan = PruningPlan.tome(8, num_layers=2, num_patches=49)  # ToMe, r = 8 per block
      >>> out = model(jnp.ones((2, 28, 28, 1)), plan=plan)
      >>> out.logits.shape, out.hidden.shape, float(out.sizes[0].sum())
      ((2, 10), (2, 42, 16), 50.0)
    """

    def __init__(
        self,
        config: ViTConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, ViTConfig):
            raise ValueError(f"ViT: config must be a ViTConfig; got {type(config).__name__}")
        cfg = config
        d = cfg.hidden_size
        self.config = cfg
        self.dtype = dtype
        p = cfg.patch_size
        self.patch_embed = nnx.Conv(
            cfg.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=cfg.patch_bias,
            kernel_init=_trunc02,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

        def token(n: int) -> nnx.Param:
            return nnx.Param(_trunc02(rngs.params(), (1, n, d), param_dtype))

        self.cls_token = token(1) if cfg.class_token else None
        self.dist_token = token(1) if cfg.distillation_token else None
        self.registers = token(cfg.num_registers) if cfg.num_registers else None
        n_pos = cfg.num_pos_prefix + cfg.num_patches
        if cfg.pos_embed == "learned":
            self.pos_embed = token(n_pos)
        elif cfg.pos_embed == "sincos":
            table = np.zeros((1, n_pos, d), np.float32)
            table[0, cfg.num_pos_prefix :] = sincos_pos_embed(d, cfg.grid)
            self.pos_embed = FixedEmbedding(jnp.asarray(table, param_dtype))
        else:
            self.pos_embed = None
        self.pre_norm = _layer_norm(cfg, dtype, param_dtype, rngs) if cfg.pre_norm else None
        self.blocks = nnx.List(
            [
                Block(cfg, layer=i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for i in range(cfg.num_layers)
            ]
        )
        self.norm = _layer_norm(cfg, dtype, param_dtype, rngs) if cfg.final_norm != "none" else None
        kw = dict(
            kernel_init=_trunc02, bias_init=_zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.pooler = nnx.Linear(d, d, **kw) if cfg.pooler else None
        mk = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.map_head = MapHead(cfg, **mk) if cfg.map_head else None
        self.head = nnx.Linear(d, cfg.num_classes, **kw) if cfg.num_classes else None
        self.head_dist = nnx.Linear(d, cfg.num_classes, **kw) if cfg.pool == "cls_dist" else None

    @property
    def num_prefix(self) -> int:
        """Prefix tokens P (CLS + distillation + registers); pruning never drops them."""
        return self.config.num_prefix

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(rows, cols)``."""
        return self.config.grid

    @property
    def num_patches(self) -> int:
        """Patch tokens N of an input image."""
        return self.config.num_patches

    def embed(self, images: jax.Array) -> jax.Array:
        """Token embeddings [B, P + N, D] (position embeddings added, before ``pre_norm``)."""
        cfg = self.config
        b = images.shape[0]
        x = self.patch_embed(images.astype(self.dtype))
        x = x.reshape(b, cfg.num_patches, cfg.hidden_size)
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            tokens = [jnp.broadcast_to(t[...].astype(x.dtype), (b, 1, x.shape[-1])) for t in prefix]
            x = jnp.concatenate([*tokens, x], axis=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(x.dtype)
        if self.registers is not None:
            reg = jnp.broadcast_to(
                self.registers[...].astype(x.dtype), (b, cfg.num_registers, x.shape[-1])
            )
            k = cfg.num_pos_prefix
            x = jnp.concatenate([x[:, :k], reg, x[:, k:]], axis=1)
        return x

    def __call__(
        self,
        images: jax.Array,
        *,
        plan: PruningPlan | None = None,
        key: jax.Array | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ) -> ViTOutput:
        """Runs the encoder (and pooling / head) on ``images`` [B, H, W, C].

        Args:
          images: [B, H, W, C] float images, NHWC.
          plan: static token-pruning plan (``None``: all tokens through every block). A stage
            at ``layer`` runs inside block ``layer - 1`` between its attention and its MLP
            (``in_block``: ToMe, EViT) or before block ``layer``, with the attention / keys of
            the blocks ``plan.wants``. Blocks run fused (``jax.nn.dot_product_attention``)
            unless a stage needs their full probabilities; a block read only through the [CLS]
            row (``plan.cls_row_only``) computes that row alone.
          key: PRNG key for random stages (the stage at ``layer`` gets ``fold_in(key, layer)``).
          return_attention: also return every block's attention probabilities (every block
            then materialises them; the stages read the full matrices).
          return_hidden_states: also return the residual stream before block 0 and after each
            block.

        Returns:
          A ``ViTOutput``.

        Raises:
          ValueError: for images of the wrong rank, size, channels or dtype, or a plan that
            is not a ``PruningPlan``, does not fit this model, or scores tokens with the
            attention of a block that structured pruning left with 0 heads.
        """
        self._check(images, plan)
        x = self.embed(images)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        tok = _Tokens(
            plan, x, num_patches=self.num_patches, num_prefix=self.num_prefix, grid=self.grid,
            key=key,
        )  # fmt: skip
        attentions, hidden_states = [], [x]
        for i, block in enumerate(self.blocks):
            x, probs = tok.run_block(block, i, x, return_attention)
            attentions.append(probs)
            hidden_states.append(x)
        logits, pooled, pooler_output, x = self._head(x, tok.attn_size)
        return ViTOutput(
            logits=logits,
            pooled=pooled,
            pooler_output=pooler_output,
            hidden=x,
            kept=tuple(tok.kept),
            sizes=tok.size,
            attentions=tuple(attentions) if return_attention else None,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
        )

    def _check(self, images: jax.Array, plan: PruningPlan | None) -> None:
        cfg = self.config
        check_images(images, (*cfg.image_hw, cfg.num_channels), "ViT")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"ViT: images must be floating point (normalized pixels); got dtype {images.dtype}"
            )
        if plan is None:
            return
        if not isinstance(plan, PruningPlan):
            raise ValueError(f"ViT: plan must be a PruningPlan or None; got {type(plan)}")
        plan.validate(cfg.num_layers, self.num_patches)
        for i, heads in enumerate(cfg.heads_per_layer):
            if heads == 0 and any(plan.wants(i)):
                raise ValueError(
                    f"ViT: the plan scores tokens with block {i}'s attention, but "
                    "structured pruning left that block 0 heads (config.layer_heads)"
                )

    def _head(self, x: jax.Array, size: jax.Array | None):
        """Final norm, pooling (size-weighted mean when sizes matter), pooler and head(s)."""
        cfg = self.config
        if cfg.final_norm == "all":
            x = self.norm(x)
        p = self.num_prefix
        if cfg.pool == "mean":
            patches = x[:, p:]
            if size is not None:
                w = size[:, p:, None].astype(patches.dtype)
                pooled = jnp.sum(patches * w, axis=1) / jnp.sum(w, axis=1)
            else:
                pooled = jnp.mean(patches, axis=1)
        else:
            pooled = x[:, 0]
        if cfg.final_norm == "pooled":
            pooled = self.norm(pooled)
        pooler_output = jnp.tanh(self.pooler(pooled)) if self.pooler is not None else None
        if self.map_head is not None:
            pooler_output = self.map_head(x, size)
        logits = None
        if self.head is not None:
            logits = self.head(pooled)
            if self.head_dist is not None:
                dist = x[:, 1] if cfg.final_norm != "pooled" else self.norm(x[:, 1])
                logits = (logits + self.head_dist(dist)) / 2
        return logits, pooled, pooler_output, x
