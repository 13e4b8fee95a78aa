"""NIRVANA structured pruning of a LlamaLM (pruneax.models.nirvana_*), against independent oracles:

- unit scores = |grad * W| summed per GQA group / MLP channel, re-derived here in NumPy (HF
  [out, in] orientation, the published reshape) from a separate ``jax.grad`` of the objective;
  a bfloat16 model is scored with a float32 gradient;
- the allocation = a loop-by-loop NumPy transcription of the published ``Llama/main.py``
  (budget formula, thresholds with ties, the per-layer fix-ups) on random and tied scores;
  gamma = 1 prunes the fraction s of each pool, gamma > 1 moves pruning onto the MLP;
- the physically pruned model = the dense model with the same rows / columns zeroed (1e-5);
- MLP kept counts are multiples of 8 (or the whole width); no layer loses every group;
- the KL calibration choice = a NumPy KL(dense || pruned) and its argmin;
- every bad input raises ValueError naming the argument.
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

from pruneax.models import (
    LlamaLM,
    StructuredKeep,
    llm_config,
    nirvana_allocate,
    nirvana_prune,
    nirvana_scores,
    nirvana_select_calibration,
)
from tests._models import random_model

# 4 heads / 2 KV heads (G = 2), head_dim 16, D = 64
GQA = llm_config("tiny", vocab_size=64, intermediate_size=40, num_layers=3)
BIASED = dataclasses.replace(GQA, attention_bias=True, mlp_bias=True, num_layers=2)
ONE = dataclasses.replace(GQA, num_layers=1)


@functools.cache
def model_of(name: str, dtype=jnp.float32) -> LlamaLM:
    cfg = {"gqa": dataclasses.replace(GQA, num_layers=2), "biased": BIASED, "one": ONE}[name]
    return random_model(LlamaLM, cfg, 1, 0.2, unit_embedding=True, dtype=dtype, param_dtype=dtype)


def ids_of(shape=(3, 7), seed=4, vocab=64) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ------------------------------------------------------------------------------ scores


def np_scores(model: LlamaLM, ids) -> tuple[np.ndarray, np.ndarray]:
    """[L, KV] and [L, I] scores from a separate jax.grad, summed by hand in NumPy."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def objective(p):
        logits = nnx.merge(graphdef, p, rest)(ids).logits.astype(jnp.float32)
        return jnp.mean(jnp.max(logits, axis=1))  # max over positions, mean over (b, v)

    grads = jax.grad(objective)(params)
    cfg = model.config
    kv, hd = cfg.num_kv_heads, cfg.head_dim
    attn = np.zeros((cfg.num_layers, kv))
    mlp = np.zeros((cfg.num_layers, cfg.intermediate_size))
    for i in range(cfg.num_layers):

        def sal(part, name, i=i):
            w = np.asarray(params["layers"][i][part][name]["kernel"][...], np.float64)
            g = np.asarray(grads["layers"][i][part][name]["kernel"][...], np.float64)
            return np.abs(g * w).T  # HF orientation [out, in]

        for name in ("q_proj", "k_proj", "v_proj"):
            rows = sal("self_attn", name).sum(axis=1)  # L1 over the input per output row
            attn[i] += rows.reshape(kv, hd, -1).sum(axis=(1, 2))
        cols = sal("self_attn", "o_proj").sum(axis=0)  # L1 over the output per input column
        attn[i] += cols.reshape(kv, hd, -1).sum(axis=(1, 2))
        for c in range(cfg.intermediate_size):
            mlp[i, c] = (
                sal("mlp", "gate_proj")[c].sum()
                + sal("mlp", "up_proj")[c].sum()
                + sal("mlp", "down_proj")[:, c].sum()
            )
    return attn, mlp


@pytest.mark.parametrize("name", ["gqa", "biased"])
def test_scores_equal_a_numpy_rederivation(name):
    model, ids = model_of(name), ids_of()
    attn, mlp = nirvana_scores(model, ids)
    want_attn, want_mlp = np_scores(model, ids)
    assert [a.dtype for a in attn + mlp] == [np.float32] * (2 * model.config.num_layers)
    np.testing.assert_allclose(np.stack(attn), want_attn, rtol=2e-5)
    np.testing.assert_allclose(np.stack(mlp), want_mlp, rtol=2e-5)
    assert np.all(np.stack(mlp) > 0)


def test_bfloat16_model_is_scored_with_a_float32_gradient():
    bf16 = model_of("gqa", jnp.bfloat16)
    # the same (bf16-rounded) weights in a float32 model
    f32 = model_of("gqa")
    state = jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(bf16))
    f32 = nnx.merge(nnx.graphdef(f32), state)
    ids = ids_of()
    got, want = nirvana_scores(bf16, ids), np_scores(f32, ids)
    np.testing.assert_allclose(np.stack(got[0]), want[0], rtol=2e-5)
    np.testing.assert_allclose(np.stack(got[1]), want[1], rtol=2e-5)


# ------------------------------------------------------------------------------ allocation


def np_allocate(cfg, attn, mlp, s, gamma):
    """The published allocation, transcribed loop by loop (plus the 1e-9 slack on int())."""
    hd, g, kv, L = cfg.head_dim, cfg.num_groups, cfg.num_kv_heads, cfg.num_layers
    inter = cfg.intermediate_size
    gam = 1.0 / gamma
    original = (hd * 2 * (g + 1) * kv + inter * 3) * s
    ratio = (hd * 2 * (g + 1) * kv) / (inter * 3) * gam * 3 / (hd * 2 * (g + 1))
    now = hd * 2 * (g + 1) + 1 / ratio * 3
    pa = original / now * L
    n_mlp = min(int(pa / ratio + 1e-9 * max(1, pa / ratio)), L * inter)
    n_attn = min(int(pa + 1e-9 * max(1, pa)), L * kv)
    thr_a = sorted(attn.ravel())[n_attn - 1] if n_attn > 0 else None
    thr_m = sorted(mlp.ravel())[n_mlp - 1] if n_mlp > 0 else None
    heads, chans = [], []
    for i in range(L):
        pruned = [j for j in range(kv) if thr_a is not None and attn[i, j] <= thr_a]
        if len(pruned) == kv:
            pruned = pruned[:-1]
        heads.append(tuple(j for j in range(kv) if j not in pruned))
        cand = [c for c in range(inter) if thr_m is not None and mlp[i, c] <= thr_m]
        if cand:
            kept0 = inter - len(cand)
            kept = kept0
            while kept % 8:
                kept += 1
            kept = min(inter, kept)
            if kept == 0:
                kept = 8
            spare = kept - kept0
            if spare >= len(cand):
                cand = []
            elif spare > 0:
                best = sorted(cand, key=lambda c, i=i: (-mlp[i, c], c))[:spare]
                cand = [c for c in cand if c not in best]
        chans.append(tuple(c for c in range(inter) if c not in cand))
    return heads, chans, n_attn, n_mlp


def random_scores(cfg, seed, tied=False):
    rng = np.random.default_rng(seed)
    shape_a, shape_m = (cfg.num_layers, cfg.num_kv_heads), (cfg.num_layers, cfg.intermediate_size)
    if tied:  # few distinct values: many ties at the thresholds
        attn, mlp = rng.integers(0, 3, shape_a) * 1.0, rng.integers(0, 4, shape_m) * 1.0
    else:
        attn, mlp = rng.random(shape_a), rng.random(shape_m)
    if seed % 3 == 0:  # a layer whose units all score lowest: every unit is a candidate
        attn[1] -= 10.0
        mlp[2] -= 10.0
    return attn, mlp


CFGS = [
    GQA,
    llm_config("tiny", vocab_size=64, intermediate_size=44, num_layers=4, num_kv_heads=4),
    llm_config("tiny", vocab_size=64, intermediate_size=6, num_layers=3),  # I < 8
]


@pytest.mark.parametrize("cfg", CFGS, ids=["gqa", "mha-i44", "i6"])
@pytest.mark.parametrize("tied", [False, True])
def test_allocate_equals_the_published_allocation(cfg, tied):
    for seed in range(24):
        attn, mlp = random_scores(cfg, seed, tied)
        s = [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.99][seed % 8]
        gamma = [1.0, 3.36, 0.5][seed % 3]
        heads, chans, n_attn, n_mlp = np_allocate(cfg, attn, mlp, s, gamma)
        keep, info = nirvana_allocate(cfg, list(attn), list(mlp), sparsity=s, gamma=gamma)
        assert (info["n_attn"], info["n_mlp"]) == (n_attn, n_mlp), (seed, s, gamma)
        assert keep.heads == tuple(heads), (seed, s, gamma)
        assert keep.mlp == tuple(chans), (seed, s, gamma)


@pytest.mark.parametrize("s", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_gamma_one_prunes_the_fraction_s_of_each_pool(s):
    cfg = llm_config("tiny", vocab_size=64, intermediate_size=48, num_layers=4)
    attn, mlp = random_scores(cfg, 1)  # distinct scores: candidates = the budget exactly
    keep, info = nirvana_allocate(cfg, attn, mlp, sparsity=s)
    n_a, n_m = cfg.num_layers * cfg.num_kv_heads, cfg.num_layers * cfg.intermediate_size
    assert info["n_attn"] == math.floor(s * n_a + 1e-9)
    assert info["n_mlp"] == math.floor(s * n_m + 1e-9)
    assert np.sum(attn <= (info["attn_threshold"] or -np.inf)) == info["n_attn"]
    assert np.sum(mlp <= info["mlp_threshold"]) == info["n_mlp"]
    pruned_m = n_m - sum(len(k) for k in keep.mlp)
    assert info["n_mlp"] - 7 * cfg.num_layers <= pruned_m <= info["n_mlp"]  # rounding to 8s


def test_counts_do_not_lose_a_unit_to_float_rounding():
    # SmolLM2-135M's shape: the published int() of 26.999999999999996 / 13823.999999999998 gives
    # 26 groups / 13823 channels at s = 0.3; the exact counts are 27 and 13824
    cfg = llm_config(
        "tiny", hidden_size=576, num_heads=9, num_kv_heads=3, intermediate_size=1536, num_layers=30
    )
    attn, mlp = random_scores(cfg, 1)
    _, info = nirvana_allocate(cfg, attn, mlp, sparsity=0.3)
    assert (info["n_attn"], info["n_mlp"]) == (27, 13824)


def test_gamma_moves_pruning_onto_the_mlp_at_constant_parameter_budget():
    cfg = llm_config("llama3.2-1b", num_layers=2)
    attn, mlp = random_scores(cfg, 1)
    c_a, c_m = 2 * cfg.head_dim * (cfg.num_groups + 1), 3
    budget = 0.5 * cfg.num_layers * (c_a * cfg.num_kv_heads + c_m * cfg.intermediate_size)
    last = None
    for gamma in (0.5, 1.0, 2.0, 3.36):
        _, info = nirvana_allocate(cfg, attn, mlp, sparsity=0.5, gamma=gamma)
        cost = c_a * info["n_attn"] + c_m * info["n_mlp"]
        assert budget - c_a - c_m <= cost <= budget + 1e-6
        if last is not None:
            assert info["n_attn"] <= last[0] and info["n_mlp"] >= last[1]
        last = info["n_attn"], info["n_mlp"]
    assert last[0] < 0.5 * cfg.num_layers * cfg.num_kv_heads


def test_fixups_keep_a_group_and_multiples_of_8():
    for cfg in CFGS:
        inter = cfg.intermediate_size
        for seed in range(12):
            attn, mlp = random_scores(cfg, 3 * seed)  # layer 1 / 2 entirely candidates
            gamma = [1.0, 0.2][seed % 2]
            keep, info = nirvana_allocate(cfg, attn, mlp, sparsity=0.9, gamma=gamma)
            assert all(len(k) >= 1 for k in keep.heads)
            for k in keep.mlp:
                assert len(k) % 8 == 0 or len(k) == inter, (inter, len(k))
                assert len(k) >= min(8, inter)
            # the last group survives a fully-candidate layer (published: not the best one)
            thr = info["attn_threshold"]
            if thr is not None and np.all(attn[1] <= thr):
                assert keep.heads[1] == (cfg.num_kv_heads - 1,)


# ------------------------------------------------------------------------------ pruning


def masked(model: LlamaLM, keep: StructuredKeep) -> LlamaLM:
    """The dense model with the removed groups (KV head j, query heads jG .. jG+G-1) and the
    removed channels zeroed, sliced by hand."""
    cfg = model.config
    hd, g = cfg.head_dim, cfg.num_groups
    new = jax.tree.map(lambda x: np.array(x), nnx.state(model))
    for i in range(cfg.num_layers):
        attn, mlp = new["layers"][i]["self_attn"], new["layers"][i]["mlp"]
        for grp in set(range(cfg.num_kv_heads)) - set(keep.heads[i]):
            q, kv = slice(grp * g * hd, (grp + 1) * g * hd), slice(grp * hd, (grp + 1) * hd)
            for n, cols in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                attn[n]["kernel"][...][:, cols] = 0
                if cfg.attention_bias:
                    attn[n]["bias"][...][cols] = 0
            attn["o_proj"]["kernel"][...][q, :] = 0
        for c in set(range(cfg.intermediate_size)) - set(keep.mlp[i]):
            for n in ("gate_proj", "up_proj"):
                mlp[n]["kernel"][...][:, c] = 0
                if cfg.mlp_bias:
                    mlp[n]["bias"][...][c] = 0
            mlp["down_proj"]["kernel"][...][c, :] = 0
    return nnx.merge(nnx.graphdef(model), jax.tree.map(jnp.asarray, new))


@pytest.mark.parametrize("name,s,gamma", [("gqa", 0.5, 1.0), ("biased", 0.6, 0.5)])
def test_pruned_model_equals_the_masked_dense_model(name, s, gamma):
    model, ids = model_of(name), ids_of()
    before = jax.tree.map(np.array, nnx.state(model))
    small, info = nirvana_prune(model, ids, sparsity=s, gamma=gamma)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model))  # unchanged
    keep, _ = nirvana_allocate(model.config, *nirvana_scores(model, ids), sparsity=s, gamma=gamma)
    assert info["keep"] == keep
    cfg = small.config
    assert cfg.kv_heads_per_layer == info["kv_heads"] == tuple(len(k) for k in keep.heads)
    assert cfg.mlp_per_layer == info["mlp"] == tuple(len(k) for k in keep.mlp)
    assert sum(info["mlp"]) < model.config.num_layers * model.config.intermediate_size
    if info["n_attn"]:
        assert sum(info["kv_heads"]) < model.config.num_layers * model.config.num_kv_heads
    test = ids_of((2, 9), seed=7)
    np.testing.assert_allclose(
        small(test).logits, masked(model, keep)(test).logits, atol=1e-5, rtol=1e-5
    )
    d, hd, g = cfg.hidden_size, cfg.head_dim, cfg.num_groups

    def size(c):  # q, k, v, o, gate, up, down kernel entries
        kv, m = np.array(c.kv_heads_per_layer), np.array(c.mlp_per_layer)
        return np.sum(d * hd * (2 * g * kv + 2 * kv) + 3 * d * m)

    assert info["sparsity"] == pytest.approx(1 - size(cfg) / size(model.config))


# ------------------------------------------------------------------------------ calibration choice


@nnx.jit
def logits_of(model, ids):
    return model(ids).logits


def np_kl(model_p, model_q, ids) -> float:
    lp = np.asarray(logits_of(model_p, ids), np.float64)
    lq = np.asarray(logits_of(model_q, ids), np.float64)

    def log_softmax(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lp, lq = log_softmax(lp), log_softmax(lq)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def test_select_calibration_is_the_argmin_of_the_kl():
    model = model_of("one")
    cands = [ids_of((2, 6), seed=s) for s in (10, 11)]
    held = ids_of((2, 8), seed=20)
    best, kls = nirvana_select_calibration(model, cands, held, sparsity=0.5)
    want = [np_kl(model, nirvana_prune(model, c, sparsity=0.5)[0], held) for c in cands]
    np.testing.assert_allclose(kls, want, rtol=1e-4, atol=1e-6)
    assert best == int(np.argmin(want)) and min(kls) > 0


# ------------------------------------------------------------------------------ errors

IDS = np.zeros((2, 4), np.int32)
BAD_IDS = [
    (np.zeros((2, 4)), "input_ids must be integer"),
    (np.zeros(4, np.int32), r"input_ids must be a non-empty \[n, t\]"),
    (np.zeros((0, 4), np.int32), r"input_ids must be a non-empty \[n, t\]"),
    (np.full((2, 4), 64), r"input_ids must lie in \[0, 64\)"),
    (np.full((2, 4), -1), r"input_ids must lie in \[0, 64\)"),
    (None, "input_ids must be integer"),
]


@pytest.mark.parametrize("ids,match", BAD_IDS)
def test_bad_ids(ids, match):
    with pytest.raises(ValueError, match=f"nirvana_scores: {match}"):
        nirvana_scores(model_of("gqa"), ids)
    with pytest.raises(ValueError, match=f"nirvana_prune: {match}"):
        nirvana_prune(model_of("gqa"), ids, sparsity=0.5)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"sparsity": 1.0}, r"sparsity must be a float in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be a float in \[0, 1\)"),
        ({"sparsity": "0.5"}, r"sparsity must be a float in \[0, 1\)"),
        ({"sparsity": True}, r"sparsity must be a float in \[0, 1\)"),
        ({"sparsity": 0.5, "gamma": 0.0}, "gamma must be a finite float > 0"),
        ({"sparsity": 0.5, "gamma": -1.0}, "gamma must be a finite float > 0"),
        ({"sparsity": 0.5, "gamma": float("inf")}, "gamma must be a finite float > 0"),
        ({"sparsity": 0.5, "gamma": float("nan")}, "gamma must be a finite float > 0"),
    ],
)
def test_bad_budget(kw, match):
    attn, mlp = random_scores(GQA, 1)
    with pytest.raises(ValueError, match=f"nirvana_prune: {match}"):
        nirvana_prune(model_of("gqa"), IDS, **kw)
    with pytest.raises(ValueError, match=f"nirvana_allocate: {match}"):
        nirvana_allocate(GQA, attn, mlp, **kw)
    with pytest.raises(ValueError, match=f"nirvana_select_calibration: {match}"):
        nirvana_select_calibration(model_of("gqa"), [IDS], IDS, **kw)


def test_bad_model_config_scores_and_candidates():
    attn, mlp = random_scores(GQA, 1)
    for fn in (nirvana_scores, lambda m, i: nirvana_prune(m, i, sparsity=0.5)):
        with pytest.raises(ValueError, match="model must be a LlamaLM; got str"):
            fn("model", IDS)
    with pytest.raises(ValueError, match="nirvana_allocate: config must be a LlamaConfig"):
        nirvana_allocate({"num_layers": 3}, attn, mlp, sparsity=0.5)
    bad = [
        (attn[:2], mlp, "attn_scores has 2 layers; the config has 3"),
        (attn, mlp[:, :5], r"mlp_scores\[0\] must be 40 finite scores; got shape \(5,\)"),
        (attn * np.nan, mlp, r"attn_scores\[0\] must be 2 finite scores"),
        ("scores", mlp, "attn_scores must hold one score array per layer"),
        (attn, None, "mlp_scores must hold one score array per layer"),
    ]
    for a, m, match in bad:
        with pytest.raises(ValueError, match=f"nirvana_allocate: {match}"):
            nirvana_allocate(GQA, a, m, sparsity=0.5)
    empty = dataclasses.replace(GQA, layer_mlp=(0, 0, 0))
    with pytest.raises(ValueError, match="config must have GQA groups and MLP channels"):
        nirvana_allocate(empty, attn, np.zeros((3, 0)), sparsity=0.5)
    sel = functools.partial(nirvana_select_calibration, model_of("gqa"), sparsity=0.5)
    with pytest.raises(ValueError, match="select_calibration: model must be a LlamaLM"):
        nirvana_select_calibration(None, [IDS], IDS, sparsity=0.5)
    with pytest.raises(ValueError, match="candidate_ids must hold at least one"):
        sel([], IDS)
    with pytest.raises(ValueError, match="candidate_ids must be a sequence"):
        sel(IDS, IDS)
    with pytest.raises(ValueError, match=r"candidate_ids\[1\] must lie in \[0, 64\)"):
        sel([IDS, IDS + 100], IDS)
    with pytest.raises(ValueError, match="heldout_ids must be integer"):
        sel([IDS], IDS * 1.0)
