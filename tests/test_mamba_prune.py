"""ToP-ViM token pruning as a public function of any Mamba mixer (``pruned_mixer_forward``):
the three modes on a random ``MambaMixer`` against a float64 NumPy transcription of their
definitions, pruned tokens never reaching kept outputs, keep-all == dense, the same function
inside Vim, and argument errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import (
    MambaConfig,
    MambaMixer,
    MixerOutput,
    SSMMixer,
    mixer_forward,
    pruned_mixer_forward,
)
from pruneax.models.vim import BiMambaMixer, Vim, VimConfig, VimPruningPlan
from pruneax.weights import leaf_names

CFG = MambaConfig(
    hidden_size=16,
    num_layers=1,
    vocab_size=1,
    state_size=4,
    conv_kernel=4,
    use_bias=True,
    scan_mode="sequential",
)
B, L, T = 2, 13, 7
TOL = dict(atol=1e-5, rtol=1e-5)


def perturb(module, seed=0, std=0.3):
    """Weights far from the init; dt biases +1 so that steps are large and gaps matter."""
    graphdef, state = nnx.split(module)
    rng = np.random.default_rng(seed)
    new = []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        a = np.asarray(leaf)
        v = a + std * rng.normal(size=a.shape)
        if "dt_proj" in name and name.endswith("bias"):
            v = a + 1.0 + rng.normal(size=a.shape)
        if name.endswith("norm/scale") or name.endswith("norm_f/scale"):
            v = 1.0 + std * rng.normal(size=a.shape)
        new.append(jnp.asarray(v.astype(a.dtype)))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), new))


@pytest.fixture(scope="module")
def mixer():
    return perturb(MambaMixer(CFG, rngs=nnx.Rngs(0)))


def inputs(t=L, seed=1):
    return jnp.asarray(
        np.random.default_rng(seed).normal(size=(B, t, CFG.hidden_size)), jnp.float32
    )


def kept_positions(seed=2, t=T, length=L):
    rng = np.random.default_rng(seed)
    first = 1 + np.sort(rng.choice(length - 1, t, replace=False))  # a leading pruned run
    rest = [np.sort(rng.choice(length, t, replace=False)) for _ in range(B - 1)]
    return np.stack([first, *rest]).astype(np.int32)


def take(v, pos):
    return jnp.take_along_axis(v, jnp.asarray(pos)[..., None], axis=1)


# --------------------------------------------------- float64 NumPy transcription of the modes


def np_silu(v):
    return v / (1.0 + np.exp(-v))


def np_params(module):
    state = nnx.state(module, nnx.Param)
    return {
        n: np.asarray(v, np.float64)
        for n, v in zip(leaf_names(state), jax.tree.leaves(state), strict=True)
    }


def np_features(p, xin):
    """Conv (zero padded, causal) -> SiLU -> x_proj -> (xs, delta, B, C) for [L, E] ``xin``."""
    k = p["conv1d/kernel"]  # [K, 1, E]
    kk = k.shape[0]
    conv = np.zeros_like(xin) + p["conv1d/bias"]
    for t in range(xin.shape[0]):
        for j in range(kk):
            if t - j >= 0:
                conv[t] += k[kk - 1 - j, 0] * xin[t - j]
    xs = np_silu(conv)
    dbc = xs @ p["x_proj/kernel"]
    r, n = CFG.time_step_rank, CFG.state_size
    delta = np.logaddexp(0.0, dbc[:, :r] @ p["dt_proj/kernel"] + p["dt_proj/bias"])
    return xs, delta, dbc[:, r : r + n], dbc[:, r + n :]


def np_scan(p, xs, delta, bm, cm, z, gap, enters):
    a = -np.exp(p["A_log"])
    h = np.zeros_like(a)
    y = np.zeros_like(xs)
    for t in range(xs.shape[0]):
        h = np.exp((gap[t] + delta[t])[:, None] * a) * h
        if enters[t]:
            h = h + (delta[t] * xs[t])[:, None] * bm[t][None, :]
        y[t] = (h @ cm[t] + p["D"] * xs[t]) * np_silu(z[t])
    return y


def np_pruned(p, x_kept, pos, mode, rule="own"):
    """One example: the kept tokens [T, D] at positions ``pos`` in a sequence of L.

    aligned_exact: L time steps; a pruned step is an empty slot: zero conv input, zero scan
    input, its own delta (from the conv of its kept neighbours and the bias). aligned_gap: the
    T kept steps; each conv tap reads the token at position pos_t - j or zero; the decay of
    kept token j is exp((g_j + delta_j) A) with g_j from the rule. naive: T adjacent steps.
    """
    e = CFG.d_inner
    xz = x_kept @ p["in_proj/kernel"] + p["in_proj/bias"]
    xin, z = xz[:, :e], xz[:, e:]
    if mode == "naive":
        xs, delta, bm, cm = np_features(p, xin)
        y = np_scan(p, xs, delta, bm, cm, z, np.zeros_like(xs), np.ones(len(xs), bool))
    else:
        full = np.zeros((L, e))
        full[pos] = xin
        xs, delta, bm, cm = np_features(p, full)  # the conv sees zeros at pruned positions
        if mode == "aligned_exact":
            z_full = np.zeros((L, e))
            z_full[pos] = z
            enters = np.isin(np.arange(L), pos)
            y = np_scan(p, xs, delta, bm, cm, z_full, np.zeros_like(xs), enters)[pos]
            delta = delta[pos]
        else:
            gap, prev = np.zeros((len(pos), e)), -1
            for j, q in enumerate(pos):
                m = q - prev - 1
                if rule == "own":
                    gap[j] = m * delta[q]
                elif rule == "prev":
                    gap[j] = m * delta[pos[max(j - 1, 0)]]
                else:
                    gap[j] = delta[prev + 1 : q].sum(0)
                prev = q
            xs, delta, bm, cm = xs[pos], delta[pos], bm[pos], cm[pos]
            y = np_scan(p, xs, delta, bm, cm, z, gap, np.ones(len(pos), bool))
    return y @ p["out_proj/kernel"] + p["out_proj/bias"], y, delta


CASES = [("naive", None), ("aligned_exact", None)] + [
    ("aligned_gap", r) for r in ("own", "prev", "true")
]


@pytest.mark.parametrize("mode, rule", CASES)
def test_modes_match_numpy_definitions(mixer, mode, rule):
    pos = kept_positions()
    xk = take(inputs(), pos)
    r = pruned_mixer_forward(mixer, xk, jnp.asarray(pos), length=L, mode=mode, gap_rule=rule)
    assert isinstance(r, MixerOutput) and r.out.shape == (B, T, CFG.hidden_size)
    p = np_params(mixer)
    for b in range(B):
        out, y, delta = np_pruned(p, np.asarray(xk[b], np.float64), pos[b], mode, rule or "own")
        np.testing.assert_allclose(r.out[b], out, **TOL)
        np.testing.assert_allclose(r.y[b], y, **TOL)
        np.testing.assert_allclose(r.delta[0][b], delta, **TOL)


def test_true_gaps_equal_aligned_exact_and_estimates_do_not(mixer):
    pos = jnp.asarray(kept_positions(3))
    xk = take(inputs(seed=4), pos)
    exact = pruned_mixer_forward(mixer, xk, pos, length=L, mode="aligned_exact")
    true = pruned_mixer_forward(mixer, xk, pos, length=L, mode="aligned_gap", gap_rule="true")
    np.testing.assert_allclose(true.out, exact.out, **TOL)
    for mode, rule in (("aligned_gap", "own"), ("naive", None)):
        other = pruned_mixer_forward(mixer, xk, pos, length=L, mode=mode, gap_rule=rule)
        assert np.abs(np.asarray(other.y - exact.y)).max() > 1e-3


# ------------------------------------------------------------------- pruned tokens are gone


def test_mixer_keep_mask_does_not_read_pruned_tokens(mixer):
    """MambaMixer(keep=...): the conv must not read a pruned token (it used to: 6.6e4)."""
    keep = np.zeros((B, L), bool)
    pos = kept_positions(5)
    keep[np.arange(B)[:, None], pos] = True
    x = inputs(seed=6)
    noise = 1e3 * np.random.default_rng(7).normal(size=x.shape) * ~keep[..., None]
    a, ya = mixer(x, keep=jnp.asarray(keep), return_y=True)
    b, yb = mixer(x + noise.astype(np.float32), keep=jnp.asarray(keep), return_y=True)
    np.testing.assert_array_equal(np.asarray(a)[keep], np.asarray(b)[keep])
    np.testing.assert_array_equal(np.asarray(ya)[keep], np.asarray(yb)[keep])
    assert np.all(np.asarray(a)[~keep] == 0) and np.all(np.asarray(ya)[~keep] == 0)
    # ... and it is pruned_mixer_forward's aligned_exact on the kept tokens
    r = pruned_mixer_forward(mixer, take(x, pos), jnp.asarray(pos), length=L, mode="aligned_exact")
    np.testing.assert_allclose(r.out, take(a, pos), **TOL)


@pytest.mark.parametrize("mode, rule", CASES)
def test_pruned_inputs_do_not_move_kept_outputs(mixer, mode, rule):
    pos = kept_positions(8)
    x = inputs(seed=9)
    noise = 1e3 * np.random.default_rng(10).normal(size=x.shape).astype(np.float32)
    keep = np.zeros((B, L), bool)
    keep[np.arange(B)[:, None], pos] = True
    x2 = x + noise * ~keep[..., None]
    p = jnp.asarray(pos)
    a = pruned_mixer_forward(mixer, take(x, pos), p, length=L, mode=mode, gap_rule=rule)
    b = pruned_mixer_forward(mixer, take(x2, pos), p, length=L, mode=mode, gap_rule=rule)
    np.testing.assert_array_equal(a.out, b.out)
    # a kept token's value does move them (the test can fail)
    x3 = x.at[:, :].add(jnp.asarray(keep[..., None] * 1.0, jnp.float32))
    c = pruned_mixer_forward(mixer, take(x3, pos), p, length=L, mode=mode, gap_rule=rule)
    assert np.abs(np.asarray(c.out - a.out)).max() > 1e-3


# ------------------------------------------------------------------------ keep all == dense


@pytest.mark.parametrize("mode, rule", CASES)
def test_keeping_every_token_is_the_dense_mixer(mixer, mode, rule):
    x = inputs(seed=11)
    dense = mixer_forward(mixer, x)
    np.testing.assert_allclose(dense.out, mixer(x), atol=1e-6)
    pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    r = pruned_mixer_forward(mixer, x, pos, length=L, mode=mode, gap_rule=rule)
    np.testing.assert_allclose(r.out, dense.out, atol=1e-5)
    np.testing.assert_allclose(r.y, dense.y, atol=1e-5)
    np.testing.assert_allclose(r.delta[0], dense.delta[0], atol=1e-5)


def test_jit_with_traced_positions(mixer):
    graphdef, state = nnx.split(mixer)
    pos = jnp.asarray(kept_positions(12))
    xk = take(inputs(seed=13), pos)

    @jax.jit
    def f(s, x, p):
        return pruned_mixer_forward(nnx.merge(graphdef, s), x, p, length=L).out

    want = pruned_mixer_forward(mixer, xk, pos, length=L).out
    np.testing.assert_allclose(f(state, xk, pos), want, **TOL)


# --------------------------------------------------------------------------------- on Vim

VCFG = VimConfig(
    image_size=8,
    patch_size=2,
    num_channels=1,
    dim=16,
    depth=3,
    d_state=4,
    num_classes=3,
    scan_mode="sequential",
)
VL = VCFG.num_tokens


def test_bidirectional_mixer_is_an_ssm_mixer_and_agrees_with_its_call():
    bi = perturb(BiMambaMixer(VCFG, rngs=nnx.Rngs(1)), seed=1)
    assert isinstance(bi, SSMMixer) and [b.reverse for b in bi.branches()] == [False, True]
    rng = np.random.default_rng(14)
    pos = np.stack([np.sort(rng.choice(VL, 9, replace=False)) for _ in range(B)]).astype(np.int32)
    p = jnp.asarray(pos)
    x = jnp.asarray(rng.normal(size=(B, VL, VCFG.dim)), jnp.float32)
    keep = jnp.zeros((B, VL), bool).at[jnp.arange(B)[:, None], p].set(True)
    exact = pruned_mixer_forward(bi, take(x, pos), p, length=VL, mode="aligned_exact")
    np.testing.assert_allclose(exact.out, take(bi(x, keep=keep), pos), **TOL)
    gap = pruned_mixer_forward(bi, take(x, pos), p, length=VL, mode="aligned_gap", gap_rule="prev")
    np.testing.assert_allclose(gap.out, bi(take(x, pos), positions=p, length=VL, gap_rule="prev"),
                               **TOL)  # fmt: skip
    assert len(gap.delta) == 2 and gap.delta[1].shape == (B, 9, VCFG.d_inner)


def test_vim_block_mode_and_mixer_options_agree():
    vim = perturb(Vim(VCFG, rngs=nnx.Rngs(2)), seed=2)
    block = vim.layers[1]
    rng = np.random.default_rng(16)
    pos = jnp.asarray(np.stack([np.sort(rng.choice(VL, 6, replace=False)) for _ in range(B)]))
    x = jnp.asarray(rng.normal(size=(B, 6, VCFG.dim)), jnp.float32)
    a, ya = block(x, mode="aligned_gap", positions=pos, length=VL, gap_rule="prev")
    b, yb = block(x, positions=pos, length=VL, gap_rule="prev")
    np.testing.assert_allclose(a, b, **TOL)
    np.testing.assert_allclose(ya, yb, **TOL)


@pytest.mark.parametrize("mode", ["naive", "aligned_exact", "aligned_gap"])
def test_public_function_reproduces_vims_pruned_forward(mode):
    vim = perturb(Vim(VCFG, rngs=nnx.Rngs(0)))
    images = jnp.asarray(np.random.default_rng(15).normal(size=(B, 8, 8, 1)), jnp.float32)
    out = vim(images, plan=VimPruningPlan.at(1, 0.5, mode))
    pos = out.positions
    x = vim.embed(images)
    x = x + vim.layers[0].mixer(vim.layers[0].norm(x))
    x = take(x, pos)
    for block in vim.layers[1:]:
        p = None if mode == "naive" else pos
        x = x + pruned_mixer_forward(block.mixer, block.norm(x), p, length=VL, mode=mode).out
    hidden = vim.norm_f(x)
    cls = jnp.argmax(pos == VCFG.cls_position, axis=1)
    logits = vim.head(hidden[jnp.arange(B), cls])
    np.testing.assert_allclose(out.logits, logits, **TOL)
    np.testing.assert_allclose(out.hidden, hidden, **TOL)


# ---------------------------------------------------------------------------------- errors


def test_errors(mixer):
    x = inputs(5)
    pos = jnp.asarray([[0, 2, 3, 5, 8]] * B, jnp.int32)
    cases = [
        (dict(mode="dense"), "mode must be one of"),
        (dict(mode="naive", gap_rule="own"), "gap_rule applies to mode='aligned_gap'"),
        (dict(gap_rule="next"), "gap_rule must be one of"),
        (dict(positions=None), "positions are required"),
        (dict(positions=pos.astype(jnp.float32)), "positions must be an int array"),
        (dict(positions=pos[:, :4]), r"positions must be an int array \[B, T\]"),
        (dict(length=4), "full length"),
        (dict(length=8), r"strictly increase .* lie in \[0, 8\)"),
        (dict(positions=pos[:, ::-1]), "strictly increase"),
        (dict(mode="aligned_exact", positions=pos.at[0, 1].set(0)), "strictly increase"),
        (dict(mode="aligned_exact", length=None), "full length"),
    ]
    for kw, match in cases:
        kw = {"positions": pos, "length": 9, **kw}
        with pytest.raises(ValueError, match=match):
            pruned_mixer_forward(mixer, x, kw.pop("positions"), **kw)
    with pytest.raises(ValueError, match="mixer must be an SSMMixer"):
        pruned_mixer_forward(mixer.in_proj, x, pos, length=9)
    with pytest.raises(ValueError, match="x must be"):
        pruned_mixer_forward(mixer, x[..., :3], pos, length=9)
    with pytest.raises(ValueError, match="not both"):
        mixer(x, keep=jnp.ones((B, 5), bool), positions=pos, length=9)
    with pytest.raises(ValueError, match="gap_delta or positions"):
        mixer(x, gap_delta=jnp.zeros((B, 5, CFG.d_inner)), positions=pos, length=9)
    bi = BiMambaMixer(VCFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="forward branches only"):
        mixer_forward(bi, jnp.zeros((B, 5, VCFG.dim)), gap_delta=jnp.zeros((B, 5, VCFG.d_inner)))
