"""The Mamba selective scan in pure JAX: an associative (parallel) scan and a sequential one.

The recurrence, per batch element b, channel e and state index n (``A`` diagonal, real and
negative):

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t          (h: [E, N], float32)
    y_t = <C_t, h_t> + D * x_t,   then y_t * silu(z_t)

``mode="associative"`` evaluates it with ``jax.lax.associative_scan`` over time on the pairs
``(a_t, b_t) = (exp(delta_t A), delta_t B_t x_t)`` and the combine
``((a_l, b_l), (a_r, b_r)) -> (a_r a_l, a_r b_l + b_r)`` (log-depth, every factor in (0, 1],
no overflow; never the cumulative-sum-of-logs trick, whose ``exp(-S)`` overflows).
``mode="sequential"`` is a ``jax.lax.scan`` over time, the reference.

Token pruning (ToP-ViM "hidden-state alignment"): ``keep`` keeps pruned positions in the
recurrence with zero input but their own decay, and ``gap_delta`` is the equivalent compact
form over the kept tokens only (``gap_delta_sum`` computes it); see ``selective_scan``.

References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
2023 (arXiv:2312.00752), Sec. 3 and Alg. 2; Blelloch, "Prefix Sums and Their Applications",
1990 (first-order linear recurrences as a scan); Zhan et al., "Exploring Token Pruning in
Vision State Space Models", NeurIPS 2024 (arXiv:2409.18962), Sec. 4 (hidden-state alignment).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("associative", "sequential")

_F32 = jnp.float32


def _combine(
    left: tuple[jax.Array, jax.Array], right: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Composition of the affine maps ``h -> a h + b``: first ``left``, then ``right``."""
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def _shape(a: jax.typing.ArrayLike, name: str = "x", where: str = "selective_scan") -> tuple:
    """The shape of a real array argument; ValueError naming it for anything else (None, a
    str, a dict, a ragged or non-numeric list, an object array, a complex array: the float32
    cast would drop its imaginary part)."""
    try:
        if a is None or isinstance(a, str | bytes | dict):
            raise TypeError
        if jnp.issubdtype(jnp.result_type(a), jnp.complexfloating):
            raise TypeError
        return tuple(jnp.shape(a))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"{where}: {name} must be a real numeric array; got {type(a).__name__} "
            f"{getattr(a, 'dtype', '')}"
        ) from None


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"selective_scan: {name} must be a bool; got {type(value).__name__}")
    return bool(value)


def _check(
    x: jax.typing.ArrayLike,
    delta: jax.typing.ArrayLike,
    A: jax.typing.ArrayLike,
    B: jax.typing.ArrayLike,
    C: jax.typing.ArrayLike,
    D: jax.typing.ArrayLike | None,
    z: jax.typing.ArrayLike | None,
    h0: jax.typing.ArrayLike | None,
    keep: jax.typing.ArrayLike | None,
    gap_delta: jax.typing.ArrayLike | None,
    mode: str,
    chunk_size: int | None,
) -> None:
    where = "selective_scan"
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {list(MODES)}; got {mode!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
    ):
        raise ValueError(f"{where}: chunk_size must be a positive int or None; got {chunk_size!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be a positive int or None; got {chunk_size!r}")
    xs = _shape(x)
    if len(xs) != 3:
        raise ValueError(f"{where}: x must be [B, L, E]; got shape {xs}")
    b, length, e = xs
    if length < 1:
        raise ValueError(f"{where}: x must have at least one time step (L >= 1); got shape {xs}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{where}: x must be floating point; got dtype {jnp.result_type(x)}")
    As = _shape(A, "A")
    if len(As) != 2 or As[0] != e:
        raise ValueError(f"{where}: A must be [E, N] with E = {e} (x: {xs}); got shape {As}")
    n = As[1]
    expected = {
        "delta": (delta, (b, length, e), "[B, L, E]"),
        "B": (B, (b, length, n), "[B, L, N]"),
        "C": (C, (b, length, n), "[B, L, N]"),
        "D": (D, (e,), "[E]"),
        "z": (z, (b, length, e), "[B, L, E]"),
        "h0": (h0, (b, e, n), "[B, E, N]"),
        "gap_delta": (gap_delta, (b, length, e), "[B, L, E]"),
    }
    for name, (value, want, layout) in expected.items():
        if value is None and name not in ("delta", "B", "C"):
            continue
        if _shape(value, name) != want:
            raise ValueError(
                f"{where}: {name} must be {layout} = {want} (x: {xs}, A: {As}); got shape "
                f"{_shape(value)}"
            )
    if keep is not None:
        if _shape(keep, "keep") != (b, length) or jnp.result_type(keep) != jnp.bool_:
            raise ValueError(
                f"{where}: keep must be a bool mask [B, L] = {(b, length)}; got shape "
                f"{_shape(keep)} dtype {jnp.result_type(keep)}"
            )


def _block(
    h: jax.Array,
    decay_dt: jax.Array,
    u: jax.Array,
    Bm: jax.Array,
    Cm: jax.Array,
    A: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Associative scan of one block of T steps from state ``h`` [B, E, N].

    ``decay_dt``, ``u`` [T, B, E]; ``Bm``, ``Cm`` [T, B, N] (time-major: the scan slices
    contiguous memory). Returns ``(h_T [B, E, N], <C_t, h_t> [T, B, E])``.
    """
    a = jnp.exp(decay_dt[..., None] * A)  # [T, B, E, N], in (0, 1]
    bx = u[..., None] * Bm[:, :, None, :]
    bx = bx.at[0].add(a[0] * h)  # fold the incoming state into the first step
    _, hs = jax.lax.associative_scan(_combine, (a, bx), axis=0)
    y = jnp.sum(hs * Cm[:, :, None, :], axis=-1)  # elementwise: no TF32 matmul on GPUs
    return hs[-1], y


def _associative(
    h: jax.Array,
    decay_dt: jax.Array,
    u: jax.Array,
    Bm: jax.Array,
    Cm: jax.Array,
    A: jax.Array,
    chunk_size: int | None,
    remat: bool,
) -> tuple[jax.Array, jax.Array]:
    """``(h_L, y)`` from time-major inputs ``[L, B, ...]``; ``y`` [L, B, E]."""
    block = jax.checkpoint(_block) if remat else _block
    length, b, e = u.shape
    if chunk_size is None or chunk_size >= length:
        return block(h, decay_dt, u, Bm, Cm, A)
    t = chunk_size
    nc = -(-length // t)
    pad = nc * t - length
    # Padding steps have delta 0 (decay exactly 1) and zero input: the state passes unchanged.
    chunks = tuple(
        jnp.pad(v, ((0, pad), (0, 0), (0, 0))).reshape(nc, t, b, v.shape[-1])
        for v in (decay_dt, u, Bm, Cm)
    )

    def body(carry, inputs):
        return block(carry, *inputs, A)

    h_last, y = jax.lax.scan(body, h, chunks)
    return h_last, y.reshape(nc * t, b, e)[:length]


def _sequential(
    h: jax.Array,
    decay_dt: jax.Array,
    u: jax.Array,
    Bm: jax.Array,
    Cm: jax.Array,
    A: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(h_L, y)`` from time-major inputs ``[L, B, ...]``; ``y`` [L, B, E]."""

    def step(h, inputs):
        ddt, u_t, b_t, c_t = inputs  # [B, E], [B, E], [B, N], [B, N]
        h = jnp.exp(ddt[..., None] * A) * h + u_t[..., None] * b_t[:, None, :]
        return h, jnp.sum(h * c_t[:, None, :], axis=-1)

    return jax.lax.scan(step, h, (decay_dt, u, Bm, Cm))


def selective_scan(
    x: jax.typing.ArrayLike,
    delta: jax.typing.ArrayLike,
    A: jax.typing.ArrayLike,
    B: jax.typing.ArrayLike,
    C: jax.typing.ArrayLike,
    D: jax.typing.ArrayLike | None = None,
    z: jax.typing.ArrayLike | None = None,
    *,
    h0: jax.typing.ArrayLike | None = None,
    mode: str = "associative",
    keep: jax.typing.ArrayLike | None = None,
    gap_delta: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
    remat: bool = False,
    return_state: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Mamba's selective scan (S6) over one batch axis, in float32 whatever the input dtype.

    Per batch element, channel e and state index n::

        h_t = exp((gap_t + delta_t) A) * h_{t-1} + [keep_t] delta_t B_t x_t     (h_{-1} = h0)
        y_t = (<C_t, h_t> + D x_t) * silu(z_t)

    (``gap_t = 0`` and ``keep_t = True`` unless given.) ``delta``, ``exp(delta A)``, the
    state and ``y`` are float32; ``y`` is returned in ``x``'s dtype.

    Token pruning, exact hidden-state alignment (ToP-ViM):

    - ``keep`` (full sequence): a pruned position (``keep_t = False``) stays in the recurrence
      with zero input but its own decay ``exp(delta_t A)``. Its ``x_t`` and ``B_t`` never
      reach the state (they are selected away with ``where`` before any arithmetic, so even
      NaN / inf there leaves the state, the kept outputs and the gradients through the state
      finite); its ``delta_t`` must be valid. Its output ``y_t`` is still computed (from the
      state and its own ``C_t``, ``D x_t``, ``z_t``); the caller drops it.
    - ``gap_delta`` (compact sequence of the kept tokens only): the summed step sizes of the
      pruned positions since the previous kept token (``gap_delta_sum`` computes it from the
      full sequence). Exactly equivalent: with ``gap_delta_t`` = the sum of the pruned
      deltas in the gap before kept token t, the compact scan over the kept tokens gives, at
      every kept position, the state and output of the ``keep``-masked full scan (up to float
      rounding: ``exp(A sum delta)`` instead of the product of the ``exp(A delta)``), because
      a pruned position only multiplies the state by its decay. Pruned positions before the
      first kept token decay ``h0`` in the same way; pruned positions after the last kept
      token are not in the compact form, so its final state is the state at the last kept
      token.

    Shapes (B = batch, L = time, E = channels = d_inner, N = state size):
      x: [B, L, E] the scan input (after Mamba's conv and SiLU).
      delta: [B, L, E] step sizes, already ``softplus(dt_proj(...) + bias)``; positive.
      A: [E, N] the negative real diagonal, ``-exp(A_log)``.
      B, C: [B, L, N] input and output projections of the state.
      D: [E] skip connection, or None.
      z: [B, L, E] gate (``y * silu(z)``), or None.
      h0: [B, E, N] initial state, or None (zeros).
      keep: bool [B, L] or None.
      gap_delta: [B, L, E] (nonnegative) or None.

    Args:
      x, delta, A, B, C, D, z: as above.
      h0: initial state.
      mode: ``"associative"`` (``jax.lax.associative_scan`` over time, log depth) or
        ``"sequential"`` (``jax.lax.scan`` over time: the reference; less memory, L serial
        steps). On CPU the sequential scan is the faster one (``benchmarks/scan.py``: at
        ViM-Tiny's shape 5x faster forward, 3x forward + backward); the associative scan is
        for accelerators, where L serial steps leave the device idle.
      keep: positions whose input enters the state (see above).
      gap_delta: extra decay step per position (see above).
      chunk_size: associative mode only (``sequential`` ignores it): None scans the whole
        sequence at once, which materialises ``[B, L, E, N]`` float32 intermediates; an int T
        runs a ``lax.scan`` over chunks of T steps (L padded with delta 0, which is exact),
        each chunk scanned associatively, so the intermediates are ``[B, T, E, N]``.
      remat: associative mode only: ``jax.checkpoint`` each block (the whole sequence, or
        each chunk), so the backward pass recomputes the ``[B, T, E, N]`` intermediates
        instead of storing them; with ``chunk_size`` the stored residuals are the chunks'
        inputs and one state per chunk. Use it WITH ``chunk_size``: on the whole sequence it
        saves nothing (measured: more scratch memory, not less).
      return_state: also return the final state ``h_L``.

    Returns:
      y [B, L, E] in ``x``'s dtype, or ``(y, h_L)`` with ``h_L`` [B, E, N] float32 when
      ``return_state``.

    Raises:
      ValueError: for an unknown ``mode``, a bad ``chunk_size``, ``x`` not a floating
        [B, L, E] with L >= 1, an argument whose shape does not match (``A`` [E, N],
        ``delta`` / ``z`` / ``gap_delta`` [B, L, E], ``B`` / ``C`` [B, L, N], ``D`` [E],
        ``h0`` [B, E, N]), or ``keep`` not a bool [B, L].

    References: Gu & Dao, "Mamba", 2023 (arXiv:2312.00752), Alg. 2 and Sec. 3.5.2; Zhan et
      al., "Exploring Token Pruning in Vision State Space Models", NeurIPS 2024
      (arXiv:2409.18962), Sec. 4.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax.ops import selective_scan
      >>> x, delta = jnp.ones((1, 4, 2)), jnp.full((1, 4, 2), 0.5)  # [B, L, E]
      >>> A, B, C = -jnp.ones((2, 3)), jnp.ones((1, 4, 3)), jnp.ones((1, 4, 3))  # N = 3
      >>> y = selective_scan(x, delta, A, B, C)
      >>> y.shape, bool(jnp.allclose(y, selective_scan(x, delta, A, B, C, mode="sequential")))
      ((1, 4, 2), True)
    """
    _check(x, delta, A, B, C, D, z, h0, keep, gap_delta, mode, chunk_size)
    remat, return_state = _flag(remat, "remat"), _flag(return_state, "return_state")
    out_dtype = jnp.result_type(x)
    b, _, e = _shape(x)
    n = _shape(A)[1]
    xf = jnp.asarray(x, _F32)
    dt = jnp.asarray(delta, _F32)
    Af = jnp.asarray(A, _F32)
    Bm = jnp.asarray(B, _F32)
    Cm = jnp.asarray(C, _F32)
    decay_dt = dt if gap_delta is None else dt + jnp.asarray(gap_delta, _F32)
    if keep is None:
        u = dt * xf
    else:  # select before multiplying: no 0 * NaN in the values or the gradients
        keep = jnp.asarray(keep)
        u = dt * jnp.where(keep[..., None], xf, 0.0)
        Bm = jnp.where(keep[..., None], Bm, 0.0)
    h = jnp.zeros((b, e, n), _F32) if h0 is None else jnp.asarray(h0, _F32)
    time_major = tuple(jnp.swapaxes(v, 0, 1) for v in (decay_dt, u, Bm, Cm))
    if mode == "sequential":
        h_last, y = _sequential(h, *time_major, Af)
    else:
        h_last, y = _associative(h, *time_major, Af, chunk_size, remat)
    y = jnp.swapaxes(y, 0, 1)
    if D is not None:
        y = y + jnp.asarray(D, _F32) * xf
    if z is not None:
        y = y * jax.nn.silu(jnp.asarray(z, _F32))
    y = y.astype(out_dtype)
    return (y, h_last) if return_state else y


def gap_delta_sum(delta: jax.typing.ArrayLike, keep: jax.typing.ArrayLike) -> jax.Array:
    """For each position, the summed ``delta`` of the pruned positions since the last kept one.

    ``g_t = sum of delta_s over pruned s with p(t) < s < t``, where ``p(t)`` is the last kept
    position before t (or -1). Gathered at the kept positions, this is the ``gap_delta`` of
    ``selective_scan``'s compact form: ``selective_scan(x_k, delta_k, A, B_k, C_k,
    gap_delta=g_k)`` over the kept tokens equals ``selective_scan(x, delta, A, B, C,
    keep=keep)`` at the kept positions. Computed as the segmented sum ``s_t = [not keep_t]
    (s_{t-1} + delta_t)``, ``g_t = s_{t-1}``, with the same associative scan (no cumulative
    sum differences, so no cancellation), in float32.

    Shapes:
      delta: [B, L, E]; keep: bool [B, L]. Returns [B, L, E] float32.

    Args:
      delta: step sizes of the FULL sequence (pruned positions included).
      keep: True at the kept positions.

    Returns:
      ``g`` [B, L, E] float32 (0 right after a kept position and at t = 0).

    Raises:
      ValueError: if ``delta`` is not [B, L, E] or ``keep`` not a bool [B, L].

    References: Zhan et al., "Exploring Token Pruning in Vision State Space Models", NeurIPS
      2024 (arXiv:2409.18962), Sec. 4 (hidden-state alignment).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax.ops import gap_delta_sum
      >>> keep = jnp.array([[True, False, False, True, True]])
      >>> gap_delta_sum(jnp.ones((1, 5, 1)), keep)[0, :, 0].tolist()  # 2 pruned before t = 3
      [0.0, 0.0, 1.0, 2.0, 0.0]
    """
    ds = _shape(delta, "delta", "gap_delta_sum")
    if len(ds) != 3:
        raise ValueError(f"gap_delta_sum: delta must be [B, L, E]; got shape {ds}")
    if _shape(keep, "keep", "gap_delta_sum") != ds[:2] or jnp.result_type(keep) != jnp.bool_:
        raise ValueError(
            f"gap_delta_sum: keep must be a bool mask [B, L] = {ds[:2]} (delta: {ds}); got "
            f"shape {_shape(keep)} dtype {jnp.result_type(keep)}"
        )
    dt = jnp.asarray(delta, _F32)
    pruned = ~jnp.asarray(keep)[..., None]
    a = jnp.broadcast_to(pruned, ds).astype(_F32)  # reset (0) at kept positions
    s = jax.lax.associative_scan(_combine, (a, jnp.where(pruned, dt, 0.0)), axis=1)[1]
    return jnp.pad(s[:, :-1], ((0, 0), (1, 0), (0, 0)))
