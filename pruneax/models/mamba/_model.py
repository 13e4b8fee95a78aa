"""Mamba (selective state-space) mixer and a minimal Mamba language model in Flax NNX.

``MambaMixer`` is the block of Gu & Dao's Mamba as Hugging Face's ``MambaMixer`` computes it:
in_proj -> (x, z); x -> causal depthwise conv1d -> SiLU -> x_proj -> (dt, B, C);
delta = softplus(dt_proj(dt)); y = selective_scan(x, delta, -exp(A_log), B, C, D, z);
out_proj(y). ``MambaLM`` stacks pre-norm residual blocks (RMSNorm + mixer) between an
embedding and a final RMSNorm with a tied, untied or no LM head. ``load_mamba`` reads a
``transformers`` ``MambaForCausalLM`` / ``MambaModel`` ``save_pretrained`` directory without
torch; the outputs match the PyTorch model's.

References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(arXiv:2312.00752); transformers' ``models/mamba/modeling_mamba.py`` (the slow, pure-PyTorch
path) and state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax.models._shared.common import is_size
from pruneax.ops import MODES, selective_scan

LM_HEADS = ("tied", "untied", "none")

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
        for name in (
            "hidden_size",
            "num_layers",
            "vocab_size",
            "state_size",
            "expand",
            "conv_kernel",
        ):
            value = getattr(self, name)
            if not is_size(value):
                raise ValueError(f"MambaConfig: {name} must be a positive int; got {value!r}")
            object.__setattr__(self, name, int(value))
        rank = self.time_step_rank
        if rank == "auto":
            object.__setattr__(self, "time_step_rank", math.ceil(self.hidden_size / 16))
        elif is_size(rank):
            object.__setattr__(self, "time_step_rank", int(rank))
        else:
            raise ValueError(
                f"MambaConfig: time_step_rank must be a positive int or 'auto'; got {rank!r}"
            )
        for name in ("use_bias", "use_conv_bias", "residual_in_fp32", "scan_remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MambaConfig: {name} must be a bool; got {getattr(self, name)!r}")
        if self.lm_head not in LM_HEADS:
            raise ValueError(
                f"MambaConfig: lm_head must be one of {list(LM_HEADS)}; got {self.lm_head!r}"
            )
        if self.scan_mode not in MODES:
            raise ValueError(
                f"MambaConfig: scan_mode must be one of {list(MODES)}; got {self.scan_mode!r}"
            )
        if self.scan_chunk is not None and not is_size(self.scan_chunk):
            raise ValueError(
                f"MambaConfig: scan_chunk must be a positive int or None; got {self.scan_chunk!r}"
            )
        positive = ("layer_norm_epsilon", "time_step_min", "time_step_max", "time_step_floor")
        for name in (*positive, "time_step_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"MambaConfig: {name} must be a float > 0; got {value!r}")
            object.__setattr__(self, name, float(value))

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


class MambaMixer(nnx.Module):
    """Mamba's selective-SSM mixer (one direction, causal).

    Attributes: ``in_proj`` Linear(D, 2E), ``conv1d`` depthwise Conv (kernel [K, 1, E]),
    ``x_proj`` Linear(E, R + 2N, no bias), ``dt_proj`` Linear(R, E) (computed in float32),
    ``A_log`` [E, N], ``D`` [E], ``out_proj`` Linear(E, D).

    Shapes:
      ``x`` [B, L, D] -> ``out`` [B, L, D] (and ``y`` [B, L, E] when ``return_y``).

    Initialization (training from scratch, as Mamba): Linear / conv weights U(+-1/sqrt(fan_in))
    (PyTorch's default), biases 0, ``dt_proj`` as ``MambaConfig`` says, ``A_log[e, n] =
    log(n + 1)`` (S4D-real), ``D = 1``.

    Args:
      config: a ``MambaConfig``.
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype of the projections and the conv; delta, the scan and its state
        are float32 whatever it is.
      param_dtype: parameter dtype.

    Raises:
      ValueError: at call time if ``x`` is not a floating [B, L, D] (and as
        ``selective_scan`` for ``keep`` / ``gap_delta`` / ``mode``).

    References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752), Fig. 3 and Alg. 2.
    """

    def __init__(
        self,
        config: MambaConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, MambaConfig):
            raise ValueError(f"MambaMixer: config must be a MambaConfig; got {type(config)}")
        cfg = config
        d, e, n, r = cfg.hidden_size, cfg.d_inner, cfg.state_size, cfg.time_step_rank
        self.config = cfg
        self.dtype = dtype
        kw = dict(kernel_init=_torch_uniform, bias_init=_zeros, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = nnx.Linear(d, 2 * e, use_bias=cfg.use_bias, dtype=dtype, **kw)
        self.conv1d = nnx.Conv(
            e,
            e,
            kernel_size=(cfg.conv_kernel,),
            feature_group_count=e,
            padding=((cfg.conv_kernel - 1, 0),),
            use_bias=cfg.use_conv_bias,
            dtype=dtype,
            **kw,
        )
        self.x_proj = nnx.Linear(e, r + 2 * n, use_bias=False, dtype=dtype, **kw)
        std = cfg.time_step_scale / math.sqrt(r)
        self.dt_proj = nnx.Linear(
            r,
            e,
            kernel_init=_symmetric_uniform(std),
            bias_init=_dt_bias_init(cfg),
            dtype=_F32,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        a = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=_F32), (e, n))
        self.A_log = nnx.Param(jnp.log(a).astype(param_dtype))
        self.D = nnx.Param(jnp.ones((e,), param_dtype))
        self.out_proj = nnx.Linear(e, d, use_bias=cfg.use_bias, dtype=dtype, **kw)

    def __call__(
        self,
        x: jax.Array,
        *,
        keep: jax.Array | None = None,
        gap_delta: jax.Array | None = None,
        mode: str | None = None,
        return_y: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Mixes the tokens of ``x`` [B, L, D] causally along L.

        Args:
          x: [B, L, D] floating.
          keep: optional bool [B, L] for ``selective_scan``: pruned positions enter the
            scan with zero input but their own decay (ToP-ViM alignment). Only the scan is
            masked: the conv still sees every position of ``x``.
          gap_delta: optional [B, L, E] extra decay steps (``selective_scan``'s compact form).
          mode: the scan mode; None uses ``config.scan_mode``.
          return_y: also return the scan's gated output ``y`` [B, L, E] (before out_proj),
            from which ToP-ViM scores tokens: ``S_t = sum_e max(0, y_te)``.

        Returns:
          ``out`` [B, L, D] in the compute dtype, or ``(out, y)``.

        Raises:
          ValueError: if ``x`` is not a floating [B, L, D], or as ``selective_scan``.
        """
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
            raise ValueError(
                f"MambaMixer: x must be [B, L, D] with D = {cfg.hidden_size}; got shape "
                f"{tuple(x.shape)}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"MambaMixer: x must be floating point; got dtype {x.dtype}")
        e, n, r = cfg.d_inner, cfg.state_size, cfg.time_step_rank
        xs, z = jnp.split(self.in_proj(x), [e], axis=-1)
        xs = jax.nn.silu(self.conv1d(xs))
        dt, b, c = jnp.split(self.x_proj(xs), [r, r + n], axis=-1)
        delta = jax.nn.softplus(self.dt_proj(dt.astype(_F32)))
        a = -jnp.exp(self.A_log[...].astype(_F32))
        y = selective_scan(
            xs,
            delta,
            a,
            b,
            c,
            self.D[...],
            z,
            keep=keep,
            gap_delta=gap_delta,
            mode=cfg.scan_mode if mode is None else mode,
            chunk_size=cfg.scan_chunk,
            remat=cfg.scan_remat,
        )
        out = self.out_proj(y)
        return (out, y) if return_y else out


class MambaBlock(nnx.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` (HF's ``MambaBlock``).

    The residual is float32 when ``config.residual_in_fp32``, else the compute dtype.
    """

    def __init__(self, config: MambaConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.residual_in_fp32 = config.residual_in_fp32
        self.dtype = dtype
        self.norm = nnx.RMSNorm(
            config.hidden_size,
            epsilon=config.layer_norm_epsilon,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.mixer = MambaMixer(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, *, mode: str | None = None) -> tuple[jax.Array, jax.Array]:
        """``(x + mixer(norm(x)), the mixer's y)``."""
        residual = x.astype(_F32) if self.residual_in_fp32 else x.astype(self.dtype)
        out, y = self.mixer(self.norm(x), mode=mode, return_y=True)
        return residual + out.astype(residual.dtype), y


@struct.dataclass
class MambaOutput:
    """What ``MambaLM.__call__`` returns (a pytree).

    Attributes:
      logits: [B, L, V] float32, or None when ``config.lm_head == "none"``.
      hidden: [B, L, D] the last hidden state, after the final RMSNorm (HF's
        ``last_hidden_state``).
      hidden_states: when asked, the residual stream entering block 0 (the embeddings) and
        after each block: ``num_layers + 1`` arrays [B, L, D], the ViT's convention. (HF's
        ``MambaModel`` returns instead the ``num_layers`` block outputs followed by
        ``hidden``: ours ``[1:]`` + ``(hidden,)``.)
      ys: when asked, each block's mixer output ``y`` [B, L, E] before out_proj (gated).
    """

    logits: jax.Array | None
    hidden: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    ys: tuple[jax.Array, ...] | None = None


class MambaLM(nnx.Module):
    """A minimal Mamba language model: embedding, ``num_layers`` x (RMSNorm + mixer, residual),
    final RMSNorm (``norm_f``), LM head (tied to the embedding, untied, or none).

    Leaf names: ``embed/embedding`` [V, D], ``layers/{i}/norm/scale``,
    ``layers/{i}/mixer/{in_proj,conv1d,x_proj,dt_proj,out_proj}/{kernel,bias}``,
    ``layers/{i}/mixer/{A_log,D}``, ``norm_f/scale``, ``lm_head/kernel`` [D, V] (untied).
    Pretrained weights come from ``load_mamba``; from scratch the embedding is N(0, 0.02^2).

    Shapes:
      ``input_ids`` [B, L] integer -> ``MambaOutput`` (logits [B, L, V]).

    Args:
      config: a ``MambaConfig``.
      rngs: ``nnx.Rngs`` for the initializers.
      dtype: computation dtype (the scan and its state are float32 regardless; see
        ``MambaConfig.residual_in_fp32``).
      param_dtype: parameter dtype.

    Raises:
      ValueError: at construction if ``config`` is not a ``MambaConfig``; at call time if
        ``input_ids`` is not an integer [B, L].

    References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752); transformers'
      ``MambaForCausalLM``.
    """

    def __init__(
        self,
        config: MambaConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if not isinstance(config, MambaConfig):
            raise ValueError(f"MambaLM: config must be a MambaConfig; got {type(config)}")
        cfg = config
        self.config = cfg
        self.dtype = dtype
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=jax.nn.initializers.normal(0.02),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [
                MambaBlock(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                for _ in range(cfg.num_layers)
            ]
        )
        self.norm_f = nnx.RMSNorm(
            cfg.hidden_size,
            epsilon=cfg.layer_norm_epsilon,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.lm_head = (
            nnx.Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                use_bias=False,
                kernel_init=_torch_uniform,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if cfg.lm_head == "untied"
            else None
        )

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        mode: str | None = None,
        return_hidden_states: bool = False,
        return_ys: bool = False,
    ) -> MambaOutput:
        """Runs the model on token ids [B, L].

        Args:
          input_ids: [B, L] integer token ids in [0, V).
          mode: the scan mode of every mixer; None uses ``config.scan_mode``.
          return_hidden_states: also return the residual stream before / after each block.
          return_ys: also return each mixer's gated scan output ``y``.

        Returns:
          A ``MambaOutput``.

        Raises:
          ValueError: if ``input_ids`` is not an integer [B, L] array.
        """
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(
                f"MambaLM: input_ids must be integer [B, L]; got shape "
                f"{tuple(input_ids.shape)} dtype {input_ids.dtype}"
            )
        x = self.embed(input_ids)
        hidden_states, ys = [x], []
        for block in self.layers:
            x, y = block(x, mode=mode)
            hidden_states.append(x)
            ys.append(y)
        hidden = self.norm_f(x)
        if self.config.lm_head == "tied":
            logits = self.embed.attend(hidden).astype(_F32)
        elif self.lm_head is not None:
            logits = self.lm_head(hidden).astype(_F32)
        else:
            logits = None
        return MambaOutput(
            logits=logits,
            hidden=hidden,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
            ys=tuple(ys) if return_ys else None,
        )
