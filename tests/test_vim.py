"""Vision Mamba (hustvl/Vim v2) and ToP-ViM token pruning: the bidirectional mixer against the
unidirectional ``MambaMixer`` and a float64 NumPy transcription, the three pruning modes against
an independent NumPy model, the aligned_gap == aligned_exact equivalence with the true gap
deltas, importance metrics, kept ids, jit / no retrace, FLOPs and argument errors.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import MambaMixer, param_count
from pruneax.models.vim import (
    TOPVIM_LAYERS,
    VIM_VARIANTS,
    BiMambaMixer,
    Vim,
    VimConfig,
    VimPruneStage,
    VimPruningPlan,
    causal_conv,
    vim_config,
    vim_flops,
    vim_token_scores,
)
from pruneax.weights import leaf_names

# 8x8 grayscale images, 2x2 patches: N = 16 patches, L = 17 tokens, class token at 8.
CFG = VimConfig(
    image_size=8,
    patch_size=2,
    num_channels=1,
    dim=16,
    depth=3,
    d_state=4,
    num_classes=3,
    scan_mode="sequential",
)
N, L, C = CFG.num_patches, CFG.num_tokens, CFG.cls_position
B = 2
TOL = dict(atol=1e-5, rtol=1e-5)


def perturb(model, seed: int = 0, std: float = 0.3):
    """Random weights far from the init: step sizes ~softplus(1 +- 1), so gaps matter."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    new = []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        a = np.asarray(leaf)
        noise = std * rng.normal(size=a.shape)
        if name.endswith("norm/scale") or name.endswith("norm_f/scale"):
            v = 1.0 + noise
        elif "dt_proj" in name and name.endswith("bias"):
            v = a + 1.0 + rng.normal(size=a.shape)
        else:
            v = a + noise
        new.append(jnp.asarray(v.astype(a.dtype)))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), new))


@pytest.fixture(scope="module")
def model():
    return perturb(Vim(CFG, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(1).normal(size=(B, 8, 8, 1)), jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "plan"))
def _run(graphdef, state, x, plan, key):
    return nnx.merge(graphdef, state)(
        x, plan=plan, key=key, return_ys=True, return_hidden_states=True
    )


def run(model, x, plan=None, key=None):
    graphdef, state = nnx.split(model)
    return _run(graphdef, state, x, plan, key)


# ------------------------------------------------------------------ float64 NumPy transcription


def np_silu(v):
    return v / (1.0 + np.exp(-v))


def np_softplus(v):
    return np.logaddexp(0.0, v)


def np_params(model) -> dict:
    """Every parameter as a float64 NumPy array, keyed by its leaf name."""
    state = nnx.state(model, nnx.Param)
    return {
        n: np.asarray(v, np.float64)
        for n, v in zip(leaf_names(state), jax.tree.leaves(state), strict=True)
    }


def np_conv(v, kernel, bias):
    """Causal depthwise conv: v [L, E], kernel [K, 1, E]."""
    k = kernel.shape[0]
    out = np.zeros_like(v) + bias
    for t in range(v.shape[0]):
        for j in range(k):
            if t - j >= 0:
                out[t] += kernel[k - 1 - j, 0] * v[t - j]
    return out


def np_direction(p, pre, suffix, xin, z, keep=None, pos=None, length=None, rule=None):
    """One direction of the mixer for ONE example, in its scan order.

    keep: full-length mask (aligned_exact); pos / length / rule: compact tokens at positions.
    """
    w = lambda name: p[f"{pre}/{name}"]
    r, s = w(f"x_proj{suffix}/kernel").shape[1] - 2 * CFG.d_state, CFG.d_state

    def feats(v):
        xs = np_silu(np_conv(v, w(f"conv1d{suffix}/kernel"), w(f"conv1d{suffix}/bias")))
        dbc = xs @ w(f"x_proj{suffix}/kernel")
        dt, bm, cm = dbc[:, :r], dbc[:, r : r + s], dbc[:, r + s :]
        delta = np_softplus(dt @ w(f"dt_proj{suffix}/kernel") + w(f"dt_proj{suffix}/bias"))
        return xs, delta, bm, cm

    if keep is not None:
        xin = xin * keep[:, None]
    gap = np.zeros_like(xin)
    if pos is None:
        xs, delta, bm, cm = feats(xin)
    else:  # the full-length computation with zeros at the missing positions, then gathered
        full = np.zeros((length, xin.shape[1]))
        full[pos] = xin
        xs_f, delta_f, bm_f, cm_f = feats(full)
        xs, delta, bm, cm = xs_f[pos], delta_f[pos], bm_f[pos], cm_f[pos]
        prev = -1
        for j, q in enumerate(pos):
            m = q - prev - 1
            if rule == "own":
                gap[j] = m * delta[j]
            elif rule == "prev":
                gap[j] = m * delta[max(j - 1, 0)]
            else:  # true
                gap[j] = delta_f[prev + 1 : q].sum(axis=0)
            prev = q
    a = -np.exp(w(f"A{'_b' if suffix else ''}_log"))
    d_skip = w("D_b" if suffix else "D")
    h = np.zeros_like(a)
    y = np.zeros_like(xin)
    for t in range(xin.shape[0]):
        h = np.exp((gap[t] + delta[t])[:, None] * a) * h
        if keep is None or keep[t]:
            h = h + (delta[t] * xs[t])[:, None] * bm[t][None, :]
        y[t] = (h @ cm[t] + d_skip * xs[t]) * np_silu(z[t])
    return y


def np_mixer(p, pre, x, keep=None, pos=None, length=None, rule=None):
    """(out, y) of a BiMambaMixer for ONE example x [T, D] (hustvl's v2 with if_devide_out)."""
    e = CFG.d_inner
    xz = x @ p[f"{pre}/in_proj/kernel"]
    xin, z = xz[:, :e], xz[:, e:]
    y_f = np_direction(p, pre, "", xin, z, keep, pos, length, rule)
    keep_b = None if keep is None else keep[::-1]
    pos_b = None if pos is None else (length - 1) - pos[::-1]
    y_b = np_direction(p, pre, "_b", xin[::-1], z[::-1], keep_b, pos_b, length, rule)
    y = (y_f + y_b[::-1]) / 2
    if keep is not None:
        y = y * keep[:, None]
    return y @ p[f"{pre}/out_proj/kernel"], y


def np_rmsnorm(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + CFG.norm_eps) * scale


def np_scores(y, metric):
    if metric == "clipped":
        return np.maximum(y, 0).sum(-1)
    if metric == "unclipped":
        return y.sum(-1)
    if metric == "l1":
        return np.abs(y).sum(-1)
    return np.sqrt((y * y).sum(-1))


def np_vim(p, image, plan: VimPruningPlan | None):
    """Independent forward of ONE image: (logits, final positions, kept ids per stage)."""
    ps = CFG.patch_size
    g = CFG.grid
    patches = image.reshape(g[0], ps, g[1], ps, -1).transpose(0, 2, 1, 3, 4).reshape(N, -1)
    emb = patches @ p["patch_embed/kernel"].reshape(-1, CFG.dim) + p["patch_embed/bias"]
    x = np.concatenate([emb[:C], p["cls_token"][0], emb[C:]]) + p["pos_embed"][0]
    pos = np.arange(L)
    mode, rule, y, kept = None, None, None, []
    for i in range(CFG.depth):
        stage = plan.stage_at(i) if plan is not None else None
        if stage is not None:
            mode, rule = stage.mode, stage.gap_rule
            patch_rows = [j for j in range(len(pos)) if pos[j] != C]
            s = np_scores(y, stage.metric)[patch_rows]
            k = stage.kept(len(patch_rows))
            chosen = np.sort(np.asarray(patch_rows)[np.argsort(-s, kind="stable")[:k]])
            new_pos = np.sort(np.append(pos[chosen], C))
            kept.append(np.asarray([q - (q > C) for q in new_pos if q != C]))
            if stage.cls_position == "middle":
                pp = [q for q in new_pos if q != C]
                new_pos = np.asarray([*pp[: k // 2], C, *pp[k // 2 :]])
            rows = [int(np.flatnonzero(pos == q)[0]) for q in new_pos]
            if mode != "aligned_exact":
                x = x[rows]
            pos = new_pos
        pre = f"layers/{i}/mixer"
        h = np_rmsnorm(x, p[f"layers/{i}/norm/scale"])
        if mode in (None, "naive"):
            out, y = np_mixer(p, pre, h)
            x = x + out
        elif mode == "aligned_gap":
            out, y = np_mixer(p, pre, h, pos=pos, length=L, rule=rule)
            x = x + out
        else:
            keep = np.isin(np.arange(L), pos)
            out, y_full = np_mixer(p, pre, h, keep=keep)
            x = x + out * keep[:, None]
            y = y_full[pos]
    if mode == "aligned_exact":
        x = x[pos]
    hidden = np_rmsnorm(x, p["norm_f/scale"])
    cls = hidden[int(np.flatnonzero(pos == C)[0])]
    return cls @ p["head/kernel"] + p["head/bias"], pos, kept


# ----------------------------------------------------------------------------- configuration


def test_variants_and_parameter_counts():
    ti = vim_config("Ti")
    assert (ti.dim, ti.depth, ti.d_state, ti.d_inner, ti.dt_rank) == (192, 24, 16, 384, 12)
    assert (ti.num_patches, ti.num_tokens, ti.cls_position) == (196, 197, 98)
    assert vim_config("S").dim == 384 and vim_config("S").dt_rank == 24
    mnist, cifar = vim_config("mnist/4"), vim_config("cifar/4")
    assert (mnist.num_patches, mnist.cls_position, mnist.num_classes) == (49, 24, 10)
    assert (cifar.num_patches, cifar.cls_position, cifar.dim, cifar.depth) == (64, 32, 192, 12)
    # hustvl reports 7M (Vim-Ti) and 26M (Vim-S) parameters.
    counts = {}
    for name in VIM_VARIANTS:
        abstract = nnx.eval_shape(lambda n=name: Vim(vim_config(n), rngs=nnx.Rngs(0)))
        counts[name] = param_count(abstract)
    assert 6.9e6 < counts["Ti"] < 7.3e6 and 25.5e6 < counts["S"] < 26.5e6
    assert vim_config("mnist/4", scan_mode="sequential").scan_mode == "sequential"


@pytest.mark.parametrize("name", list(VIM_VARIANTS))
def test_output_shapes_of_the_big_variants(name):
    cfg = vim_config(name)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Vim(cfg, rngs=nnx.Rngs(0))))
    x = jax.ShapeDtypeStruct((2, *cfg.image_hw, cfg.num_channels), jnp.float32)
    plan = VimPruningPlan.top_vim("aligned_gap") if cfg.depth > 15 else None
    out = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s)(v, plan=plan), state, x)
    assert out.logits.shape == (2, cfg.num_classes)
    counts = plan.token_counts(cfg.num_patches) if plan else ()
    t = (counts[-1] if counts else cfg.num_patches) + 1
    assert out.hidden.shape == (2, t, cfg.dim) and out.positions.shape == (2, t)
    assert [k.shape for k in out.kept] == [(2, c) for c in counts]


@pytest.mark.slow
def test_mnist_variant_runs():
    cfg = vim_config("mnist/4", scan_mode="sequential")
    m = Vim(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
    out = run(m, x, VimPruningPlan.at((2, 4, 6), 0.8, "aligned_gap"))
    assert out.logits.shape == (2, 10) and np.all(np.isfinite(out.logits))
    assert [k.shape[1] for k in out.kept] == [40, 32, 26]
    assert [y.shape[1] for y in out.ys] == [50, 50, 41, 41, 33, 33, 27, 27]


def test_class_token_sits_in_the_middle(model, images):
    x = np.asarray(model.embed(images))
    p = np_params(model)
    assert x.shape == (B, L, CFG.dim)
    np.testing.assert_allclose(x[:, C], np.broadcast_to(p["cls_token"][0, 0] + p["pos_embed"][0, C],
                                                          (B, CFG.dim)), **TOL)  # fmt: skip
    patches = np.asarray(model.patch_embed(images)).reshape(B, N, CFG.dim)
    np.testing.assert_allclose(x[:, :C], patches[:, :C] + p["pos_embed"][0, :C], **TOL)
    np.testing.assert_allclose(x[:, C + 1 :], patches[:, C:] + p["pos_embed"][0, C + 1 :], **TOL)
    out = run(model, images)
    np.testing.assert_array_equal(out.positions, np.broadcast_to(np.arange(L), (B, L)))
    np.testing.assert_allclose(out.pooled, out.hidden[:, C], **TOL)


def test_mean_pool_averages_the_final_tokens(images):
    m = perturb(Vim(dataclasses.replace(CFG, final_pool="mean"), rngs=nnx.Rngs(0)))
    out = run(m, images, VimPruningPlan.at(1, 0.5, "aligned_exact"))
    np.testing.assert_allclose(out.pooled, np.asarray(out.hidden).mean(1), **TOL)
    assert out.hidden.shape == (B, 9, CFG.dim)


# ------------------------------------------------------------------------------------ mixer


def _mixer_input(t=L, seed=2):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, t, CFG.dim)), jnp.float32)


@pytest.mark.parametrize("scan_mode", ["associative", "sequential"])
def test_mixer_equals_two_unidirectional_mamba_mixers(scan_mode):
    """y = (y_f + flip(y_b)) / 2 from MambaMixer on x and on flip(x), with the v2 weights."""
    cfg = VimConfig(**{**CFG.__dict__, "scan_mode": scan_mode})
    bi = perturb(BiMambaMixer(cfg, rngs=nnx.Rngs(3)), seed=3)
    x = _mixer_input()
    out, y = bi(x, return_y=True)
    ys = []
    for suffix in ("", "_b"):
        uni = MambaMixer(cfg.mamba, rngs=nnx.Rngs(0))
        uni.in_proj.kernel[...] = bi.in_proj.kernel[...]
        for name in ("conv1d", "x_proj", "dt_proj"):
            src, dst = getattr(bi, name + suffix), getattr(uni, name)
            dst.kernel[...] = src.kernel[...]
            if dst.bias is not None:
                dst.bias[...] = src.bias[...]
        uni.A_log[...] = (bi.A_b_log if suffix else bi.A_log)[...]
        uni.D[...] = (bi.D_b if suffix else bi.D)[...]
        inp = x[:, ::-1] if suffix else x
        _, yy = uni(inp, return_y=True)
        ys.append(yy[:, ::-1] if suffix else yy)
    want = (ys[0] + ys[1]) / 2
    np.testing.assert_allclose(y, want, **TOL)
    np.testing.assert_allclose(out, want @ bi.out_proj.kernel[...], **TOL)


def test_mixer_matches_numpy_dense_and_aligned_exact():
    bi = perturb(BiMambaMixer(CFG, rngs=nnx.Rngs(4)), seed=4)
    p = {f"m/{k}": v for k, v in np_params(bi).items()}
    x = _mixer_input()
    keep = np.random.default_rng(5).random((B, L)) < 0.6
    out, y = bi(x, return_y=True)
    out_k, y_k = bi(x, keep=jnp.asarray(keep), return_y=True)
    for b in range(B):
        xb = np.asarray(x[b], np.float64)
        o, yy = np_mixer(p, "m", xb)
        np.testing.assert_allclose(out[b], o, **TOL)
        np.testing.assert_allclose(y[b], yy, **TOL)
        o, yy = np_mixer(p, "m", xb, keep=keep[b])
        np.testing.assert_allclose(y_k[b], yy, **TOL)  # zero at the pruned positions
        np.testing.assert_allclose(out_k[b][keep[b]], o[keep[b]], **TOL)


def _positions(seed, t, length=L):
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(length, t, replace=False)) for _ in range(B)])


@pytest.mark.parametrize("rule", ["own", "prev", "true"])
def test_mixer_gap_rules_match_numpy(rule):
    bi = perturb(BiMambaMixer(CFG, rngs=nnx.Rngs(6)), seed=6)
    p = {f"m/{k}": v for k, v in np_params(bi).items()}
    pos = _positions(7, 9)
    x = _mixer_input(9)
    out, y = bi(x, positions=jnp.asarray(pos, jnp.int32), length=L, gap_rule=rule, return_y=True)
    for b in range(B):
        o, yy = np_mixer(p, "m", np.asarray(x[b], np.float64), pos=pos[b], length=L, rule=rule)
        np.testing.assert_allclose(y[b], yy, **TOL)
        np.testing.assert_allclose(out[b], o, **TOL)


def test_true_gap_mixer_equals_masked_full_scan_at_kept_positions():
    bi = perturb(BiMambaMixer(CFG, rngs=nnx.Rngs(8)), seed=8)
    pos = jnp.asarray(_positions(9, 7), jnp.int32)
    x_full = _mixer_input()
    keep = jnp.zeros((B, L), bool).at[jnp.arange(B)[:, None], pos].set(True)
    out_e, y_e = bi(x_full, keep=keep, return_y=True)
    x_kept = jnp.take_along_axis(x_full, pos[..., None], axis=1)
    take = lambda v: jnp.take_along_axis(v, pos[..., None], axis=1)
    out_t, y_t = bi(x_kept, positions=pos, length=L, gap_rule="true", return_y=True)
    np.testing.assert_allclose(y_t, take(y_e), **TOL)
    np.testing.assert_allclose(out_t, take(out_e), **TOL)
    for rule in ("own", "prev"):  # estimates: close-ish, not equal
        _, y_g = bi(x_kept, positions=pos, length=L, gap_rule=rule, return_y=True)
        assert np.abs(np.asarray(y_g - take(y_e))).max() > 1e-3
    _, y_n = bi(x_kept, return_y=True)  # naive: contiguous conv and no gap decay
    assert np.abs(np.asarray(y_n - take(y_e))).max() > 1e-2


def test_position_aware_conv_is_the_zero_filled_full_conv():
    rng = np.random.default_rng(10)
    e, k = 5, 4
    kernel = rng.normal(size=(k, e)).astype(np.float32)
    bias = rng.normal(size=(e,)).astype(np.float32)
    pos = _positions(11, 8, length=20)
    x = rng.normal(size=(B, 8, e)).astype(np.float32)
    got = causal_conv(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), jnp.asarray(pos))
    for b in range(B):
        full = np.zeros((20, e))
        full[pos[b]] = x[b]
        want = np_conv(full, kernel[:, None, :], bias)[pos[b]]
        np.testing.assert_allclose(got[b], want, **TOL)
    contiguous = causal_conv(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
    same = causal_conv(
        jnp.asarray(x),
        jnp.asarray(kernel),
        jnp.asarray(bias),
        jnp.broadcast_to(jnp.arange(8), (B, 8)),
    )
    np.testing.assert_allclose(same, contiguous, **TOL)


# ---------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(
    "plan",
    [
        VimPruningPlan.at((1, 2), 1.0, "naive"),
        VimPruningPlan.at(1, N, "naive", cls_position="middle"),
        VimPruningPlan.at((1, 2), 1.0, "aligned_exact"),
        VimPruningPlan.at((1, 2), 1.0, "aligned_gap"),
        VimPruningPlan.at(1, 1.0, "aligned_gap", gap_rule="prev"),
    ],
)
def test_keep_all_is_the_dense_model(model, images, plan):
    dense = run(model, images)
    out = run(model, images, plan)
    np.testing.assert_allclose(out.logits, dense.logits, atol=1e-6)
    np.testing.assert_array_equal(out.positions, dense.positions)
    assert all(np.array_equal(k, np.broadcast_to(np.arange(N), (B, N))) for k in out.kept)


PLANS = {
    "naive": VimPruningPlan.at((1, 2), 0.6, "naive"),
    "naive_middle": VimPruningPlan.at((1, 2), 0.6, "naive", cls_position="middle"),
    "exact": VimPruningPlan.at((1, 2), 0.6, "aligned_exact"),
    "gap_own": VimPruningPlan.at((1, 2), 0.6, "aligned_gap"),
    "gap_prev": VimPruningPlan.at((1, 2), 0.6, "aligned_gap", gap_rule="prev"),
    "gap_true": VimPruningPlan.at((1, 2), 0.6, "aligned_gap", gap_rule="true"),
    "exact_l2": VimPruningPlan.at(1, 5, "aligned_exact", metric="l2"),
    "naive_l1": VimPruningPlan.at(2, 7, "naive", metric="l1"),
    "gap_unclipped": VimPruningPlan.at(1, 0.3, "aligned_gap", metric="unclipped"),
}


SLOW_PLANS = ("gap_prev", "exact_l2", "naive_l1", "gap_unclipped")  # covered at the mixer level


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PLANS else n for n in PLANS]
)
def test_every_mode_matches_the_numpy_model(model, images, name):
    plan = PLANS[name]
    out = run(model, images, plan)
    p = np_params(model)
    for b in range(B):
        logits, pos, kept = np_vim(p, np.asarray(images[b], np.float64), plan)
        for got, want in zip(out.kept, kept, strict=True):
            np.testing.assert_array_equal(got[b], want)
        np.testing.assert_array_equal(out.positions[b], pos)
        np.testing.assert_allclose(out.logits[b], logits, **TOL)


def test_aligned_gap_with_true_gaps_equals_aligned_exact(model, images):
    exact = run(model, images, PLANS["exact"])
    true = run(model, images, PLANS["gap_true"])
    np.testing.assert_array_equal(true.positions, exact.positions)
    np.testing.assert_allclose(true.logits, exact.logits, **TOL)
    np.testing.assert_allclose(true.hidden, exact.hidden, **TOL)
    for a, b in zip(true.ys, exact.ys, strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    naive = run(model, images, PLANS["naive"])
    own = run(model, images, PLANS["gap_own"])
    for other in (naive, own):
        np.testing.assert_array_equal(other.kept[0], exact.kept[0])  # same first selection
        assert np.abs(np.asarray(other.ys[1] - exact.ys[1])).max() > 1e-3


def test_first_stage_keeps_the_top_clipped_scores(model, images):
    out = run(model, images, VimPruningPlan.at(2, 6, "aligned_gap"))
    y = np.asarray(out.ys[1])  # block 1's y, all 17 tokens
    for b in range(B):
        s = np.maximum(y[b], 0).sum(-1)
        patch_scores = np.delete(s, C)
        want = np.sort(np.argsort(-patch_scores, kind="stable")[:6])
        np.testing.assert_array_equal(out.kept[0][b], want)


@pytest.mark.parametrize("metric", ["clipped", "unclipped", "l1", "l2"])
def test_token_scores_match_numpy(metric):
    y = np.random.default_rng(12).normal(size=(3, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(vim_token_scores(jnp.asarray(y), metric), np_scores(y, metric),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert vim_token_scores(jnp.asarray(y, jnp.bfloat16), metric).dtype == jnp.float32


@pytest.mark.parametrize("name", ["naive", "naive_middle", "exact", "gap_own"])
def test_kept_ids_contract(model, images, name):
    plan = PLANS[name]
    out = run(model, images, plan)
    counts = plan.token_counts(N)
    assert [k.shape for k in out.kept] == [(B, c) for c in counts]
    for kept in out.kept:
        k = np.asarray(kept)
        assert np.all(np.diff(k, axis=1) > 0) and k.min() >= 0 and k.max() < N
    for b in range(B):  # each stage keeps a subset of what the previous one kept
        prev = set(range(N))
        for kept in out.kept:
            now = set(np.asarray(kept[b]).tolist())
            assert now <= prev
            prev = now
    pos = np.asarray(out.positions)
    assert pos.shape == (B, counts[-1] + 1) and np.all((pos == C).sum(1) == 1)  # cls kept
    if name == "naive_middle":
        assert np.all(pos[:, counts[-1] // 2] == C)
    else:
        assert np.all(np.diff(pos, axis=1) > 0)
    ids = np.where(pos > C, pos - 1, pos)
    for b in range(B):
        np.testing.assert_array_equal(np.sort(ids[b][pos[b] != C]), out.kept[-1][b])


def test_random_metric_needs_a_key_and_is_uniform_per_key(model, images):
    plan = VimPruningPlan.at(1, 0.5, "naive", metric="random")
    with pytest.raises(ValueError, match="PRNG key"):
        model(images, plan=plan)
    a = run(model, images, plan, jax.random.key(0))
    b = run(model, images, plan, jax.random.key(0))
    c = run(model, images, plan, jax.random.key(1))
    np.testing.assert_array_equal(a.kept[0], b.kept[0])
    assert not np.array_equal(a.kept[0], c.kept[0])
    assert a.kept[0].shape == (B, 8) and np.all(np.diff(np.asarray(a.kept[0]), axis=1) > 0)


def test_no_retrace_with_an_equal_plan(model, images):
    graphdef, state = nnx.split(model)
    traces = []

    def f(s, x, plan):
        traces.append(1)
        return nnx.merge(graphdef, s)(x, plan=plan).logits

    g = jax.jit(f, static_argnames="plan")
    g(state, images, VimPruningPlan.at(1, 0.5, "aligned_gap"))
    g(state, images, VimPruningPlan.at(1, 0.5, "aligned_gap"))  # equal, not identical
    assert len(traces) == 1
    g(state, images, VimPruningPlan.at(1, 0.5, "aligned_gap", gap_rule="prev"))
    assert len(traces) == 2


@pytest.mark.slow
def test_gradients_flow_through_a_pruned_model(model, images):
    plan = VimPruningPlan.at((1, 2), 0.5, "aligned_gap")

    graphdef, state = nnx.split(model)

    @jax.jit
    def grad(s):
        return jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(images, plan=plan).logits ** 2))(s)

    grads = grad(state)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["layers"][2]["mixer"]["dt_proj_b"]["kernel"][...])).max() > 0


# ------------------------------------------------------------------------------ plans, FLOPs


def test_plan_schedule_and_token_counts():
    plan = VimPruningPlan.top_vim("aligned_gap")
    assert TOPVIM_LAYERS == (5, 10, 15) and [s.layer for s in plan.stages] == [5, 10, 15]
    assert all(s.keep == 0.8 and s.gap_rule == "own" for s in plan.stages)
    assert plan.token_counts(196) == (157, 126, 101)
    assert plan.block_tokens(24, 196) == (197,) * 5 + (158,) * 5 + (127,) * 5 + (102,) * 9
    assert plan.mode == "aligned_gap" and VimPruningPlan().mode is None
    assert hash(plan) == hash(VimPruningPlan.top_vim("aligned_gap"))
    assert VimPruneStage(3, 0.5, "naive").gap_rule is None


def test_flops():
    cfg = CFG
    d, e, s, r, k = cfg.dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv

    def block(t, t_feat=None, gap=False):
        t_feat = t if t_feat is None else t_feat
        return (
            4 * t * d * e
            + 4 * t_feat * e * k
            + 4 * t_feat * e * (r + 2 * s)
            + 4 * t_feat * r * e
            + 2 * (9 * t * e * s + 2 * t * e + (t * e if gap else 0))
            + 2 * t * e * d
        )

    fixed = 2 * N * 4 * d + 2 * d * cfg.num_classes
    assert vim_flops(cfg) == fixed + 3 * block(L)
    parts = vim_flops(cfg, breakdown=True)
    assert parts["total"] == vim_flops(cfg) == sum(v for n, v in parts.items() if n != "total")
    # stages before blocks 1 and 2 at keep 0.6: 16 -> 10 -> 6 patches
    assert vim_flops(cfg, PLANS["naive"]) == fixed + block(L) + block(11) + block(7)
    assert vim_flops(cfg, PLANS["gap_own"]) == fixed + block(L) + block(11, gap=True) + block(
        7, gap=True
    )
    assert vim_flops(cfg, PLANS["gap_true"]) == fixed + block(L) + block(
        11, 11 + L, gap=True
    ) + block(7, 7 + L, gap=True)
    assert vim_flops(cfg, PLANS["exact"]) == vim_flops(cfg)  # the reference saves nothing
    ti = vim_config("Ti")
    ratio = vim_flops(ti, VimPruningPlan.top_vim("aligned_gap")) / vim_flops(ti)
    assert 0.65 < ratio < 0.75


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dim=0), "dim must be a positive int"),
        (dict(image_size=30), "divisible by patch_size"),
        (dict(image_size=(32, 0)), "image_size must be"),
        (dict(dt_rank="big"), "dt_rank"),
        (dict(num_classes=-1), "num_classes"),
        (dict(final_pool="cls"), "final_pool"),
        (dict(scan_mode="parallel"), "scan_mode"),
        (dict(scan_chunk=0), "scan_chunk"),
        (dict(residual_in_fp32=1), "residual_in_fp32 must be a bool"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        VimConfig(**kw)


def test_vim_config_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        vim_config("B")
    with pytest.raises(ValueError, match="unknown VimConfig fields"):
        vim_config("Ti", width=3)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layer=0, keep=0.5), "layer must be an int >= 1"),
        (dict(layer=True, keep=0.5), "layer must be an int >= 1"),
        (dict(layer=2, keep=0), "keep as a count"),
        (dict(layer=2, keep=1.5), "keep as a ratio"),
        (dict(layer=2, keep="all"), "keep must be an int or a float"),
        (dict(layer=2, keep=0.5, mode="dense"), "mode must be one of"),
        (dict(layer=2, keep=0.5, metric="attention"), "metric must be one of"),
        (dict(layer=2, keep=0.5, mode="naive", gap_rule="own"), "gap_rule applies"),
        (dict(layer=2, keep=0.5, gap_rule="next"), "gap_rule must be one of"),
        (dict(layer=2, keep=0.5, cls_position="first"), "cls_position must be one of"),
        (dict(layer=2, keep=0.5, cls_position="middle"), "needs mode='naive'"),
    ],
)
def test_stage_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        VimPruneStage(**kw)


def test_plan_errors():
    with pytest.raises(ValueError, match="strictly increase"):
        VimPruningPlan.at((3, 2), 0.5)
    with pytest.raises(ValueError, match="share one mode"):
        VimPruningPlan((VimPruneStage(1, 0.5, "naive"), VimPruneStage(2, 0.5, "aligned_gap")))
    with pytest.raises(ValueError, match="must be VimPruneStage"):
        VimPruningPlan(("stage",))
    with pytest.raises(ValueError, match="the model has 3 blocks"):
        VimPruningPlan.at(3, 0.5).validate(3, N)
    with pytest.raises(ValueError, match="keeps 17 of the 16"):
        VimPruningPlan.at(1, 17).validate(3, N)


def test_call_errors(model, images):
    with pytest.raises(ValueError, match="H, W, C"):
        model(jnp.zeros((2, 8, 9, 1)))
    with pytest.raises(ValueError, match="batch of images"):
        model(jnp.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="floating point"):
        model(jnp.zeros((2, 8, 8, 1), jnp.int32))
    with pytest.raises(ValueError, match="plan must be a VimPruningPlan"):
        model(images, plan=VimPruneStage(1, 0.5))
    with pytest.raises(ValueError, match="the model has 3 blocks"):
        model(images, plan=VimPruningPlan.at(5, 0.5))
    with pytest.raises(ValueError, match="config must be a VimConfig"):
        Vim(CFG.mamba, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="config must be a VimConfig"):
        vim_flops(CFG.mamba)
    with pytest.raises(ValueError, match="metric must be one of"):
        vim_token_scores(jnp.zeros((3, 4)), "random")
    with pytest.raises(ValueError, match=r"y must be \[..., T, E\]"):
        vim_token_scores(jnp.zeros((4,)))


def test_mixer_errors(model):
    mixer = model.layers[0].mixer
    x = _mixer_input(5)
    with pytest.raises(ValueError, match="x must be"):
        mixer(jnp.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="not both"):
        mixer(x, keep=jnp.ones((B, 5), bool), positions=jnp.zeros((B, 5), jnp.int32), length=9)
    with pytest.raises(ValueError, match="keep must be a bool mask"):
        mixer(x, keep=jnp.ones((B, 6), bool))
    with pytest.raises(ValueError, match="positions must be an int array"):
        mixer(x, positions=jnp.zeros((B, 5)), length=9)
    with pytest.raises(ValueError, match="full length"):
        mixer(x, positions=jnp.zeros((B, 5), jnp.int32), length=4)
    with pytest.raises(ValueError, match="gap_rule must be one of"):
        mixer(x, positions=jnp.zeros((B, 5), jnp.int32), length=9, gap_rule="next")


@pytest.mark.slow
def test_bfloat16_compute_stays_close(images):
    m32 = perturb(Vim(CFG, rngs=nnx.Rngs(0)), std=0.1)
    m16 = perturb(Vim(CFG, rngs=nnx.Rngs(0), dtype=jnp.bfloat16), std=0.1)
    plan = VimPruningPlan.at(1, 0.5, "aligned_gap")
    a, b = run(m32, images, plan), run(m16, images, plan)
    assert b.logits.dtype == jnp.float32 and np.all(np.isfinite(b.logits))
    assert np.abs(np.asarray(a.logits - b.logits)).max() < 0.1 * (
        1 + np.abs(np.asarray(a.logits)).max()
    )
    assert math.isfinite(float(jnp.sum(b.hidden.astype(jnp.float32))))
