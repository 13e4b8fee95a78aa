"""Vision Mamba (hustvl/Vim, bidirectional "v2") in Flax NNX, with ToP-ViM token pruning.

``Vim`` embeds an image into patch tokens, inserts a class token in the MIDDLE of the patch
sequence (token position ``N // 2`` of ``N + 1``), adds a learned absolute position embedding
and runs ``depth`` residual blocks ``x + BiMambaMixer(RMSNorm(x))``, then a final RMSNorm and
a linear head on the class token. A static ``VimPruningPlan`` drops patch tokens between blocks
in one of three modes (``VIM_MODES``), scored from the previous block's scan output.

Token positions and patch ids: with N patches (row-major over the patch grid) the class token
sits at token position ``c = N // 2``; patch ``p`` sits at token position ``p`` if ``p < c``,
else ``p + 1``. ``VimOutput.positions`` are token positions, ``VimOutput.kept`` patch ids.

Pruning modes (``VIM_MODES``; a stage at ``layer = i`` runs before block i): after a stage
the stream holds the kept tokens only, in every mode, and each later block runs its mixer
through ``pruneax.models.mamba.pruned_mixer_forward`` with the kept tokens' positions and
``length = N + 1``, which defines the modes (per direction; the backward one mirrors positions
and gaps): ``"naive"`` scans the kept tokens as if adjacent (block FLOPs scale with the kept
count); ``"aligned_exact"`` is the reference (the mixer runs over all ``L`` positions with the
pruned ones as empty slots: zero input to the conv and the scan, their own decay; no FLOPs
saved); ``"aligned_gap"`` computes on the kept tokens only, with a position-aware conv and
the gap decay of ``gap_rule`` (``"own"``, ``"prev"``, or ``"true"``, which equals
``aligned_exact``). Pruned tokens get no more residual updates and leave ``ys``, ``hidden``,
the scores and the pooling.

Class token: never pruned. Kept tokens keep their original relative order and the class token
keeps its place among them (``cls_position="original"``): it follows the kept patches with
original id ``< N // 2``, so it is the middle of the shortened sequence only when as many kept
patches lie before it as after it. In the aligned modes it stays at position ``N // 2`` of the
position frame (the middle of the image sequence). ``cls_position="middle"`` (``"naive"``
only) reproduces the released ToP-ViM code: the class token is re-inserted at index ``m // 2``
of the ``m`` kept patches sorted by id (exactly the middle when ``m`` is even).

Residual ordering: hustvl's blocks carry ``(hidden, residual)`` and compute "add, then norm"
(``residual = residual + hidden; hidden = mixer(norm(residual))``, fused) and the final
``norm_f(residual + hidden)``. With ``x_i`` = the residual entering block i this is exactly
``x_{i+1} = x_i + mixer_i(norm_i(x_i))``, ``norm_f(x_depth)``, which is what ``Vim`` computes
(float32 stream when ``residual_in_fp32``); no deviation, only bookkeeping.

References: Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", ICML 2024 (arXiv:2401.09417) and hustvl/Vim
(``models_mamba.py``, ``mamba_simple.py`` ``bimamba_type="v2"``, ``if_devide_out=True``);
Zhan et al., "Exploring Token Pruning in Vision State Space Models" (ToP-ViM), NeurIPS 2024
(arXiv:2409.18962) and ZLKong/ToP-ViM; Gu & Dao, "Mamba", 2023 (arXiv:2312.00752).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax.models._shared.common import check_images
from pruneax.models._shared.layers import rms_norm
from pruneax.models.mamba._conv import causal_conv, gap_counts
from pruneax.models.mamba._ssm import GAP_RULES
from pruneax.models.vim._config import (
    CLS_POSITIONS,
    FINAL_POOLS,
    TOPVIM_LAYERS,
    VIM_METRICS,
    VIM_MODES,
    VIM_VARIANTS,
    VimConfig,
    vim_config,
)
from pruneax.models.vim._mixer import BiMambaMixer, VimBlock
from pruneax.models.vim._plan import VimPruneStage, VimPruningPlan
from pruneax.models.vim._scores import _select, _take, vim_token_scores

__all__ = [  # the names this module held before the split stay importable from it
    "CLS_POSITIONS",
    "FINAL_POOLS",
    "GAP_RULES",
    "TOPVIM_LAYERS",
    "VIM_METRICS",
    "VIM_MODES",
    "VIM_VARIANTS",
    "BiMambaMixer",
    "Vim",
    "VimBlock",
    "VimConfig",
    "VimOutput",
    "VimPruneStage",
    "VimPruningPlan",
    "causal_conv",
    "gap_counts",
    "vim_config",
    "vim_flops",
    "vim_token_scores",
]

_F32 = jnp.float32
_trunc02 = jax.nn.initializers.truncated_normal(stddev=0.02)
_lecun = jax.nn.initializers.lecun_normal()  # timm's lecun_normal_ (truncated normal)
_zeros = jax.nn.initializers.zeros


@struct.dataclass
class VimOutput:
    """What ``Vim.__call__`` returns (a pytree).

    All per-token outputs hold the KEPT tokens only, in sequence order (for ``aligned_exact``
    gathered from the full-length stream), so they have the same shapes in every mode.

    Attributes:
      logits: [B, num_classes] float32, or None without a head.
      pooled: [B, D] the class token (or the token mean) after ``norm_f``.
      hidden: [B, T, D] the final tokens after ``norm_f``.
      positions: [B, T] int32 token positions (0..N, class token at N // 2) of ``hidden``'s
        rows: sorted, except after a ``cls_position="middle"`` stage.
      kept: one [B, k_i] int32 per stage: the original patch ids (row-major) kept by stage i,
        sorted ascending, class token excluded. Empty tuple without a plan.
      ys: when asked, each block's mixer ``y`` [B, T_i, E] (both directions, sequence order)
        at the tokens it kept.
      hidden_states: when asked, the residual stream entering block 0 and after each block
        [B, T_i, D], at the kept tokens.

    Example:
      >>> import jax.numpy as jnp
      >>> out = VimOutput(None, jnp.zeros((1, 4)), jnp.zeros((1, 3, 4)), jnp.zeros((1, 3)), ())
      >>> out.kept
      ()
    """

    logits: jax.Array | None
    pooled: jax.Array
    hidden: jax.Array
    positions: jax.Array
    kept: tuple[jax.Array, ...]
    ys: tuple[jax.Array, ...] | None = None
    hidden_states: tuple[jax.Array, ...] | None = None


class Vim(nnx.Module):
    """Vision Mamba (hustvl/Vim v2): middle class token, bidirectional Mamba blocks, head.

    Leaf names (hustvl's, in Flax layout): ``patch_embed/{kernel,bias}``, ``cls_token`` [1, 1,
    D], ``pos_embed`` [1, N + 1, D], ``layers/{i}/norm/scale``, ``layers/{i}/mixer/{in_proj,
    conv1d,x_proj,dt_proj,conv1d_b,x_proj_b,dt_proj_b,out_proj}/{kernel,bias}``,
    ``layers/{i}/mixer/{A_log,D,A_b_log,D_b}``, ``norm_f/scale``, ``head/{kernel,bias}``.

    Initialization (training from scratch, hustvl): patch conv lecun-normal, bias 0; class
    token and position embedding N(0, 0.02) truncated at 2 std; head N(0, 0.02) truncated,
    bias 0; the mixers as ``BiMambaMixer``; RMSNorm scales 1.

    Shapes:
      ``images`` [B, H, W, C] float (NHWC) -> ``VimOutput``.

    Args:
      config: a ``VimConfig`` (``vim_config("Ti")`` for a named variant).
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype (the scan, delta and its state are float32 whatever it is).
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``VimConfig``; at call time for
        images of the wrong shape or dtype, a plan that is not a ``VimPruningPlan`` or does not
        fit, or a random stage without a key.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = VimConfig(image_size=8, patch_size=2, num_channels=1, dim=16, depth=2,
      ...                 num_classes=3, scan_mode="sequential")
      >>> out = Vim(cfg, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 1)),
      ...                                  plan=VimPruningPlan.at(1, 8, "aligned_gap"))
      >>> out.logits.shape, out.positions.shape
      ((1, 3), (1, 9))

    References: Zhu et al., "Vision Mamba", ICML 2024 (arXiv:2401.09417); Zhan et al.,
      "Exploring Token Pruning in Vision State Space Models", NeurIPS 2024 (arXiv:2409.18962).
    """

    def __init__(
        self,
        config: VimConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, VimConfig):
            raise ValueError(f"Vim: config must be a VimConfig; got {type(config).__name__}")
        cfg = config
        d, p = cfg.dim, cfg.patch_size
        self.config = cfg
        self.dtype = dtype
        self.patch_embed = nnx.Conv(
            cfg.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=_lecun,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.cls_token = nnx.Param(_trunc02(rngs.params(), (1, 1, d), param_dtype))
        self.pos_embed = nnx.Param(_trunc02(rngs.params(), (1, cfg.num_tokens, d), param_dtype))
        self.layers = nnx.List(
            [
                VimBlock(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                for _ in range(cfg.depth)
            ]
        )
        self.norm_f = rms_norm(
            d,
            cfg.norm_eps,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.head = (
            nnx.Linear(
                d,
                cfg.num_classes,
                kernel_init=_trunc02,
                bias_init=_zeros,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if cfg.num_classes
            else None
        )

    def embed(self, images: jax.Array) -> jax.Array:
        """Tokens [B, N + 1, D]: patches with the class token at ``N // 2``, plus positions."""
        cfg = self.config
        b = images.shape[0]
        x = self.patch_embed(images.astype(self.dtype)).reshape(b, cfg.num_patches, cfg.dim)
        c = cfg.cls_position
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, cfg.dim))
        x = jnp.concatenate([x[:, :c], cls, x[:, c:]], axis=1)
        return x + self.pos_embed[...].astype(x.dtype)

    def __call__(
        self,
        images: jax.Array,
        *,
        plan: VimPruningPlan | None = None,
        key: jax.Array | None = None,
        return_ys: bool = False,
        return_hidden_states: bool = False,
    ) -> VimOutput:
        """Runs the model on ``images`` [B, H, W, C].

        Args:
          images: [B, H, W, C] float images, NHWC.
          plan: static ``VimPruningPlan`` (None: dense).
          key: PRNG key for random stages (the stage before block i gets ``fold_in(key, i)``).
          return_ys: also return every block's mixer output ``y`` at the kept tokens.
          return_hidden_states: also return the residual stream at the kept tokens.

        Returns:
          A ``VimOutput``.

        Raises:
          ValueError: as the class says.
        """
        cfg = self.config
        check_images(images, (*cfg.image_hw, cfg.num_channels), "Vim")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"Vim: images must be floating point; got dtype {images.dtype}")
        if plan is not None:
            if not isinstance(plan, VimPruningPlan):
                raise ValueError(f"Vim: plan must be a VimPruningPlan or None; got {type(plan)}")
            plan.validate(cfg.depth, cfg.num_patches)
        x = self.embed(images)
        b, length = x.shape[:2]
        c = cfg.cls_position
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        active: VimPruneStage | None = None
        y = None
        kept, ys, hidden_states = [], [], [x]
        for i, block in enumerate(self.layers):
            stage = plan.stage_at(i) if plan is not None else None
            if stage is not None:
                k_i = None if key is None else jax.random.fold_in(key, i)
                seq, positions, ids = _select(stage, y, positions, c, k_i)
                kept.append(ids)
                x = _take(x, seq)  # every mode carries only the kept tokens
                active = stage
            if active is None:
                x, y = block(x)
            else:  # naive ignores the positions (unsorted after cls_position="middle")
                pos = None if active.mode == "naive" else positions
                x, y = block(
                    x, mode=active.mode, positions=pos, length=length, gap_rule=active.gap_rule
                )
            if return_ys:
                ys.append(y)
            if return_hidden_states:
                hidden_states.append(x)
        hidden = self.norm_f(x)
        if cfg.final_pool == "middle_cls":
            cls_idx = jnp.argmax(positions == c, axis=1)
            pooled = _take(hidden, cls_idx[:, None])[:, 0]
        else:
            pooled = jnp.mean(hidden, axis=1)
        logits = self.head(pooled).astype(_F32) if self.head is not None else None
        return VimOutput(
            logits=logits,
            pooled=pooled,
            hidden=hidden,
            positions=positions,
            kept=tuple(kept),
            ys=tuple(ys) if return_ys else None,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
        )


def vim_flops(
    config: VimConfig, plan: VimPruningPlan | None = None, *, breakdown: bool = False
) -> int | dict[str, int]:
    """Forward FLOPs of one image through ``Vim(config)`` with ``plan``.

    Counting (per block with ``t`` tokens, D = dim, E = d_inner, S = d_state, R = dt_rank, K =
    d_conv; matmuls and convs at 2 FLOPs per multiply-add, both directions)::

        in_proj  2 t D (2E)          conv    2 * 2 t E K        x_proj  2 * 2 t E (R + 2S)
        dt_proj  2 * 2 t R E         scan    2 * (9 t E S + 2 t E)    out_proj  2 t E D

    The scan's ``9 t E S`` (+ ``t E`` each for the D skip and the z gate) is the count of
    VMamba's ``flops_selective_scan_fn`` (discretisation, state update and readout per state
    element); ``aligned_gap`` adds ``t E`` per direction for the gap add. Plus the patch
    embedding ``2 N (p^2 C) D`` and the head ``2 D classes``. Norms, activations, softplus,
    residual adds, the direction average and the importance scores are left out (< 1 %).

    Tokens per block: dense ``L = N + 1``; ``naive`` and ``aligned_gap``: the kept tokens ``t
    = k + 1`` after a stage; ``aligned_exact``: ``L`` everywhere (it is the reference: the full
    projections, conv and scan run, the pruned outputs are dropped); ``aligned_gap`` with
    ``gap_rule="true"`` also runs conv / x_proj / dt_proj over ``L`` for the pruned deltas.
    (Vim papers quote fvcore "FLOPs", i.e. multiply-adds: about half of this count.)

    Args:
      config: a ``VimConfig``.
      plan: a ``VimPruningPlan`` or None (dense).
      breakdown: return a dict of the parts (``patch_embed``, ``in_proj``, ``conv``,
        ``x_proj``, ``dt_proj``, ``scan``, ``out_proj``, ``head``, ``total``) instead.

    Returns:
      The total as a Python int, or the dict.

    Raises:
      ValueError: if ``config`` is not a ``VimConfig`` or the plan does not fit it.

    Example:
      >>> cfg = vim_config("Ti")
      >>> round(vim_flops(cfg, VimPruningPlan.top_vim()) / vim_flops(cfg), 2)
      0.71
    """
    if not isinstance(config, VimConfig):
        raise ValueError(f"vim_flops: config must be a VimConfig; got {type(config).__name__}")
    cfg = config
    plan = VimPruningPlan() if plan is None else plan
    if not isinstance(plan, VimPruningPlan):
        raise ValueError(f"vim_flops: plan must be a VimPruningPlan or None; got {type(plan)}")
    plan.validate(cfg.depth, cfg.num_patches)
    n, length = cfg.num_patches, cfg.num_tokens
    d, e, s, r, k = cfg.dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    parts = dict.fromkeys(
        ("patch_embed", "in_proj", "conv", "x_proj", "dt_proj", "scan", "out_proj", "head"), 0
    )
    parts["patch_embed"] = 2 * n * cfg.patch_size**2 * cfg.num_channels * d
    parts["head"] = 2 * d * cfg.num_classes
    tokens = plan.block_tokens(cfg.depth, n)
    active = None
    for i in range(cfg.depth):
        active = plan.stage_at(i) or active
        mode = None if active is None else active.mode
        t = length if mode in (None, "aligned_exact") else tokens[i]
        t_feat = t + (length if mode == "aligned_gap" and active.gap_rule == "true" else 0)
        parts["in_proj"] += 2 * t * d * 2 * e
        parts["conv"] += 2 * 2 * t_feat * e * k
        parts["x_proj"] += 2 * 2 * t_feat * e * (r + 2 * s)
        parts["dt_proj"] += 2 * 2 * t_feat * r * e
        parts["scan"] += 2 * (9 * t * e * s + 2 * t * e + (t * e if mode == "aligned_gap" else 0))
        parts["out_proj"] += 2 * t * e * d
    parts["total"] = sum(parts.values())
    return parts if breakdown else parts["total"]
