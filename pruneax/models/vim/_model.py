"""Vision Mamba (hustvl/Vim, bidirectional "v2") in Flax NNX, with ToP-ViM token pruning.

``Vim`` embeds an image into patch tokens, inserts a class token in the MIDDLE of the patch
sequence (token position ``N // 2`` of ``N + 1``), adds a learned absolute position embedding
and runs ``depth`` residual blocks ``x + BiMambaMixer(RMSNorm(x))``, then a final RMSNorm and
a linear head on the class token. A static ``VimPruningPlan`` drops patch tokens between blocks
in one of three modes (``VIM_MODES``), scored from the previous block's scan output.

Token positions and patch ids: with N patches (row-major over the patch grid) the class token
sits at token position ``c = N // 2``; patch ``p`` sits at token position ``p`` if ``p < c``,
else ``p + 1``. ``VimOutput.positions`` are token positions, ``VimOutput.kept`` patch ids.

Pruning modes (stage at ``layer = i`` runs before block i; blocks from i on see the kept tokens;
``k`` = kept tokens incl. the class token, ``L = N + 1``; E = d_inner, S = d_state; per
direction, in that direction's scan order, with ``x`` the in_proj half that the conv reads):

- ``"naive"``: gather the kept tokens and run the later blocks on the ``k``-token sequence as if
  it were contiguous: the conv and the scan see kept neighbours as adjacent and
  ``h_j = exp(delta_j A) h_{j-1} + delta_j B_j x_j`` over the kept tokens only, so a token's
  state misses the decay of the pruned positions before it (ToP-ViM's failure case). Block
  FLOPs scale with ``k``.
- ``"aligned_exact"`` (the reference; saves no FLOPs): the stream keeps all ``L`` positions.
  A pruned position is an EMPTY slot: its in_proj ``x`` is zeroed before the conv, its conv
  output gives it a step size ``delta_t`` (from the kept neighbours in the kernel window and
  the conv bias), and the scan keeps it in the recurrence with zero input and that decay::

      h_t = exp(delta_t A) h_{t-1} + [t kept] delta_t B_t x_t         (t = 0 .. L - 1)

  Its output is dropped: pruned tokens get no residual update (their stream is frozen and
  never read again), are excluded from later importance scores, from ``ys`` / ``hidden`` and
  from the pooling. Every projection, the conv and the scan run over all ``L`` positions.
- ``"aligned_gap"`` (ToP-ViM's hidden-state alignment, compute on kept tokens only): the
  ``k`` kept tokens keep their original positions ``pos_j``. The conv is position aware: a
  kernel tap that falls on a pruned position reads zero (exactly the ``aligned_exact`` conv
  at the kept positions, at the cost of the compact conv). Each kept token absorbs the decay
  of the gap of ``m_j = pos_j - pos_{j-1} - 1`` pruned positions before it::

      h_j = exp((g_j + delta_j) A) h_{j-1} + delta_j B_j x_j,

  ``selective_scan(..., gap_delta=g)``. The pruned deltas are not computed, so ``g_j`` is an
  estimate (``gap_rule``): ``"own"``: ``g_j = m_j delta_j``; ``"prev"``: ``g_j = m_j
  delta_{j-1}`` (the preceding kept token's step, in scan order). For the backward direction
  the sequence, the positions (``L - 1 - pos``) and hence the gaps are mirrored: a token's
  backward gap is the run of pruned positions AFTER it in the original order, and "prev" is
  the next kept token in the original order. ``"true"`` (for tests and ablations) computes
  the pruned deltas of ``aligned_exact`` (full-length conv / x_proj / dt_proj on the
  zero-filled sequence) and sums them (``gap_delta_sum``); then ``aligned_gap`` equals
  ``aligned_exact`` at every kept position up to float rounding.

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

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax import tokens as T
from pruneax.models._shared.common import PatchGrid, check_images, is_size
from pruneax.models.mamba._model import (
    MambaConfig,
    _dt_bias_init,
    _symmetric_uniform,
    _torch_uniform,
)
from pruneax.ops import MODES, gap_delta_sum, selective_scan

VIM_MODES = ("naive", "aligned_exact", "aligned_gap")
VIM_METRICS = ("clipped", "unclipped", "l1", "l2", "random")
GAP_RULES = ("own", "prev", "true")
CLS_POSITIONS = ("original", "middle")
FINAL_POOLS = ("middle_cls", "mean")
# ToP-ViM's released schedule: prune after the 5th, 10th and 15th block (1-based), i.e. before
# the 0-based blocks 5, 10 and 15, keeping 0.8 of the patch tokens each time.
TOPVIM_LAYERS = (5, 10, 15)

_F32 = jnp.float32
_trunc02 = jax.nn.initializers.truncated_normal(stddev=0.02)
_lecun = jax.nn.initializers.lecun_normal()  # timm's lecun_normal_ (truncated normal)
_zeros = jax.nn.initializers.zeros
_NO_POS = -(2**30)  # padding of shifted positions: never equals a real position minus a lag


@dataclasses.dataclass(frozen=True)
class VimConfig(PatchGrid):
    """Hyperparameters of a ``Vim`` (frozen, hashable: static under jit).

    Attributes:
      image_size: input height = width, or ``(height, width)``; divisible by ``patch_size``.
      patch_size: side of the square patches (patch-embedding conv kernel and stride).
      num_channels: input channels C.
      dim: model width D (hustvl's ``embed_dim`` / ``d_model``).
      depth: bidirectional Mamba blocks.
      d_state: SSM state size S per channel.
      expand: d_inner E = expand * dim.
      d_conv: width K of each direction's causal depthwise conv1d.
      dt_rank: rank R of the delta projection, or ``"auto"`` = ceil(dim / 16); stored
        resolved.
      num_classes: head width; 0 = no head (``VimOutput.logits`` is None).
      norm_eps: epsilon of every RMSNorm.
      residual_in_fp32: keep the residual stream in float32 whatever the compute dtype.
      final_pool: ``"middle_cls"`` (the class token, hustvl's ``use_middle_cls_token``) or
        ``"mean"`` (mean of the final tokens, class token included).
      scan_mode: ``selective_scan``'s mode. The default ``"associative"`` is for
        accelerators; on CPU ``"sequential"`` is about 5x faster (``benchmarks/scan.py``), so
        CPU experiments should pass ``scan_mode="sequential"``.
      scan_chunk, scan_remat: ``selective_scan``'s ``chunk_size`` / ``remat``.
      time_step_min, time_step_max, time_step_floor, time_step_scale: Mamba's ``dt_proj``
        initialisation (see ``MambaConfig``).

    Raises:
      ValueError: for non-positive sizes, an image not divisible by the patch size, a bad
        ``dt_rank``, unknown ``final_pool`` / ``scan_mode``, a bad ``scan_chunk`` or epsilon,
        or non-bool flags.
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"
    num_classes: int = 1000
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    final_pool: str = "middle_cls"
    scan_mode: str = "associative"
    scan_chunk: int | None = None
    scan_remat: bool = False
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_scale: float = 1.0

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, list | tuple):
            if len(size) != 2 or not all(is_size(s) for s in size):
                raise ValueError(
                    f"VimConfig: image_size must be a positive int or (height, width); got {size!r}"
                )
            object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        elif is_size(size):
            object.__setattr__(self, "image_size", int(size))
        else:
            raise ValueError(
                f"VimConfig: image_size must be a positive int or (height, width); got {size!r}"
            )
        for name in ("patch_size", "num_channels", "dim", "depth", "d_state", "expand", "d_conv"):
            value = getattr(self, name)
            if not is_size(value):
                raise ValueError(f"VimConfig: {name} must be a positive int; got {value!r}")
            object.__setattr__(self, name, int(value))
        rank = self.dt_rank
        if rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.dim / 16))
        elif is_size(rank):
            object.__setattr__(self, "dt_rank", int(rank))
        else:
            raise ValueError(f"VimConfig: dt_rank must be a positive int or 'auto'; got {rank!r}")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"VimConfig: num_classes must be an int >= 0; got {n!r}")
        object.__setattr__(self, "num_classes", int(n))
        for name in ("residual_in_fp32", "scan_remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VimConfig: {name} must be a bool; got {getattr(self, name)!r}")
        if self.final_pool not in FINAL_POOLS:
            raise ValueError(
                f"VimConfig: final_pool must be one of {list(FINAL_POOLS)}; got {self.final_pool!r}"
            )
        if self.scan_mode not in MODES:
            raise ValueError(
                f"VimConfig: scan_mode must be one of {list(MODES)}; got {self.scan_mode!r}"
            )
        if self.scan_chunk is not None and not is_size(self.scan_chunk):
            raise ValueError(
                f"VimConfig: scan_chunk must be a positive int or None; got {self.scan_chunk!r}"
            )
        for name in (
            "norm_eps",
            "time_step_min",
            "time_step_max",
            "time_step_floor",
            "time_step_scale",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"VimConfig: {name} must be a float > 0; got {value!r}")
            object.__setattr__(self, name, float(value))
        h, w = self.image_hw
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"VimConfig: image_size {self.image_size!r} must be divisible by patch_size {p}"
            )

    @property
    def num_tokens(self) -> int:
        """Sequence length L = N + 1 (patches and the class token)."""
        return self.num_patches + 1

    @property
    def cls_position(self) -> int:
        """Token position ``N // 2`` of the class token (hustvl's ``token_position = M // 2``)."""
        return self.num_patches // 2

    @property
    def d_inner(self) -> int:
        """The mixer's channels E = expand * dim."""
        return self.expand * self.dim

    @property
    def mamba(self) -> MambaConfig:
        """The equivalent unidirectional ``MambaConfig`` (one direction of the mixer)."""
        return MambaConfig(
            hidden_size=self.dim,
            num_layers=self.depth,
            vocab_size=1,
            state_size=self.d_state,
            expand=self.expand,
            conv_kernel=self.d_conv,
            time_step_rank=self.dt_rank,
            use_bias=False,
            use_conv_bias=True,
            layer_norm_epsilon=self.norm_eps,
            residual_in_fp32=self.residual_in_fp32,
            lm_head="none",
            scan_mode=self.scan_mode,
            scan_chunk=self.scan_chunk,
            scan_remat=self.scan_remat,
            time_step_min=self.time_step_min,
            time_step_max=self.time_step_max,
            time_step_floor=self.time_step_floor,
            time_step_scale=self.time_step_scale,
        )


VIM_VARIANTS: dict[str, dict[str, Any]] = {
    # hustvl's vim_tiny_patch16_224 / vim_small_patch16_224 (d_state 16, d_inner 2 * dim).
    "Ti": dict(dim=192, depth=24),
    "S": dict(dim=384, depth=24),
    # 28x28 MNIST, 4x4 patches: 49 patches + the class token at position 24.
    "mnist/4": dict(image_size=28, num_channels=1, patch_size=4, dim=64, depth=8, num_classes=10),
    # 32x32 CIFAR, 4x4 patches: 64 patches + the class token at position 32; ViM-Ti width,
    # half its depth (the ViT "cifar/4" has ViT-Ti width and depth 12 too).
    "cifar/4": dict(image_size=32, num_channels=3, patch_size=4, dim=192, depth=12, num_classes=10),
}


def vim_config(name: str, **overrides: Any) -> VimConfig:
    """The ``VimConfig`` of a named variant of ``VIM_VARIANTS``, with fields overridden.

    ``"Ti"`` (dim 192) and ``"S"`` (dim 384) are ViM-Ti / ViM-S: depth 24, d_state 16, 16x16
    patches of 224x224 images, 1000 classes. ``"mnist/4"`` (28x28x1, 49 patches, dim 64,
    depth 8) and ``"cifar/4"`` (32x32x3, 64 patches, dim 192, depth 12) have 10 classes.

    Args:
      name: a key of ``VIM_VARIANTS``.
      **overrides: ``VimConfig`` fields to change, e.g. ``scan_mode="sequential"``.

    Returns:
      The validated ``VimConfig``.

    Raises:
      ValueError: for an unknown name or field, or an invalid result.

    References: Zhu et al., "Vision Mamba", ICML 2024, Table 1 (Vim-Ti / Vim-S).
    """
    if name not in VIM_VARIANTS:
        raise ValueError(f"vim_config: name must be one of {list(VIM_VARIANTS)}; got {name!r}")
    fields = {f.name for f in dataclasses.fields(VimConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"vim_config: unknown VimConfig fields {unknown}; expected some of {sorted(fields)}"
        )
    return VimConfig(**{**VIM_VARIANTS[name], **overrides})


# ------------------------------------------------------------------------------- pruning plan


@dataclasses.dataclass(frozen=True)
class VimPruneStage:
    """One ToP-ViM pruning stage (frozen, hashable).

    Attributes:
      layer: the 0-based block the stage runs before (``1 <= layer < depth``); it scores the
        tokens with block ``layer - 1``'s mixer output ``y``.
      keep: patch tokens kept (the class token comes on top): an int count, or a float ratio
        in (0, 1] of the patch tokens reaching the stage, ``ceil(ratio * n)``.
      mode: one of ``VIM_MODES`` (see the module docstring); every stage of a plan has the
        same mode.
      metric: importance of a token from the previous block's ``y`` [T, E] (both directions,
        original order): ``"clipped"`` ``sum_e max(0, y_te)`` (ToP-ViM), ``"unclipped"``
        ``sum_e y_te``, ``"l1"`` ``sum_e |y_te|``, ``"l2"`` ``||y_t||_2``, or ``"random"``
        (uniform, needs ``Vim(..., key=...)``).
      gap_rule: ``"aligned_gap"`` only: ``"own"`` (default), ``"prev"`` or ``"true"``; it
        applies to the blocks from this stage to the next.
      cls_position: ``"original"`` (default; the class token keeps its relative place among
        the kept tokens) or ``"middle"`` (``"naive"`` only: re-inserted at the middle of the
        kept patches, as the released ToP-ViM code).

    Raises:
      ValueError: for a bad layer, keep, mode, metric, gap_rule or cls_position.
    """

    layer: int
    keep: int | float
    mode: str = "aligned_gap"
    metric: str = "clipped"
    gap_rule: str | None = None
    cls_position: str = "original"

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral):
            raise ValueError(f"VimPruneStage: layer must be an int >= 1; got {self.layer!r}")
        if self.layer < 1:
            raise ValueError(f"VimPruneStage: layer must be an int >= 1; got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
            raise ValueError(f"VimPruneStage: keep must be an int or a float; got {keep!r}")
        if isinstance(keep, numbers.Integral):
            if keep < 1:
                raise ValueError(f"VimPruneStage: keep as a count must be >= 1; got {keep}")
            object.__setattr__(self, "keep", int(keep))
        else:
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"VimPruneStage: keep as a ratio must be in (0, 1]; got {keep}")
            object.__setattr__(self, "keep", float(keep))
        if self.mode not in VIM_MODES:
            raise ValueError(
                f"VimPruneStage: mode must be one of {list(VIM_MODES)}; got {self.mode!r}"
            )
        if self.metric not in VIM_METRICS:
            raise ValueError(
                f"VimPruneStage: metric must be one of {list(VIM_METRICS)}; got {self.metric!r}"
            )
        if self.gap_rule is None:
            if self.mode == "aligned_gap":
                object.__setattr__(self, "gap_rule", "own")
        elif self.mode != "aligned_gap":
            raise ValueError(
                f"VimPruneStage: gap_rule applies to mode='aligned_gap' only; got "
                f"gap_rule={self.gap_rule!r} with mode={self.mode!r}"
            )
        elif self.gap_rule not in GAP_RULES:
            raise ValueError(
                f"VimPruneStage: gap_rule must be one of {list(GAP_RULES)}; got {self.gap_rule!r}"
            )
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(
                f"VimPruneStage: cls_position must be one of {list(CLS_POSITIONS)}; got "
                f"{self.cls_position!r}"
            )
        if self.cls_position == "middle" and self.mode != "naive":
            raise ValueError(
                "VimPruneStage: cls_position='middle' needs mode='naive' (the aligned modes keep "
                f"every token at its original position); got mode={self.mode!r}"
            )

    def kept(self, n: int) -> int:
        """Patch tokens left by this stage when ``n`` reach it."""
        k = self.keep if isinstance(self.keep, int) else math.ceil(self.keep * n - 1e-9)
        if not 1 <= k <= n:
            raise ValueError(
                f"VimPruneStage(layer={self.layer}, keep={self.keep!r}): keeps {k} of the {n} "
                f"patch tokens that reach it; expected 1 <= keep <= {n}"
            )
        return k


@dataclasses.dataclass(frozen=True)
class VimPruningPlan:
    """Stages at strictly increasing layers, all of one mode (frozen, hashable: static).

    Raises:
      ValueError: if a stage is not a ``VimPruneStage``, the layers do not strictly increase,
        or the stages mix modes.
    """

    stages: tuple[VimPruneStage, ...] = ()

    def __post_init__(self):
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        for s in stages:
            if not isinstance(s, VimPruneStage):
                raise ValueError(
                    f"VimPruningPlan: stages must be VimPruneStage; got {type(s).__name__}"
                )
        layers = [s.layer for s in stages]
        if layers != sorted(set(layers)):
            raise ValueError(f"VimPruningPlan: stage layers must strictly increase; got {layers}")
        modes = sorted({s.mode for s in stages})
        if len(modes) > 1:
            raise ValueError(f"VimPruningPlan: all stages must share one mode; got {modes}")

    @classmethod
    def at(
        cls, layers: int | tuple[int, ...], keep: int | float, mode: str = "aligned_gap", **kw: Any
    ) -> VimPruningPlan:
        """The same stage (keep, mode, metric, ...) before each of ``layers``."""
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        return cls(tuple(VimPruneStage(layer=i, keep=keep, mode=mode, **kw) for i in layers))

    @classmethod
    def top_vim(
        cls, mode: str = "aligned_gap", *, keep: int | float = 0.8, **kw: Any
    ) -> VimPruningPlan:
        """ToP-ViM's schedule: before the 0-based blocks 5, 10, 15 (``TOPVIM_LAYERS``).

        That is after the 5th, 10th and 15th block (1-based ``layernum`` of the released code),
        keeping ``keep`` = 0.8 of the patch tokens each time; needs ``depth >= 16``.
        """
        return cls.at(TOPVIM_LAYERS, keep, mode, **kw)

    @property
    def mode(self) -> str | None:
        """The plan's mode (None for an empty plan)."""
        return self.stages[0].mode if self.stages else None

    def stage_at(self, layer: int) -> VimPruneStage | None:
        for s in self.stages:
            if s.layer == layer:
                return s
        return None

    def token_counts(self, num_patches: int) -> tuple[int, ...]:
        """Patch tokens left after each stage."""
        counts, n = [], num_patches
        for s in self.stages:
            n = s.kept(n)
            counts.append(n)
        return tuple(counts)

    def block_tokens(self, depth: int, num_patches: int) -> tuple[int, ...]:
        """Kept tokens (class token included) entering each of the ``depth`` blocks."""
        layers = [s.layer for s in self.stages]
        counts = dict(zip(layers, self.token_counts(num_patches), strict=True))
        out, n = [], num_patches
        for i in range(depth):
            n = counts.get(i, n)
            out.append(n + 1)
        return tuple(out)

    def validate(self, depth: int, num_patches: int) -> None:
        """Raises ``ValueError`` unless the plan fits a model of this depth and patch count."""
        for s in self.stages:
            if s.layer >= depth:
                raise ValueError(
                    f"VimPruningPlan: stage at layer {s.layer} but the model has {depth} "
                    f"blocks; expected 1 <= layer < {depth}"
                )
        self.token_counts(num_patches)


def vim_token_scores(y: jax.typing.ArrayLike, metric: str = "clipped") -> jax.Array:
    """ToP-ViM token importance from a mixer output ``y`` [..., T, E] -> [..., T] float32.

    ``"clipped"``: ``sum_e max(0, y_te)`` (ToP-ViM's clipped output); ``"unclipped"``:
    ``sum_e y_te``; ``"l1"``: ``sum_e |y_te|``; ``"l2"``: ``sqrt(sum_e y_te^2)``. ``y`` is the
    gated scan output of BOTH directions in original token order, ``(y_f + flip(y_b)) / 2``
    (``BiMambaMixer(..., return_y=True)``); the released ToP-ViM code scores with the backward
    branch alone and forgets to flip it back.

    Raises:
      ValueError: for an unknown metric (``"random"`` is not a score) or ``y`` of rank < 2.

    References: Zhan et al., "Exploring Token Pruning in Vision State Space Models", NeurIPS
      2024, Sec. 4 (token importance).
    """
    metrics = [m for m in VIM_METRICS if m != "random"]
    if metric not in metrics:
        raise ValueError(f"vim_token_scores: metric must be one of {metrics}; got {metric!r}")
    if jnp.ndim(y) < 2:
        raise ValueError(f"vim_token_scores: y must be [..., T, E]; got shape {jnp.shape(y)}")
    y = jnp.asarray(y, _F32)
    if metric == "clipped":
        return jnp.sum(jnp.maximum(y, 0.0), axis=-1)
    if metric == "unclipped":
        return jnp.sum(y, axis=-1)
    if metric == "l1":
        return jnp.sum(jnp.abs(y), axis=-1)
    return jnp.sqrt(jnp.sum(y * y, axis=-1))


# ------------------------------------------------------------------------------------- mixer


def _shift(v: jax.Array, m: int, fill: Any = 0) -> jax.Array:
    """``v`` moved ``m`` steps later along axis 1 (``out[:, t] = v[:, t - m]``), ``fill`` first."""
    pad = [(0, 0)] * v.ndim
    pad[1] = (m, 0)
    return jnp.pad(v, pad, constant_values=fill)[:, : v.shape[1]]


def causal_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, positions: jax.Array | None = None
) -> jax.Array:
    """Causal depthwise conv1d ``out_t = b + sum_j kernel[K-1-j] * x[t - j]`` (zero padded).

    With ``positions`` [B, T] (strictly increasing int positions of the tokens of a pruned
    sequence) a tap reads the token at position ``pos_t - j`` when it is in ``x`` and zero
    otherwise: the conv of the full-length sequence with zeros at the missing positions,
    evaluated at the present ones, at the cost of the compact conv.

    Args:
      x: [B, T, E]; kernel: [K, E] (nnx's ``[K, 1, E]`` conv kernel squeezed); bias: [E].
      positions: None (contiguous) or [B, T] int.

    Returns:
      [B, T, E] in ``x``'s dtype.
    """
    k = kernel.shape[0]
    kernel = kernel.astype(x.dtype)
    out = x * kernel[k - 1]
    for j in range(1, k):
        if positions is None:
            tap = _shift(x, j)
        else:
            tap = jnp.zeros_like(x)
            for m in range(1, j + 1):  # strictly increasing: pos_{t-m} <= pos_t - m
                hit = _shift(positions, m, _NO_POS) == positions - j
                tap = tap + jnp.where(hit[..., None], _shift(x, m), 0)
        out = out + tap * kernel[k - 1 - j]
    if bias is not None:
        out = out + bias.astype(x.dtype)
    return out


def gap_counts(positions: jax.Array) -> jax.Array:
    """Pruned positions right before each kept token: ``pos_j - pos_{j-1} - 1`` (``pos_{-1} =
    -1``), [B, T] int32, from strictly increasing ``positions`` [B, T]."""
    prev = _shift(positions, 1, -1)
    return (positions - prev - 1).astype(jnp.int32)


class BiMambaMixer(nnx.Module):
    """hustvl/Vim's bidirectional Mamba mixer (``bimamba_type="v2"``, ``if_devide_out``).

    Shared ``in_proj`` Linear(D, 2E) (split x, z) and ``out_proj`` Linear(E, D); per direction
    a causal depthwise conv1d (``conv1d`` / ``conv1d_b``), ``x_proj`` / ``x_proj_b`` Linear(E,
    R + 2S), ``dt_proj`` / ``dt_proj_b`` Linear(R, E), ``A_log`` / ``A_b_log`` [E, S], ``D`` /
    ``D_b`` [E] (hustvl's parameter names). The backward branch runs on the flipped sequence
    (x and z flipped, as hustvl flips ``xz``)::

        y_f = ssm_f(x, z),  y_b = ssm_b(flip(x), flip(z)),  y = (y_f + flip(y_b)) / 2,
        out = out_proj(y)

    where ``ssm(x, z) = selective_scan(silu(conv(x)), delta, -exp(A_log), B, C, D, z)``.

    Initialization (hustvl): Linear / conv kernels U(+-1/sqrt(fan_in)), conv bias
    U(+-1/sqrt(K)) (PyTorch defaults), ``out_proj`` additionally divided by sqrt(depth)
    (Mamba's ``rescale_prenorm_residual``), ``dt_proj`` as Mamba, ``A_log = log(1..S)``,
    ``D = 1``.

    Shapes:
      ``x`` [B, L, D] -> ``out`` [B, L, D] (and ``y`` [B, L, E] with ``return_y``).

    Raises:
      ValueError: at call time for ``x`` not a floating [B, L, D], both ``keep`` and
        ``positions``, a bad ``keep`` / ``positions`` / ``length`` / ``gap_rule``.

    References: Zhu et al., "Vision Mamba", ICML 2024, Alg. 1; hustvl/Vim ``mamba_simple.py``.
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
            raise ValueError(f"BiMambaMixer: config must be a VimConfig; got {type(config)}")
        cfg = config
        d, e, s, r, k = cfg.dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.config = cfg
        self.dtype = dtype
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.in_proj = nnx.Linear(
            d, 2 * e, use_bias=False, kernel_init=_torch_uniform, dtype=dtype, **kw
        )

        def conv() -> nnx.Conv:
            return nnx.Conv(
                e,
                e,
                kernel_size=(k,),
                feature_group_count=e,
                padding=((k - 1, 0),),
                kernel_init=_torch_uniform,
                bias_init=_symmetric_uniform(1.0 / math.sqrt(k)),
                dtype=dtype,
                **kw,
            )

        def x_proj() -> nnx.Linear:
            return nnx.Linear(
                e, r + 2 * s, use_bias=False, kernel_init=_torch_uniform, dtype=dtype, **kw
            )

        def dt_proj() -> nnx.Linear:
            return nnx.Linear(
                r,
                e,
                kernel_init=_symmetric_uniform(cfg.time_step_scale / math.sqrt(r)),
                bias_init=_dt_bias_init(cfg.mamba),
                dtype=_F32,
                **kw,
            )

        def a_log() -> nnx.Param:
            a = jnp.broadcast_to(jnp.arange(1, s + 1, dtype=_F32), (e, s))
            return nnx.Param(jnp.log(a).astype(param_dtype))

        self.conv1d, self.x_proj, self.dt_proj = conv(), x_proj(), dt_proj()
        self.A_log, self.D = a_log(), nnx.Param(jnp.ones((e,), param_dtype))
        self.conv1d_b, self.x_proj_b, self.dt_proj_b = conv(), x_proj(), dt_proj()
        self.A_b_log, self.D_b = a_log(), nnx.Param(jnp.ones((e,), param_dtype))
        bound = 1.0 / math.sqrt(e) / math.sqrt(cfg.depth)
        self.out_proj = nnx.Linear(
            e, d, use_bias=False, kernel_init=_symmetric_uniform(bound), dtype=dtype, **kw
        )

    def _direction(
        self,
        b: int,
        xin: jax.Array,
        z: jax.Array,
        keep: jax.Array | None,
        positions: jax.Array | None,
        length: int | None,
        gap_rule: str,
    ) -> jax.Array:
        """One direction (``b`` = 0 forward, 1 backward) in its own scan order."""
        cfg = self.config
        r, s = cfg.dt_rank, cfg.d_state
        conv, x_proj, dt_proj, a_log, d_skip = (
            (self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
            if b == 0
            else (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        )
        kernel = conv.kernel[...][:, 0, :]
        bias = conv.bias[...] if conv.bias is not None else None

        def features(v: jax.Array, pos: jax.Array | None):
            xs = jax.nn.silu(causal_conv(v, kernel, bias, pos))
            dt, bm, cm = jnp.split(x_proj(xs), [r, r + s], axis=-1)
            return xs, jax.nn.softplus(dt_proj(dt.astype(_F32))), bm, cm

        if keep is not None:  # aligned_exact: a pruned position is an empty slot
            xin = jnp.where(keep[..., None], xin, 0)
        xs, delta, bm, cm = features(xin, positions)
        gap = None
        if positions is not None:  # aligned_gap
            m = gap_counts(positions)[..., None].astype(_F32)
            if gap_rule == "own":
                gap = m * delta
            elif gap_rule == "prev":
                gap = m * jnp.concatenate([delta[:, :1], delta[:, :-1]], axis=1)
            else:  # "true": the pruned deltas of aligned_exact, summed over each gap
                rows = jnp.arange(xin.shape[0])[:, None]
                full = jnp.zeros((xin.shape[0], length, xin.shape[2]), xin.dtype)
                full = full.at[rows, positions].set(xin)
                mask = jnp.zeros((xin.shape[0], length), bool).at[rows, positions].set(True)
                delta_full = features(full, None)[1]
                gap = jnp.take_along_axis(
                    gap_delta_sum(delta_full, mask), positions[..., None], axis=1
                )
        return selective_scan(
            xs,
            delta,
            -jnp.exp(a_log[...].astype(_F32)),
            bm,
            cm,
            d_skip[...],
            z,
            keep=keep,
            gap_delta=gap,
            mode=cfg.scan_mode,
            chunk_size=cfg.scan_chunk,
            remat=cfg.scan_remat,
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        keep: jax.Array | None = None,
        positions: jax.Array | None = None,
        length: int | None = None,
        gap_rule: str = "own",
        return_y: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Mixes the tokens of ``x`` [B, L, D] in both directions.

        Args:
          x: [B, L, D] floating (the normed stream).
          keep: ``aligned_exact``: bool [B, L]; False = an empty slot (in_proj x zeroed before
            the conv, zero scan input, own decay); its ``y`` is returned as 0.
          positions: ``aligned_gap``: [B, L] int32 strictly increasing positions of the tokens
            in a sequence of ``length`` (position-aware conv, gap decay by ``gap_rule``).
            Not checked for monotonicity (values are only known at run time).
          length: the full sequence length for ``positions``.
          gap_rule: ``"own"``, ``"prev"`` or ``"true"`` (module docstring).
          return_y: also return ``y = (y_f + flip(y_b)) / 2`` [B, L, E], the gated scan output
            of both directions in the input order, before ``out_proj``.

        Returns:
          ``out`` [B, L, D], or ``(out, y)``.

        Raises:
          ValueError: as the class says.
        """
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.dim:
            raise ValueError(
                f"BiMambaMixer: x must be [B, L, D] with D = {cfg.dim}; got shape {tuple(x.shape)}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"BiMambaMixer: x must be floating point; got dtype {x.dtype}")
        bl = tuple(x.shape[:2])
        if keep is not None and positions is not None:
            raise ValueError("BiMambaMixer: give keep (aligned_exact) or positions, not both")
        if keep is not None and (tuple(keep.shape) != bl or keep.dtype != jnp.bool_):
            raise ValueError(
                f"BiMambaMixer: keep must be a bool mask [B, L] = {bl}; got shape "
                f"{tuple(keep.shape)} dtype {keep.dtype}"
            )
        if positions is not None:
            if tuple(positions.shape) != bl or not jnp.issubdtype(positions.dtype, jnp.integer):
                raise ValueError(
                    f"BiMambaMixer: positions must be an int array [B, L] = {bl}; got shape "
                    f"{tuple(positions.shape)} dtype {positions.dtype}"
                )
            if not is_size(length) or length < bl[1]:
                raise ValueError(
                    f"BiMambaMixer: positions need the full length, an int >= L = {bl[1]}; got "
                    f"length={length!r}"
                )
            if gap_rule not in GAP_RULES:
                raise ValueError(
                    f"BiMambaMixer: gap_rule must be one of {list(GAP_RULES)}; got {gap_rule!r}"
                )
        e = cfg.d_inner
        xin, z = jnp.split(self.in_proj(x), [e], axis=-1)

        def flip(v):
            return None if v is None else v[:, ::-1]

        y_f = self._direction(0, xin, z, keep, positions, length, gap_rule)
        pos_b = None if positions is None else (length - 1) - positions[:, ::-1]
        y_b = self._direction(1, flip(xin), flip(z), flip(keep), pos_b, length, gap_rule)
        y = (y_f + flip(y_b)) / 2
        if keep is not None:
            y = jnp.where(keep[..., None], y, 0)
        out = self.out_proj(y)
        return (out, y) if return_y else out


class VimBlock(nnx.Module):
    """``x + mixer(norm(x))`` (hustvl's add-then-norm block, rewritten; module docstring).

    With ``keep`` (``aligned_exact``) the pruned positions get no update. Returns ``(x, y)``.
    """

    def __init__(self, config: VimConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.residual_in_fp32 = config.residual_in_fp32
        self.dtype = dtype
        self.norm = nnx.RMSNorm(
            config.dim,
            epsilon=config.norm_eps,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.mixer = BiMambaMixer(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, **kw: Any) -> tuple[jax.Array, jax.Array]:
        residual = x.astype(_F32) if self.residual_in_fp32 else x.astype(self.dtype)
        out, y = self.mixer(self.norm(x), return_y=True, **kw)
        out = out.astype(residual.dtype)
        if kw.get("keep") is not None:
            out = jnp.where(kw["keep"][..., None], out, 0)
        return residual + out, y


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
    """

    logits: jax.Array | None
    pooled: jax.Array
    hidden: jax.Array
    positions: jax.Array
    kept: tuple[jax.Array, ...]
    ys: tuple[jax.Array, ...] | None = None
    hidden_states: tuple[jax.Array, ...] | None = None


def _take(v: jax.Array, idx: jax.Array) -> jax.Array:
    """``v[b, idx[b]]`` along axis 1 for [B, T] or [B, T, ...] ``v``."""
    idx = idx.reshape(idx.shape + (1,) * (v.ndim - 2))
    return jnp.take_along_axis(v, idx, axis=1)


def _select(
    stage: VimPruneStage,
    y: jax.Array,
    positions: jax.Array,
    cls_pos: int,
    key: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs one stage: ``(sequence indices, their positions, kept patch ids)``.

    ``y`` [B, T, E] / ``positions`` [B, T]: the current tokens in sequence order. Returns the
    indices into the current sequence of the new sequence [B, k + 1], their token positions
    and the kept patch ids [B, k] sorted.
    """
    b, t = positions.shape
    n = t - 1
    k = stage.kept(n)
    is_cls = (positions == cls_pos).astype(jnp.int32)
    order = jnp.argsort(is_cls, axis=1, stable=True)  # patches (sequence order), then cls
    patches, cls_idx = order[:, :n], order[:, n:]
    if stage.metric == "random":
        if key is None:
            raise ValueError(
                f"Vim: the stage at layer {stage.layer} has metric='random' and needs a PRNG key "
                "(Vim(..., key=...))"
            )
        sel = jax.vmap(lambda kk: T.random(kk, n, k))(jax.random.split(key, b))
    else:
        scores = _take(vim_token_scores(y, stage.metric), patches)
        sel = jax.vmap(lambda s: T.topk(s, k))(scores)
    seq = _take(patches, sel)
    pos = _take(positions, seq)
    by_pos = jnp.argsort(pos, axis=1)
    seq, pos = _take(seq, by_pos), _take(pos, by_pos)
    ids = jnp.where(pos > cls_pos, pos - 1, pos).astype(jnp.int32)
    cls_col = jnp.full((b, 1), cls_pos, positions.dtype)
    if stage.cls_position == "middle":
        h = k // 2
        new_seq = jnp.concatenate([seq[:, :h], cls_idx, seq[:, h:]], axis=1)
        new_pos = jnp.concatenate([pos[:, :h], cls_col, pos[:, h:]], axis=1)
    else:
        seq = jnp.concatenate([seq, cls_idx], axis=1)
        pos = jnp.concatenate([pos, cls_col], axis=1)
        by_pos = jnp.argsort(pos, axis=1)
        new_seq, new_pos = _take(seq, by_pos), _take(pos, by_pos)
    return new_seq, new_pos.astype(jnp.int32), ids


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
        self.norm_f = nnx.RMSNorm(
            d,
            epsilon=cfg.norm_eps,
            use_fast_variance=False,
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
        rows = jnp.arange(b)[:, None]
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        keep = None
        active: VimPruneStage | None = None
        y = None
        kept, ys, hidden_states = [], [], [x]
        for i, block in enumerate(self.layers):
            stage = plan.stage_at(i) if plan is not None else None
            if stage is not None:
                k_i = None if key is None else jax.random.fold_in(key, i)
                seq, positions, ids = _select(stage, y, positions, c, k_i)
                kept.append(ids)
                if stage.mode == "aligned_exact":
                    keep = jnp.zeros((b, length), bool).at[rows, positions].set(True)
                else:
                    x = _take(x, seq)
                active = stage
            if active is None or active.mode == "naive":
                x, y = block(x)
            elif active.mode == "aligned_gap":
                x, y = block(x, positions=positions, length=length, gap_rule=active.gap_rule)
            else:
                x, y = block(x, keep=keep)
                y = _take(y, positions)
            if return_ys:
                ys.append(y)
            if return_hidden_states:
                hidden_states.append(x if keep is None else _take(x, positions))
        if keep is not None:
            x = _take(x, positions)
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
