"""``MambaConfig`` and Mamba's initialisers (shared by ``MambaMixer`` and Vim's mixer).

References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(arXiv:2312.00752); transformers' ``models/mamba/configuration_mamba.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from pruneax.models._shared.fields import bool_field, check_fields, int_field, one_of, real_field
from pruneax.ops import MODES

LM_HEADS = ("tied", "untied", "none")

_SIZES = ("hidden_size", "num_layers", "vocab_size", "state_size", "expand", "conv_kernel")
_FLAGS = ("use_bias", "use_conv_bias", "residual_in_fp32", "scan_remat")
_REALS = (
    "layer_norm_epsilon",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "time_step_scale",
)
_FIELDS = {  # MambaConfig's per-field checks, run in this order by check_fields
    **dict.fromkeys(_SIZES, int_field(low=1)),
    "time_step_rank": int_field(low=1, words=("auto",)),  # "auto" resolved after the checks
    **dict.fromkeys(_FLAGS, bool_field()),
    "lm_head": one_of(LM_HEADS),
    "scan_mode": one_of(MODES),
    "scan_chunk": int_field(low=1, none=True),
    **dict.fromkeys(_REALS, real_field(gt=0)),
}

# PyTorch's default Linear / Conv1d weight init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
_torch_uniform = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_zeros = jax.nn.initializers.zeros
_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """Hyperparameters of a ``MambaLM`` / ``MambaMixer`` (frozen, hashable: static under jit).

    Field names follow transformers' ``MambaConfig`` where they can (``num_layers`` is its
    ``num_hidden_layers``, ``lm_head`` replaces ``tie_word_embeddings``).

    Attributes:
      hidden_size: model width D.
      num_layers: Mamba blocks.
      vocab_size: embedding rows V.
      state_size: SSM state size N per channel (``d_state``).
      expand: d_inner = expand * hidden_size (the mixer's channels E).
      conv_kernel: width K of the causal depthwise conv1d (left padding K - 1).
      time_step_rank: rank R of the delta projection, or ``"auto"`` = ceil(D / 16); stored
        resolved (an int).
      use_bias: biases on in_proj and out_proj.
      use_conv_bias: bias on the conv1d.
      layer_norm_epsilon: epsilon of every RMSNorm.
      residual_in_fp32: keep the residual stream in float32 whatever the compute dtype.
      lm_head: ``"tied"`` (logits = hidden @ embedding^T), ``"untied"`` (its own
        ``lm_head`` [D, V], no bias) or ``"none"`` (no logits: a ``MambaModel`` backbone).
      scan_mode: ``selective_scan``'s mode, ``"associative"`` or ``"sequential"``.
      scan_chunk: ``selective_scan``'s ``chunk_size`` (associative mode), or None.
      scan_remat: ``selective_scan``'s ``remat`` (associative mode).
      time_step_min, time_step_max, time_step_floor, time_step_scale: initialisation of
        ``dt_proj`` for training from scratch (Mamba's: bias = softplus^-1 of a log-uniform
        step in [min, max] clamped at floor; weight U(+-scale / sqrt(R))).

    Raises:
      ValueError: for non-positive sizes, a bad ``time_step_rank``, unknown ``lm_head`` /
        ``scan_mode``, a bad ``scan_chunk`` or non-bool flags.

    Example:
      >>> MambaConfig(hidden_size=64, num_layers=2).time_step_rank
      4
    """

    hidden_size: int = 768
    num_layers: int = 24
    vocab_size: int = 50280
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    use_bias: bool = False
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    lm_head: str = "tied"
    scan_mode: str = "associative"
    scan_chunk: int | None = None
    scan_remat: bool = False
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_scale: float = 1.0

    def __post_init__(self):
        check_fields(self, **_FIELDS)
        if self.time_step_rank == "auto":
            object.__setattr__(self, "time_step_rank", math.ceil(self.hidden_size / 16))

    @property
    def d_inner(self) -> int:
        """The mixer's channels E = expand * hidden_size (HF's ``intermediate_size``)."""
        return self.expand * self.hidden_size


def _symmetric_uniform(bound: float) -> jax.nn.initializers.Initializer:
    """U(-bound, bound)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = _F32) -> jax.Array:
        return jax.random.uniform(key, shape, _F32, -bound, bound).astype(dtype)

    return init


def _dt_bias_init(cfg: MambaConfig) -> jax.nn.initializers.Initializer:
    """Mamba's dt bias: softplus^-1(dt), dt log-uniform in [min, max], clamped at floor."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = _F32) -> jax.Array:
        lo, hi = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
        dt = jnp.exp(jax.random.uniform(key, shape, _F32) * (hi - lo) + lo)
        dt = jnp.maximum(dt, cfg.time_step_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init
