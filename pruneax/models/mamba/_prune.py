"""ToP-ViM's three token-pruning modes as one function of a Mamba mixer and its kept tokens.

``pruned_mixer_forward(mixer, x, positions, length=L, mode=...)`` runs any ``SSMMixer``
(``MambaMixer``, Vim's ``BiMambaMixer``, a user's own) on the KEPT tokens ``x`` [B, T, D] of a
sequence of ``L`` tokens, ``positions`` [B, T] being their original positions. Per branch, in
its scan order, with ``x`` the in_proj half that the conv reads and ``h`` the SSM state:

- ``"naive"``: the ``T`` tokens as a contiguous sequence (``positions`` ignored): the conv reads
  kept neighbours as adjacent and ``h_j = exp(delta_j A) h_{j-1} + delta_j B_j x_j`` over the kept
  tokens only, so the state misses the decay of the pruned positions (ToP-ViM's failure case).
- ``"aligned_exact"`` (the reference; computes over all ``L`` positions, saves nothing): the
  kept tokens are scattered into ``L`` slots; a pruned slot is EMPTY: its in_proj x is zero
  before the conv (no kept token reads it), its conv output (kept neighbours in the window and
  the bias) gives it a step size, and the scan keeps it with zero input and that decay::

      h_t = exp(delta_t A) h_{t-1} + [t kept] delta_t B_t x_t         (t = 0 .. L - 1)

  The outputs are gathered at the kept positions.
- ``"aligned_gap"`` (ToP-ViM's hidden-state alignment; compute on the kept tokens only): the
  conv is position aware (a tap on a pruned position reads zero: exactly the ``aligned_exact``
  conv) and each kept token absorbs the decay of the ``m_j = pos_j - pos_{j-1} - 1`` pruned
  positions before it: ``h_j = exp((g_j + delta_j) A) h_{j-1} + delta_j B_j x_j``. The pruned
  deltas are not computed, so ``g_j`` is an estimate (``gap_rule``): ``"own"`` ``g_j = m_j
  delta_j``, ``"prev"`` ``g_j = m_j delta_{j-1}`` (the previous kept token in scan order), or
  ``"true"`` (tests and ablations: it computes the pruned deltas of ``aligned_exact`` on the
  full length and sums them with ``gap_delta_sum``, and then equals ``aligned_exact`` at the kept
  positions up to float rounding). A reverse branch mirrors positions and gaps.

Why a function of the kept tokens and their positions rather than of a full sequence and a
mask: the aligned modes are defined by WHERE the kept tokens sit, ``naive`` and ``aligned_gap``
never touch a pruned token, and a model that prunes carries only its kept tokens; the three
modes then share one signature and one output shape, and a pruned token's value cannot reach a
kept output in any mode (it is not an argument). A user with a full ``x`` and kept indices
``idx`` calls it with ``take_along_axis(x, idx[..., None], 1)`` and ``idx``.

References: Zhan et al., "Exploring Token Pruning in Vision State Space Models" (ToP-ViM),
NeurIPS 2024 (arXiv:2409.18962), Sec. 4; Gu & Dao, "Mamba", 2023 (arXiv:2312.00752).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pruneax.models.mamba._ssm import (
    GAP_RULES,
    MixerOutput,
    SSMMixer,
    check_positions,
    mixer_forward,
)

PRUNE_MODES = ("naive", "aligned_exact", "aligned_gap")


def pruned_mixer_forward(
    mixer: SSMMixer,
    x: jax.Array,
    positions: jax.Array | None = None,
    *,
    length: int | None = None,
    mode: str = "aligned_gap",
    gap_rule: str | None = None,
    scan_mode: str | None = None,
) -> MixerOutput:
    """Runs ``mixer`` on the kept tokens ``x`` at ``positions`` in one of ``PRUNE_MODES``.

    The modes are defined in this module's docstring. Every mode returns outputs for the ``T``
    kept tokens only; keeping every token (``positions = arange(L)``) gives the dense mixer in
    every mode.

    Shapes:
      x: [B, T, D]; positions: [B, T] int. Returns ``MixerOutput`` with ``out`` [B, T, D],
      ``y`` [B, T, E] and one ``delta`` [B, T, E] per branch (for ``aligned_exact`` the step
      sizes at the kept positions; ``mixer_forward(mixer, full, keep=mask)`` gives all ``L``).

    Args:
      mixer: an ``SSMMixer`` (``MambaMixer``, ``BiMambaMixer`` or one of the user's).
      x: the kept tokens, in their original order, floating.
      positions: their original positions, strictly increasing, in ``[0, length)``; required
        by the aligned modes, ignored (may be None) by ``"naive"``.
      length: the full sequence length L (aligned modes).
      mode: ``"naive"``, ``"aligned_exact"`` or ``"aligned_gap"``.
      gap_rule: ``"aligned_gap"`` only: ``"own"`` (default), ``"prev"`` or ``"true"``.
      scan_mode: ``selective_scan``'s mode; None uses ``mixer.config.scan_mode``.

    Returns:
      A ``MixerOutput``.

    Raises:
      ValueError: for an unknown ``mode`` or ``gap_rule``, a ``gap_rule`` with another mode,
        missing or bad ``positions`` / ``length`` in an aligned mode, or as ``mixer_forward``
        (``mixer``, ``x``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models.mamba import MambaConfig, MambaMixer
      >>> mixer = MambaMixer(MambaConfig(hidden_size=8, num_layers=1), rngs=nnx.Rngs(0))
      >>> x = jnp.ones((1, 6, 8))
      >>> idx = jnp.array([[0, 2, 3, 5]])  # keep 4 of 6 tokens
      >>> kept = jnp.take_along_axis(x, idx[..., None], axis=1)
      >>> r = pruned_mixer_forward(mixer, kept, idx, length=6, mode="aligned_gap")
      >>> r.out.shape
      (1, 4, 8)
    """
    if mode not in PRUNE_MODES:
        raise ValueError(
            f"pruned_mixer_forward: mode must be one of {list(PRUNE_MODES)}; got {mode!r}"
        )
    if gap_rule is not None and mode != "aligned_gap":
        raise ValueError(
            f"pruned_mixer_forward: gap_rule applies to mode='aligned_gap' only; got "
            f"gap_rule={gap_rule!r} with mode={mode!r}"
        )
    if gap_rule is not None and gap_rule not in GAP_RULES:
        raise ValueError(
            f"pruned_mixer_forward: gap_rule must be one of {list(GAP_RULES)}; got {gap_rule!r}"
        )
    if mode == "naive":
        return mixer_forward(mixer, x, scan_mode=scan_mode)
    if positions is None:
        raise ValueError(
            f"pruned_mixer_forward: positions are required by mode={mode!r} (an int array [B, T])"
        )
    if mode == "aligned_gap":
        return mixer_forward(
            mixer,
            x,
            positions=positions,
            length=length,
            gap_rule=gap_rule or "own",
            scan_mode=scan_mode,
        )
    # aligned_exact: scatter into L slots, run with the keep mask, gather the kept rows.
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(
            f"pruned_mixer_forward: x must be [B, T, D]; got shape {tuple(jnp.shape(x))}"
        )
    check_positions("pruned_mixer_forward", positions, tuple(x.shape[:2]), length)
    rows = jnp.arange(x.shape[0])[:, None]
    full = jnp.zeros((x.shape[0], length, x.shape[2]), x.dtype).at[rows, positions].set(x)
    keep = jnp.zeros((x.shape[0], length), bool).at[rows, positions].set(True)
    r = mixer_forward(mixer, full, keep=keep, scan_mode=scan_mode)

    def take(v: jax.Array) -> jax.Array:
        return jnp.take_along_axis(v, positions[..., None], axis=1)

    return MixerOutput(out=take(r.out), y=take(r.y), delta=tuple(take(d) for d in r.delta))
