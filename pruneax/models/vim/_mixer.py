"""hustvl/Vim's bidirectional Mamba mixer and its residual block.

The mixer is two SSM branches (forward and reverse) around a shared in_proj / out_proj; it
runs through ``pruneax.models.mamba.mixer_forward``, the code ``MambaMixer`` runs, so the three
ToP-ViM modes are the same computation for a plain Mamba mixer and for Vim.

References: Zhu et al., "Vision Mamba", ICML 2024 (arXiv:2401.09417), Alg. 1; hustvl/Vim
``mamba_simple.py`` (``bimamba_type="v2"``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models._shared.layers import rms_norm
from pruneax.models.mamba._config import _dt_bias_init, _symmetric_uniform, _torch_uniform
from pruneax.models.mamba._prune import pruned_mixer_forward
from pruneax.models.mamba._ssm import SSMBranch, mixer_forward
from pruneax.models.vim._config import VimConfig

_F32 = jnp.float32


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

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = VimConfig(image_size=8, patch_size=2, num_channels=1, dim=16, depth=2)
      >>> BiMambaMixer(cfg, rngs=nnx.Rngs(0))(jnp.ones((1, 17, 16))).shape
      (1, 17, 16)

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

    def branches(self) -> tuple[SSMBranch, ...]:
        """The forward and the reverse SSM branch (``SSMMixer`` protocol)."""
        return (
            SSMBranch(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D),
            SSMBranch(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, True),
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
        """Mixes the tokens of ``x`` [B, L, D] in both directions (``mixer_forward``).

        Args:
          x: [B, L, D] floating (the normed stream).
          keep: ``aligned_exact``: bool [B, L]; False = an empty slot (in_proj x zeroed before
            the conv, zero scan input, own decay); its ``y`` and ``out`` are returned as 0.
          positions: ``aligned_gap``: [B, L] int32 strictly increasing positions of the tokens
            in a sequence of ``length`` (position-aware conv, gap decay by ``gap_rule``; the
            backward branch mirrors them). Values are checked when concrete.
          length: the full sequence length for ``positions``.
          gap_rule: ``"own"``, ``"prev"`` or ``"true"`` (``pruned_mixer_forward``).
          return_y: also return ``y = (y_f + flip(y_b)) / 2`` [B, L, E], the gated scan output
            of both directions in the input order, before ``out_proj``.

        Returns:
          ``out`` [B, L, D], or ``(out, y)``.

        Raises:
          ValueError: as the class says.
        """
        r = mixer_forward(self, x, keep=keep, positions=positions, length=length, gap_rule=gap_rule)
        return (r.out, r.y) if return_y else r.out


class VimBlock(nnx.Module):
    """``x + mixer(norm(x))`` (hustvl's add-then-norm block, rewritten; module docstring).

    After a pruning stage the stream holds the kept tokens and the mixer runs through
    ``pruned_mixer_forward`` (``mode``); with a full-length ``keep`` mask (``aligned_exact``)
    the pruned positions get no update. Returns ``(x, y)``.

    Args:
      config: a ``VimConfig``; rngs, dtype, param_dtype: as ``Vim``.

    Raises:
      ValueError: at call time as ``pruned_mixer_forward`` / ``mixer_forward``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = VimConfig(image_size=8, patch_size=2, num_channels=1, dim=16, depth=2)
      >>> block = VimBlock(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
      >>> pos = jnp.array([[0, 3, 8, 16]])
      >>> x, y = block(jnp.ones((1, 4, 16)), mode="aligned_gap", positions=pos, length=17)
      >>> x.shape, y.shape
      ((1, 4, 16), (1, 4, 32))
    """

    def __init__(self, config: VimConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.residual_in_fp32 = config.residual_in_fp32
        self.dtype = dtype
        self.norm = rms_norm(
            config.dim,
            config.norm_eps,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.mixer = BiMambaMixer(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(
        self,
        x: jax.Array,
        *,
        mode: str | None = None,
        positions: jax.Array | None = None,
        length: int | None = None,
        gap_rule: str | None = None,
        keep: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``(x + mixer(norm(x)), the mixer's y)``.

        Args:
          x: [B, T, D] the residual stream (the kept tokens after a stage).
          mode: a ToP-ViM mode: the mixer runs through ``pruned_mixer_forward(mixer, norm(x),
            positions, length=length, mode=mode, gap_rule=gap_rule)``; or None: the mixer's
            own call (dense; ``keep``; or ``positions`` + ``length`` = aligned_gap).
          positions, length, gap_rule: as ``pruned_mixer_forward``.
          keep: ``aligned_exact`` on a full-length stream (bool [B, T]): the pruned positions
            get no update.

        Returns:
          ``(x_next [B, T, D], y [B, T, E])``.

        Raises:
          ValueError: as ``pruned_mixer_forward`` / ``mixer_forward``.
        """
        residual = x.astype(_F32) if self.residual_in_fp32 else x.astype(self.dtype)
        h = self.norm(x)
        if mode is None:  # dense, keep (aligned_exact, full length) or positions (aligned_gap)
            rule = "own" if gap_rule is None else gap_rule
            r = mixer_forward(
                self.mixer, h, keep=keep, positions=positions, length=length, gap_rule=rule
            )
        else:
            r = pruned_mixer_forward(
                self.mixer, h, positions, length=length, mode=mode, gap_rule=gap_rule
            )
        return residual + r.out.astype(residual.dtype), r.y
