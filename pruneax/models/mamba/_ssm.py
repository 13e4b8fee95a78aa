"""The SSM branch of a Mamba mixer, shared by ``MambaMixer`` and Vim's ``BiMambaMixer``.

A Mamba mixer is ``in_proj -> (x, z)``, one or more SSM branches, the mean of their outputs,
``out_proj``. A branch (``SSMBranch``: one direction's causal depthwise conv1d, ``x_proj``,
``dt_proj``, ``A_log``, ``D``) computes::

    xs = silu(conv(x));  (dt, B, C) = x_proj(xs);  delta = softplus(dt_proj(dt))
    y = selective_scan(xs, delta, -exp(A_log), B, C, D, z)

in its own scan order (a ``reverse`` branch runs on the flipped sequence and its outputs are
flipped back). ``MambaMixer`` has one forward branch; hustvl/Vim's bidirectional mixer has a
forward and a reverse one. ``mixer_forward`` runs any mixer that exposes its branches
(``SSMMixer``) densely or with token pruning (``keep`` over the full sequence, or the kept tokens
at their original ``positions``), and returns the step sizes with the outputs; the pruning modes
are defined in ``pruneax.models.mamba._prune`` (``pruned_mixer_forward``).

References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752), Alg. 2; Zhu et al., "Vision Mamba",
ICML 2024 (arXiv:2401.09417), Alg. 1; Zhan et al., "Exploring Token Pruning in Vision State
Space Models" (ToP-ViM), NeurIPS 2024 (arXiv:2409.18962), Sec. 4.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.common import is_size
from pruneax.models.mamba._conv import causal_conv, gap_counts
from pruneax.ops import gap_delta_sum, selective_scan

GAP_RULES = ("own", "prev", "true")

_F32 = jnp.float32


class SSMBranch(NamedTuple):
    """One direction of a Mamba mixer: the layers between ``in_proj`` and ``out_proj``.

    Attributes:
      conv1d: depthwise causal ``nnx.Conv`` (kernel [K, 1, E], bias [E] or None).
      x_proj: ``nnx.Linear(E, R + 2N)`` giving ``(dt, B, C)``.
      dt_proj: ``nnx.Linear(R, E)`` (delta = softplus of it, float32).
      A_log: ``nnx.Param`` [E, N]; the scan uses ``A = -exp(A_log)``.
      D: ``nnx.Param`` [E], the skip connection.
      reverse: the branch scans the sequence right to left (Vim's backward direction).

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.mamba import MambaConfig, MambaMixer
      >>> mixer = MambaMixer(MambaConfig(hidden_size=8, num_layers=1), rngs=nnx.Rngs(0))
      >>> [b.reverse for b in mixer.branches()]
      [False]
    """

    conv1d: nnx.Conv
    x_proj: nnx.Linear
    dt_proj: nnx.Linear
    A_log: nnx.Param
    D: nnx.Param
    reverse: bool = False


@runtime_checkable
class SSMMixer(Protocol):
    """What ``mixer_forward`` / ``pruned_mixer_forward`` need of a Mamba mixer.

    ``in_proj`` maps D -> 2E (split into the SSM input x and the gate z), ``out_proj`` E -> D;
    ``branches()`` lists the SSM branches whose gated outputs are averaged; ``config`` has
    ``scan_mode``, ``scan_chunk`` and ``scan_remat`` (``MambaConfig`` and ``VimConfig`` do).
    ``MambaMixer`` and ``BiMambaMixer`` implement it; so can a user's own mixer.

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.mamba import MambaConfig, MambaMixer
      >>> isinstance(MambaMixer(MambaConfig(hidden_size=8, num_layers=1), rngs=nnx.Rngs(0)),
      ...            SSMMixer)
      True
    """

    in_proj: nnx.Linear
    out_proj: nnx.Linear
    config: Any

    def branches(self) -> tuple[SSMBranch, ...]: ...


class MixerOutput(NamedTuple):
    """What ``mixer_forward`` / ``pruned_mixer_forward`` return.

    Attributes:
      out: [B, T, D] the mixer output (``out_proj(y)``), in the compute dtype.
      y: [B, T, E] the mean of the branches' gated scan outputs before ``out_proj`` (ToP-ViM
        scores tokens from it).
      delta: one [B, T, E] float32 array per branch: its step sizes ``delta_t``, in the input
        token order (a reverse branch's flipped back).
    """

    out: jax.Array
    y: jax.Array
    delta: tuple[jax.Array, ...]


def check_positions(
    where: str, positions: Any, shape: tuple[int, int], length: Any, *, values: bool = True
) -> None:
    """Raises ValueError unless ``positions`` is an int [B, T] in a sequence of ``length``.

    When ``positions`` is concrete (not traced) and ``values``, its values are checked too:
    strictly increasing along T, in ``[0, length)``.
    """
    if positions is None:
        raise ValueError(f"{where}: positions are required (an int array [B, T] = {shape})")
    if tuple(jnp.shape(positions)) != shape or not jnp.issubdtype(
        jnp.result_type(positions), jnp.integer
    ):
        raise ValueError(
            f"{where}: positions must be an int array [B, T] = {shape}; got shape "
            f"{tuple(jnp.shape(positions))} dtype {jnp.result_type(positions)}"
        )
    if not is_size(length) or length < shape[1]:
        raise ValueError(
            f"{where}: positions need the full length, an int >= T = {shape[1]}; got "
            f"length={length!r}"
        )
    if values and not isinstance(positions, jax.core.Tracer):
        p = np.asarray(positions)
        if p.size and (p.min() < 0 or p.max() >= length or np.any(np.diff(p, axis=1) <= 0)):
            raise ValueError(
                f"{where}: positions must strictly increase along T and lie in [0, {length}); "
                f"got {p.tolist()}"
            )


def branch_forward(
    branch: SSMBranch,
    xin: jax.Array,
    z: jax.Array,
    *,
    keep: jax.Array | None = None,
    positions: jax.Array | None = None,
    length: int | None = None,
    gap_rule: str = "own",
    gap_delta: jax.Array | None = None,
    scan_mode: str = "associative",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """One SSM branch on the in_proj halves ``xin``, ``z`` [B, T, E]: ``(y, delta)``.

    ``keep`` (full sequence): a pruned position's ``xin`` is zeroed before the conv and it
    enters the scan with zero input and its own decay. ``positions`` / ``length`` (kept tokens
    only): position-aware conv and the gap decay of ``gap_rule`` (see ``pruned_mixer_forward``);
    for a reverse branch the positions are mirrored (``length - 1 - pos``). Arguments are
    checked by ``mixer_forward``. Returns ``y`` [B, T, E] and ``delta`` [B, T, E] float32 in
    the input order.
    """
    flip = (lambda v: None if v is None else v[:, ::-1]) if branch.reverse else (lambda v: v)
    xin, z, keep = flip(xin), flip(z), flip(keep)
    if positions is not None and branch.reverse:
        positions = (length - 1) - positions[:, ::-1]
    kernel = branch.conv1d.kernel[...][:, 0, :]
    bias = branch.conv1d.bias[...] if branch.conv1d.bias is not None else None
    r, n = branch.dt_proj.in_features, branch.A_log.shape[-1]

    def features(v: jax.Array, pos: jax.Array | None):
        xs = jax.nn.silu(causal_conv(v, kernel, bias, pos))
        dt, bm, cm = jnp.split(branch.x_proj(xs), [r, r + n], axis=-1)
        return xs, jax.nn.softplus(branch.dt_proj(dt.astype(_F32))), bm, cm

    if keep is not None:  # aligned_exact: a pruned position is an empty slot
        xin = jnp.where(keep[..., None], xin, 0)
    xs, delta, bm, cm = features(xin, positions)
    gap = gap_delta
    if positions is not None:  # aligned_gap
        m = gap_counts(positions)[..., None].astype(_F32)
        if gap_rule == "own":
            gap = m * delta
        elif gap_rule == "prev":  # the preceding kept token's step, in scan order
            gap = m * jnp.concatenate([delta[:, :1], delta[:, :-1]], axis=1)
        else:  # "true": the pruned deltas of aligned_exact, summed over each gap
            rows = jnp.arange(xin.shape[0])[:, None]
            full = jnp.zeros((xin.shape[0], length, xin.shape[2]), xin.dtype)
            full = full.at[rows, positions].set(xin)
            mask = jnp.zeros((xin.shape[0], length), bool).at[rows, positions].set(True)
            delta_full = features(full, None)[1]
            gap = jnp.take_along_axis(gap_delta_sum(delta_full, mask), positions[..., None], 1)
    y = selective_scan(
        xs,
        delta,
        -jnp.exp(branch.A_log[...].astype(_F32)),
        bm,
        cm,
        branch.D[...],
        z,
        keep=keep,
        gap_delta=gap,
        mode=scan_mode,
        chunk_size=chunk_size,
        remat=remat,
    )
    return flip(y), flip(delta)


def mixer_forward(
    mixer: SSMMixer,
    x: jax.Array,
    *,
    keep: jax.Array | None = None,
    positions: jax.Array | None = None,
    length: int | None = None,
    gap_rule: str = "own",
    gap_delta: jax.Array | None = None,
    scan_mode: str | None = None,
) -> MixerOutput:
    """Runs a Mamba mixer on ``x`` [B, T, D] and returns its outputs and step sizes.

    Dense with no options. ``keep`` (bool [B, T] over the full sequence) is ToP-ViM's
    ``aligned_exact``: a pruned position is an empty slot (its in_proj x is zeroed BEFORE the
    conv, so no kept output reads it; it enters the scan with zero input and its own decay) and
    its outputs ``y`` and ``out`` are 0. ``positions`` / ``length`` make ``x`` the kept tokens
    at those original positions (``aligned_gap`` with ``gap_rule``). ``pruned_mixer_forward``
    is the mode-level interface; this is the layer both it and the mixers' ``__call__`` use.

    Args:
      mixer: an ``SSMMixer`` (``MambaMixer``, ``BiMambaMixer`` or a user's own).
      x: [B, T, D] floating.
      keep: optional bool [B, T].
      positions: optional int [B, T], strictly increasing, in ``[0, length)``.
      length: the full sequence length (with ``positions``).
      gap_rule: ``"own"``, ``"prev"`` or ``"true"`` (with ``positions``).
      gap_delta: optional [B, T, E] extra decay steps for ``selective_scan`` (forward branches
        only; not with ``positions``).
      scan_mode: ``selective_scan``'s mode; None uses ``mixer.config.scan_mode``.

    Returns:
      A ``MixerOutput`` ``(out, y, delta)``.

    Raises:
      ValueError: if ``mixer`` is not an ``SSMMixer``, ``x`` not a floating [B, T, D], both
        ``keep`` and ``positions`` (or ``gap_delta``) are given, ``keep`` is not a bool
        [B, T], ``positions`` not a strictly increasing int [B, T] within ``length``, for an
        unknown ``gap_rule`` or ``gap_delta`` with a reverse branch.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.mamba import MambaConfig, MambaMixer
      >>> mixer = MambaMixer(MambaConfig(hidden_size=8, num_layers=1), rngs=nnx.Rngs(0))
      >>> r = mixer_forward(mixer, jnp.ones((1, 5, 8)))
      >>> r.out.shape, r.y.shape, r.delta[0].shape
      ((1, 5, 8), (1, 5, 16), (1, 5, 16))
    """
    name = type(mixer).__name__
    if not isinstance(mixer, SSMMixer):
        raise ValueError(
            f"mixer_forward: mixer must be an SSMMixer (in_proj, out_proj, config, branches()); "
            f"got {name}"
        )
    d = mixer.in_proj.in_features
    if x.ndim != 3 or x.shape[-1] != d:
        raise ValueError(f"{name}: x must be [B, L, D] with D = {d}; got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: x must be floating point; got dtype {x.dtype}")
    bl = tuple(x.shape[:2])
    if keep is not None and positions is not None:
        raise ValueError(f"{name}: give keep (aligned_exact) or positions, not both")
    if gap_delta is not None and positions is not None:
        raise ValueError(f"{name}: give gap_delta or positions (which set the gaps), not both")
    if keep is not None and (tuple(keep.shape) != bl or keep.dtype != jnp.bool_):
        raise ValueError(
            f"{name}: keep must be a bool mask [B, L] = {bl}; got shape {tuple(keep.shape)} "
            f"dtype {keep.dtype}"
        )
    branches = tuple(mixer.branches())
    if positions is not None:
        check_positions(name, positions, bl, length, values=False)
        if gap_rule not in GAP_RULES:
            raise ValueError(f"{name}: gap_rule must be one of {list(GAP_RULES)}; got {gap_rule!r}")
        check_positions(name, positions, bl, length)
    if gap_delta is not None and any(b.reverse for b in branches):
        raise ValueError(f"{name}: gap_delta applies to forward branches only")
    cfg = mixer.config
    e = mixer.in_proj.out_features // 2
    xin, z = jnp.split(mixer.in_proj(x), [e], axis=-1)
    scan = dict(
        scan_mode=cfg.scan_mode if scan_mode is None else scan_mode,
        chunk_size=cfg.scan_chunk,
        remat=cfg.scan_remat,
    )
    ys, deltas = zip(
        *(
            branch_forward(
                br,
                xin,
                z,
                keep=keep,
                positions=positions,
                length=length,
                gap_rule=gap_rule,
                gap_delta=gap_delta,
                **scan,
            )
            for br in branches
        ),
        strict=True,
    )
    y = ys[0] if len(ys) == 1 else sum(ys) / len(ys)
    if keep is not None:
        y = jnp.where(keep[..., None], y, 0)
    out = mixer.out_proj(y)
    if keep is not None:
        out = jnp.where(keep[..., None], out, 0)
    return MixerOutput(out=out, y=y, delta=tuple(deltas))
