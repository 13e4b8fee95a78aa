"""Vim's configuration (``VimConfig``, ``VIM_VARIANTS``, ``vim_config``) and the names of the
ToP-ViM pruning options (modes, metrics, class-token placement, the released schedule).

References: Zhu et al., "Vision Mamba", ICML 2024 (arXiv:2401.09417); Zhan et al., "Exploring
Token Pruning in Vision State Space Models" (ToP-ViM), NeurIPS 2024 (arXiv:2409.18962).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pruneax.models._shared.common import PatchGrid
from pruneax.models._shared.fields import (
    bool_field,
    check_fields,
    hw_field,
    int_field,
    one_of,
    real_field,
)
from pruneax.models.mamba._config import MambaConfig
from pruneax.models.mamba._prune import PRUNE_MODES
from pruneax.ops import MODES

VIM_MODES = PRUNE_MODES  # ("naive", "aligned_exact", "aligned_gap")
VIM_METRICS = ("clipped", "unclipped", "l1", "l2", "random")
CLS_POSITIONS = ("original", "middle")
FINAL_POOLS = ("middle_cls", "mean")
# ToP-ViM's released schedule: prune after the 5th, 10th and 15th block (1-based), i.e. before
# the 0-based blocks 5, 10 and 15, keeping 0.8 of the patch tokens each time.
TOPVIM_LAYERS = (5, 10, 15)

_SIZES = ("patch_size", "num_channels", "dim", "depth", "d_state", "expand", "d_conv")
_REALS = ("norm_eps", "time_step_min", "time_step_max", "time_step_floor", "time_step_scale")
_FIELDS = {  # VimConfig's per-field checks, run in this order by check_fields
    "image_size": hw_field(),
    **dict.fromkeys(_SIZES, int_field(low=1)),
    "dt_rank": int_field(low=1, words=("auto",)),  # "auto" resolved after the checks
    "num_classes": int_field(low=0),
    **dict.fromkeys(("residual_in_fp32", "scan_remat"), bool_field()),
    "final_pool": one_of(FINAL_POOLS),
    "scan_mode": one_of(MODES),
    "scan_chunk": int_field(low=1, none=True),
    **dict.fromkeys(_REALS, real_field(gt=0)),
}


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

    Example:
      >>> cfg = VimConfig(image_size=8, patch_size=2, num_channels=1, dim=16, depth=2)
      >>> cfg.num_tokens, cfg.cls_position, cfg.d_inner
      (17, 8, 32)
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
        check_fields(self, **_FIELDS)
        if self.dt_rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.dim / 16))
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

    Example:
      >>> vim_config("Ti").num_patches
      196

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
