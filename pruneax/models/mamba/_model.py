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

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax.models._shared.layers import lm_head, lm_logits, rms_norm
from pruneax.models.mamba._config import (
    LM_HEADS,
    MambaConfig,
    _dt_bias_init,
    _symmetric_uniform,
    _torch_uniform,
    _zeros,
)
from pruneax.models.mamba._ssm import SSMBranch, mixer_forward

__all__ = ["LM_HEADS", "MambaBlock", "MambaConfig", "MambaLM", "MambaMixer", "MambaOutput"]

_F32 = jnp.float32


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
        ``mixer_forward`` / ``selective_scan`` for the pruning options and ``mode``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> mixer = MambaMixer(MambaConfig(hidden_size=8, num_layers=1), rngs=nnx.Rngs(0))
      >>> mixer(jnp.ones((2, 5, 8))).shape
      (2, 5, 8)

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

    def branches(self) -> tuple[SSMBranch, ...]:
        """The one forward SSM branch (``SSMMixer`` protocol)."""
        return (SSMBranch(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D),)

    def __call__(
        self,
        x: jax.Array,
        *,
        keep: jax.Array | None = None,
        positions: jax.Array | None = None,
        length: int | None = None,
        gap_rule: str = "own",
        gap_delta: jax.Array | None = None,
        mode: str | None = None,
        return_y: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Mixes the tokens of ``x`` [B, L, D] causally along L.

        Token pruning (ToP-ViM; ``pruned_mixer_forward`` is the mode-level interface and
        returns the step sizes too, ``mixer_forward`` the same for this call's options):

        - ``keep`` (``aligned_exact``, full sequence): a pruned position is an empty slot: its
          in_proj x is zeroed BEFORE the conv (no kept output reads a pruned token), it enters
          the scan with zero input and its own decay, and its ``out`` and ``y`` are 0.
        - ``positions`` + ``length`` (``aligned_gap``): ``x`` holds the kept tokens only, at
          these original positions: position-aware conv and ``gap_rule``'s gap decay.

        Args:
          x: [B, L, D] floating.
          keep: optional bool [B, L] (see above).
          positions: optional int [B, L], strictly increasing, in ``[0, length)``.
          length: the full length for ``positions``.
          gap_rule: ``"own"``, ``"prev"`` or ``"true"`` (with ``positions``).
          gap_delta: optional [B, L, E] extra decay steps (``selective_scan``'s compact form).
          mode: the scan mode; None uses ``config.scan_mode``.
          return_y: also return the scan's gated output ``y`` [B, L, E] (before out_proj),
            from which ToP-ViM scores tokens: ``S_t = sum_e max(0, y_te)``.

        Returns:
          ``out`` [B, L, D] in the compute dtype, or ``(out, y)``.

        Raises:
          ValueError: if ``x`` is not a floating [B, L, D], or as ``mixer_forward`` /
            ``selective_scan``.
        """
        r = mixer_forward(
            self,
            x,
            keep=keep,
            positions=positions,
            length=length,
            gap_rule=gap_rule,
            gap_delta=gap_delta,
            scan_mode=mode,
        )
        return (r.out, r.y) if return_y else r.out


class MambaBlock(nnx.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` (HF's ``MambaBlock``).

    The residual is float32 when ``config.residual_in_fp32``, else the compute dtype.

    Args:
      config: a ``MambaConfig``; rngs, dtype, param_dtype: as ``MambaLM``.

    Returns (call):
      ``(x + mixer(norm(x)), y)`` for ``x`` [B, L, D].

    Raises:
      ValueError: as ``MambaMixer``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = MambaConfig(hidden_size=8, num_layers=1)
      >>> block = MambaBlock(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
      >>> [v.shape for v in block(jnp.ones((1, 4, 8)))]
      [(1, 4, 8), (1, 4, 16)]
    """

    def __init__(self, config: MambaConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.residual_in_fp32 = config.residual_in_fp32
        self.dtype = dtype
        self.norm = rms_norm(
            config.hidden_size,
            config.layer_norm_epsilon,
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

    Example:
      >>> import jax.numpy as jnp
      >>> MambaOutput(logits=None, hidden=jnp.zeros((1, 2, 8))).hidden_states is None
      True
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

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> lm = MambaLM(MambaConfig(hidden_size=8, num_layers=1, vocab_size=11), rngs=nnx.Rngs(0))
      >>> lm(jnp.zeros((1, 3), jnp.int32)).logits.shape
      (1, 3, 11)

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
        self.norm_f = rms_norm(
            cfg.hidden_size, cfg.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.lm_head = lm_head(
            cfg.hidden_size,
            cfg.vocab_size,
            tied=cfg.lm_head != "untied",
            init=_torch_uniform,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
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
        none = self.config.lm_head == "none"
        logits = None if none else lm_logits(hidden, self.embed, self.lm_head)
        return MambaOutput(
            logits=logits,
            hidden=hidden,
            hidden_states=tuple(hidden_states) if return_hidden_states else None,
            ys=tuple(ys) if return_ys else None,
        )
