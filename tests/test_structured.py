"""Structured pruning (pruneax.models.structured): a pruned ViT / LlamaLM equals the dense model
with the removed heads / channels zeroed (the masked dense is built here by explicit slicing,
independently of the module's unit layout), logits, hidden states and KV-cached greedy decoding;
analytic parameter counts; magnitude importance against NumPy; Taylor importance against a
finite-difference directional derivative; global allocation against a NumPy-sorted oracle;
config / model save and reload; errors naming the argument.

Models are abstract (``nnx.eval_shape``) and filled from NumPy, as in test_llm.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import param_count
from pruneax.models.llama import LlamaConfig, LlamaLM, generate_greedy, init_cache, llm_config
from pruneax.models.structured import (
    StructuredKeep,
    allocate_units,
    config_flops,
    config_from_json,
    config_param_count,
    config_to_json,
    head_importance,
    load_pruned,
    mlp_importance,
    prune_structured,
    save_pruned,
    taylor_grads,
    unit_counts,
)
from pruneax.models.vit import PruneStage, PruningPlan, ViT, ViTConfig, vit_config
from pruneax.weights import leaf_names
from tests._models import random_model

VIT = vit_config("mnist/4", hidden_size=32, mlp_dim=24, num_layers=3, num_heads=4)
MHA = llm_config("tiny", vocab_size=64, num_kv_heads=4, attention_bias=True, mlp_bias=True)
GQA = llm_config("tiny", vocab_size=64, intermediate_size=40)  # 4 heads, 2 KV heads
# a layer with no head, a layer with no MLP channel, and partial layers
VIT_KEEP = StructuredKeep(heads=((), (0, 3), (1, 2, 3)), mlp=((0, 5, 23), (), (2, 4, 7, 8, 20)))
LLM_KEEP = {
    "mha": StructuredKeep(heads=((0, 2), (), (3,), (0, 1, 2, 3)), mlp=((1, 2, 90), (5,), (), None)),
    "gqa": StructuredKeep(heads=((1,), (), (0,), (0, 1)), mlp=((0, 39), (3, 4, 5), (), (7,))),
}
LLM_CFG = {"mha": MHA, "gqa": GQA}


def materialize(model_type, config, seed: int = 0, std: float = 0.2):
    """A model with NumPy-drawn variables (``tests._models.random_model``; embeddings N(0, 1))."""
    return random_model(model_type, config, seed, std, unit_embedding=True)


@functools.cache
def vit_model() -> ViT:
    return materialize(ViT, VIT)


@functools.cache
def llm_model(name: str) -> LlamaLM:
    return materialize(LlamaLM, LLM_CFG[name], seed=1)


def images(b: int = 2, seed: int = 3) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, 28, 28, 1)), jnp.float32)


def ids_of(shape=(2, 7), seed=4, vocab=64) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ------------------------------------------------------------------------------ oracles


def removed(kept, n):
    kept = range(n) if kept is None else kept
    return [u for u in range(n) if u not in set(kept)]


def vit_masked(model: ViT, keep: StructuredKeep) -> ViT:
    """The dense ViT with the removed heads' q/k/v columns (and biases) and out rows, and the
    removed channels' fc1 columns (and bias) and fc2 rows set to zero."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_heads
    state = nnx.state(model)
    new = jax.tree.map(lambda x: np.array(x), state)
    for i in range(cfg.num_layers):
        attn, mlp = new["blocks"][i]["attn"], new["blocks"][i]["mlp"]
        for h in removed(keep.heads[i], cfg.num_heads):
            cols = slice(h * hd, (h + 1) * hd)
            for n in ("query", "key", "value"):
                attn[n]["kernel"][...][:, cols] = 0
                attn[n]["bias"][...][cols] = 0
            attn["out"]["kernel"][...][cols, :] = 0
        for c in removed(keep.mlp[i], cfg.mlp_dim):
            mlp["fc1"]["kernel"][...][:, c] = 0
            mlp["fc1"]["bias"][...][c] = 0
            mlp["fc2"]["kernel"][...][c, :] = 0
    graphdef = nnx.graphdef(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, new))


def llm_masked(model: LlamaLM, keep: StructuredKeep) -> LlamaLM:
    """The dense LlamaLM with the removed GQA groups (key / value head g with query heads
    g*G ... g*G+G-1) and SwiGLU channels zeroed."""
    cfg = model.config
    hd, g = cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
    new = jax.tree.map(lambda x: np.array(x), nnx.state(model))
    for i in range(cfg.num_layers):
        attn, mlp = new["layers"][i]["self_attn"], new["layers"][i]["mlp"]
        for grp in removed(keep.heads[i], cfg.num_kv_heads):
            q = slice(grp * g * hd, (grp + 1) * g * hd)
            kv = slice(grp * hd, (grp + 1) * hd)
            for n, cols in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                attn[n]["kernel"][...][:, cols] = 0
                if cfg.attention_bias:
                    attn[n]["bias"][...][cols] = 0
            attn["o_proj"]["kernel"][...][q, :] = 0
        for c in removed(keep.mlp[i], cfg.intermediate_size):
            for n in ("gate_proj", "up_proj"):
                mlp[n]["kernel"][...][:, c] = 0
                if cfg.mlp_bias:
                    mlp[n]["bias"][...][c] = 0
            mlp["down_proj"]["kernel"][...][c, :] = 0
    return nnx.merge(nnx.graphdef(model), jax.tree.map(jnp.asarray, new))


@nnx.jit
def vit_forward(model, x):
    out = model(x, return_hidden_states=True)
    return out.logits, out.hidden_states


@nnx.jit
def llm_forward(model, ids):
    out = model(ids, return_hidden_states=True)
    return out.logits, out.hidden_states


# ------------------------------------------------------------------------------ equivalence


def test_vit_pruned_equals_masked_dense():
    model = vit_model()
    pruned = prune_structured(model, VIT_KEEP)
    assert pruned.config.layer_heads == (0, 2, 3)
    assert pruned.config.layer_mlp == (3, 0, 5)
    assert pruned.blocks[1].attn.query.kernel.shape == (32, 2 * 8)
    assert pruned.blocks[1].attn.out.kernel.shape == (2 * 8, 32)
    assert pruned.blocks[2].mlp.fc1.kernel.shape == (32, 5)
    masked = vit_masked(model, VIT_KEEP)
    x = images()
    want_logits, want_hidden = vit_forward(masked, x)
    got_logits, got_hidden = vit_forward(pruned, x)
    dense_logits, _ = vit_forward(model, x)
    assert not np.allclose(dense_logits, want_logits, atol=1e-3)  # the masking matters
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    for got, want in zip(got_hidden, want_hidden, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # the original model is untouched and prune-all-kept is the identity
    same = prune_structured(model, StructuredKeep())
    np.testing.assert_allclose(vit_forward(same, x)[0], dense_logits, atol=1e-6)


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_llm_pruned_equals_masked_dense(name):
    model, keep = llm_model(name), LLM_KEEP[name]
    cfg = model.config
    pruned = prune_structured(model, keep)
    groups = tuple(len(k) for k in keep.heads)
    assert pruned.config.layer_kv_heads == groups
    assert pruned.config.layer_heads == tuple(g * cfg.num_groups for g in groups)
    assert pruned.config.num_heads == cfg.num_heads and pruned.config.head_dim == cfg.head_dim
    assert pruned.layers[0].self_attn.q_proj.kernel.shape == (64, groups[0] * cfg.num_groups * 16)
    assert pruned.layers[0].self_attn.k_proj.kernel.shape == (64, groups[0] * 16)
    masked = llm_masked(model, keep)
    ids = ids_of()
    want_logits, want_hidden = llm_forward(masked, ids)
    got_logits, got_hidden = llm_forward(pruned, ids)
    assert not np.allclose(llm_forward(model, ids)[0], want_logits, atol=1e-3)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    for got, want in zip(got_hidden, want_hidden, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    # with a KV cache (prefill, then decode steps): the same greedy tokens, and the pruned
    # cache holds exactly the kept key / value heads of the masked model's cache
    assert [k.shape[2] for k in init_cache(pruned.config, 2, 9).keys] == list(groups)
    got = generate_greedy(pruned, ids, 6)
    want = generate_greedy(masked, ids, 6)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    for i, kept in enumerate(keep.heads):
        for a, b in (
            (got.cache.keys[i], want.cache.keys[i]),
            (got.cache.values[i], want.cache.values[i]),
        ):
            np.testing.assert_allclose(a, b[:, :, list(kept)], atol=1e-5, rtol=1e-5)


def test_zero_heads_and_channels_leave_only_the_output_biases():
    cfg = dataclasses.replace(VIT, layer_heads=(0, 4, 4), layer_mlp=(0, 24, 24))
    model = materialize(ViT, cfg)
    _, hidden_states = vit_forward(model, images())
    blk = model.blocks[0]
    assert blk.attn.query.kernel.shape == (32, 0) and blk.mlp.fc2.kernel.shape == (0, 32)
    bias = blk.attn.out.bias[...] + blk.mlp.fc2.bias[...]
    np.testing.assert_allclose(hidden_states[1], hidden_states[0] + bias, atol=1e-6)
    # token pruning that would read the attention of a head-less block is refused
    plan = PruningPlan((PruneStage(layer=1, method="topk", keep=0.5),))
    with pytest.raises(ValueError, match=r"block 0's attention.*0 heads"):
        model(images(), plan=plan)

    lcfg = dataclasses.replace(GQA, layer_kv_heads=(0, 2, 2, 0), layer_heads=None, layer_mlp=None)
    lm = materialize(LlamaLM, lcfg)
    ids = ids_of()
    o = nnx.jit(lambda m, x: m(x, return_hidden_states=True, return_attention_at=(0,)))(lm, ids)
    layer = lm.layers[0]
    h0 = o.hidden_states[0]  # attention adds nothing (no o_proj bias in Llama)
    mlp = nnx.jit(lambda lyr, h: lyr.mlp(lyr.post_attention_layernorm(h)))(layer, h0)
    np.testing.assert_allclose(o.hidden_states[1], h0 + mlp, atol=1e-5)
    assert o.attentions[0].shape == (2, 0, 7, 7)
    assert generate_greedy(lm, ids, 3).tokens.shape == (2, 3)


def test_pruned_forward_does_not_retrace(compile_counter):
    model = vit_model()
    a = prune_structured(model, VIT_KEEP)
    b = prune_structured(model, VIT_KEEP)  # equal config -> equal graphdef
    assert a.config == b.config and hash(a.config) == hash(b.config)
    vit_forward(a, images())
    with compile_counter() as counter:
        vit_forward(b, images(seed=7))
    assert counter.count == 0, counter.messages


# ------------------------------------------------------------------------------ counts


@pytest.mark.parametrize(
    "config",
    [
        VIT,
        dataclasses.replace(VIT, layer_heads=(1, 0, 4), layer_mlp=(3, 0, 24)),
        vit_config(
            "mnist/4",
            hidden_size=32,
            num_layers=2,
            class_token=True,
            distillation_token=True,
            num_registers=2,
            pool="cls_dist",
            pooler=True,
            pre_norm=True,
            qkv_bias=False,
            patch_bias=False,
            layer_heads=(2, 3),
        ),
        vit_config(
            "mnist/4",
            hidden_size=32,
            num_layers=2,
            pos_embed="sincos",
            pool="mean",
            class_token=False,
            final_norm="none",
            num_classes=0,
        ),
        MHA,
        dataclasses.replace(
            GQA, layer_kv_heads=(0, 1, 2, 1), layer_heads=None, layer_mlp=(0, 1, 2, 40)
        ),
        llm_config(
            "tiny",
            vocab_size=64,
            tie_word_embeddings=True,
            attention_bias=True,
            attention_out_bias=True,
            layer_heads=(2, 0, 4, 2),
        ),
    ],
)
def test_param_count_equals_the_analytic_count(config):
    model_type = ViT if isinstance(config, ViTConfig) else LlamaLM
    abstract = nnx.eval_shape(lambda: model_type(config, rngs=nnx.Rngs(0)))
    assert param_count(abstract) == config_param_count(config)


def test_pruned_param_counts_and_flops():
    model = vit_model()
    pruned = prune_structured(model, VIT_KEEP)
    assert param_count(pruned) == config_param_count(pruned.config) < param_count(model)
    # a head costs 4 D hd + 3 hd parameters, a channel 2 D + 1
    heads_gone = 12 - 5
    channels_gone = 72 - 8
    diff = param_count(model) - param_count(pruned)
    assert diff == heads_gone * (4 * 32 * 8 + 3 * 8) + channels_gone * (2 * 32 + 1)
    t = VIT.num_prefix + VIT.num_patches
    fdiff = config_flops(VIT) - config_flops(pruned.config)
    assert fdiff == heads_gone * (8 * t * 32 * 8 + 4 * t * t * 8) + channels_gone * 4 * t * 32
    for name in ("mha", "gqa"):
        p = prune_structured(llm_model(name), LLM_KEEP[name])
        assert param_count(p) == config_param_count(p.config)
    assert config_flops(GQA, tokens=10) > config_flops(GQA, tokens=5)


# ------------------------------------------------------------------------------ importance


def np_state(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(state)
    return {n: np.asarray(v, np.float64) for n, v in zip(leaf_names(state), leaves, strict=True)}


def test_magnitude_importance_equals_numpy():
    model = vit_model()
    w = np_state(model)
    hd = 8
    heads, mlp = head_importance(model), mlp_importance(model)
    for i in range(3):
        p = f"blocks/{i}/attn/"
        want = []
        for h in range(4):
            c = slice(h * hd, (h + 1) * hd)
            sq = np.sum(w[p + "out/kernel"][c] ** 2)
            for n in ("query", "key", "value"):
                sq += np.sum(w[p + n + "/kernel"][:, c] ** 2) + np.sum(w[p + n + "/bias"][c] ** 2)
            want.append(np.sqrt(sq))
        np.testing.assert_allclose(heads[i], want, rtol=1e-5)
        p = f"blocks/{i}/mlp/"
        want = np.sqrt(
            np.sum(w[p + "fc1/kernel"] ** 2, 0) + w[p + "fc1/bias"] ** 2
            + np.sum(w[p + "fc2/kernel"] ** 2, 1)
        )  # fmt: skip
        np.testing.assert_allclose(mlp[i], want, rtol=1e-5)

    lm = llm_model("gqa")  # 2 groups of 2 query heads, hd 16
    w = np_state(lm)
    groups = head_importance(lm)
    assert [g.shape for g in groups] == [(2,)] * 4
    for i in range(4):
        p = f"layers/{i}/self_attn/"
        for g in range(2):
            q = slice(32 * g, 32 * (g + 1))
            kv = slice(16 * g, 16 * (g + 1))
            sq = np.sum(w[p + "q_proj/kernel"][:, q] ** 2) + np.sum(w[p + "o_proj/kernel"][q] ** 2)
            sq += np.sum(w[p + "k_proj/kernel"][:, kv] ** 2)
            sq += np.sum(w[p + "v_proj/kernel"][:, kv] ** 2)
            want = np.sqrt(sq)
            np.testing.assert_allclose(groups[i][g], want, rtol=1e-5)
    ch = mlp_importance(lm)
    p = "layers/2/mlp/"
    want = np.sqrt(
        np.sum(w[p + "gate_proj/kernel"] ** 2, 0) + np.sum(w[p + "up_proj/kernel"] ** 2, 0)
        + np.sum(w[p + "down_proj/kernel"] ** 2, 1)
    )  # fmt: skip
    np.testing.assert_allclose(ch[2], want, rtol=1e-5)


def vit_loss(model, batch):
    x, y = batch
    logits = model(x).logits
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def llm_loss(model, ids):
    logits = model(ids[:, :-1]).logits
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], axis=2))


def _scaled(model, scale: dict[str, tuple[int, slice, float]]):
    """The model with the given slices (leaf name -> (axis, slice, factor)) multiplied."""
    state = jax.tree.map(lambda x: np.array(x), nnx.state(model))
    flat = dict(zip(leaf_names(state), jax.tree.leaves(state), strict=True))
    for name, (axis, sl, f) in scale.items():
        idx = (slice(None),) * axis + (sl,)
        flat[name][idx] = flat[name][idx] * f
    return nnx.merge(nnx.graphdef(model), jax.tree.map(jnp.asarray, state))


def _fd(loss_of, model, unit: dict[str, tuple[int, slice]], eps: float = 1e-2) -> float:
    """Central finite difference of the loss along ``alpha`` (the unit's weights times
    alpha) at alpha = 1: equals sum over the unit of w * dL/dw."""
    up = loss_of(_scaled(model, {n: (a, s, 1 + eps) for n, (a, s) in unit.items()}))
    down = loss_of(_scaled(model, {n: (a, s, 1 - eps) for n, (a, s) in unit.items()}))
    return float(up - down) / (2 * eps)


def test_taylor_importance_equals_a_finite_difference():
    model = vit_model()
    rng = np.random.default_rng(11)
    batches = [
        (images(4, seed=s), jnp.asarray(rng.integers(0, 10, 4), jnp.int32)) for s in (20, 21)
    ]
    grads = taylor_grads(model, vit_loss, batches)
    # the mean gradient equals the gradient of the mean loss
    mean_loss = lambda m: (vit_loss(m, batches[0]) + vit_loss(m, batches[1])) / 2
    direct = nnx.jit(nnx.grad(mean_loss))(model)
    want = jax.tree.leaves(nnx.state(direct, nnx.Param))
    for a, b in zip(jax.tree.leaves(grads), want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
    heads = head_importance(model, method="taylor", grads=grads)
    mlp = mlp_importance(model, method="taylor", grads=grads)
    loss_of = jax.jit(lambda m: mean_loss(m))
    hd = 8
    for layer, h in ((0, 1), (2, 3)):
        p, cols = f"blocks/{layer}/attn/", slice(h * hd, (h + 1) * hd)
        unit = {p + n + "/kernel": (1, cols) for n in ("query", "key", "value")}
        unit |= {p + n + "/bias": (0, cols) for n in ("query", "key", "value")}
        unit[p + "out/kernel"] = (0, cols)
        fd = _fd(loss_of, model, unit)
        np.testing.assert_allclose(heads[layer][h], abs(fd), rtol=2e-2, atol=2e-4)
    p = "blocks/1/mlp/"
    for c in (0, 7):
        unit = {p + "fc1/kernel": (1, slice(c, c + 1)), p + "fc1/bias": (0, slice(c, c + 1)),
                p + "fc2/kernel": (0, slice(c, c + 1))}  # fmt: skip
        np.testing.assert_allclose(mlp[1][c], abs(_fd(loss_of, model, unit)), rtol=2e-2, atol=2e-4)
    assert float(jnp.max(heads[0])) > 1e-3  # not trivially zero


def test_taylor_importance_llm_groups():
    lm = llm_model("gqa")
    batches = [ids_of((2, 8), seed=s) for s in (30, 31)]
    grads = taylor_grads(lm, llm_loss, batches)
    groups = head_importance(lm, method="taylor", grads=grads)
    loss_of = jax.jit(lambda m: (llm_loss(m, batches[0]) + llm_loss(m, batches[1])) / 2)
    p = "layers/1/self_attn/"
    q, kv = slice(32, 64), slice(16, 32)  # group 1 = query heads 2, 3 and KV head 1
    unit = {p + "q_proj/kernel": (1, q), p + "k_proj/kernel": (1, kv),
            p + "v_proj/kernel": (1, kv), p + "o_proj/kernel": (0, q)}  # fmt: skip
    np.testing.assert_allclose(groups[1][1], abs(_fd(loss_of, lm, unit)), rtol=2e-2, atol=2e-4)


def test_importance_errors():
    model = vit_model()
    with pytest.raises(ValueError, match="method must be one of"):
        head_importance(model, method="fisher")
    with pytest.raises(ValueError, match="needs grads"):
        mlp_importance(model, method="taylor")
    with pytest.raises(ValueError, match="only used by method='taylor'"):
        head_importance(model, grads={})
    with pytest.raises(ValueError, match="missing"):
        head_importance(model, method="taylor", grads={"blocks": {}})
    with pytest.raises(ValueError, match="model must be a ViT or a LlamaLM"):
        head_importance(object())
    with pytest.raises(ValueError, match="at least one batch"):
        taylor_grads(model, vit_loss, [])


# ------------------------------------------------------------------------------ allocation


def np_allocate(heads, mlp, config, budget, kind="params", tokens=0, mins=(0, 0)):
    """NumPy oracle: priorities = score / mean of the kind's scores over all layers, lexsorted
    (priority, kind, layer, index); the shortest removable prefix meeting the budget."""
    hd = config.hidden_size // config.num_heads
    d = config.hidden_size
    if isinstance(config, ViTConfig):
        costs = (4 * d * hd + 3 * hd, 2 * d + 1) if kind == "params" else (
            8 * tokens * d * hd + 4 * tokens * tokens * hd, 4 * tokens * d)  # fmt: skip
    else:
        g = config.num_heads // config.num_kv_heads
        b = int(config.attention_bias)
        costs = ((d + b) * (g + 2) * hd + g * hd * d, 3 * d + 2 * int(config.mlp_bias))
    pr, kinds, layers, index = [], [], [], []
    for k, scores in enumerate((heads, mlp)):
        mean = np.concatenate(scores).mean()
        for i, s in enumerate(scores):
            pr += list(np.asarray(s) / mean)
            kinds += [k] * len(s)
            layers += [i] * len(s)
            index += list(range(len(s)))
    order = np.lexsort((index, layers, kinds, pr))
    total = config_param_count(config) if kind == "params" else config_flops(config, tokens=tokens)
    target = budget * total
    left = [[len(s) for s in heads], [len(s) for s in mlp]]
    gone = set()
    for u in order:
        if total <= target:
            break
        k, i = kinds[u], layers[u]
        if left[k][i] <= mins[k]:
            continue
        left[k][i] -= 1
        gone.add((k, i, index[u]))
        total -= costs[k]
    keep = [
        tuple(tuple(j for j in range(len(s)) if (k, i, j) not in gone) for i, s in enumerate(sc))
        for k, sc in enumerate((heads, mlp))
    ]
    return StructuredKeep(heads=keep[0], mlp=keep[1])


def random_scores(config, seed):
    rng = np.random.default_rng(seed)
    h, m = unit_counts(config)
    return [rng.random(n) for n in h], [rng.random(n) for n in m]


@pytest.mark.parametrize("budget", [0.95, 0.8, 0.6])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_allocate_meets_the_budget_and_equals_the_numpy_oracle(budget, kind):
    heads, mlp = random_scores(VIT, seed=int(budget * 100))
    keep = allocate_units(heads, mlp, config=VIT, budget=budget, kind=kind)
    t = VIT.num_prefix + VIT.num_patches
    assert keep == np_allocate(heads, mlp, VIT, budget, kind, tokens=t)
    pruned = prune_structured(vit_model(), keep)
    measure = config_param_count if kind == "params" else config_flops
    assert measure(pruned.config) <= budget * measure(VIT)
    # greedy: one more unit back would exceed the budget (the prefix is the shortest)
    n_kept = sum(map(len, keep.heads)) + sum(map(len, keep.mlp))
    assert n_kept < sum(unit_counts(VIT)[0]) + sum(unit_counts(VIT)[1])
    # within a kind, every removed unit scores no more than every kept one (global ranking)
    for k, (scores, kept) in enumerate(((heads, keep.heads), (mlp, keep.mlp))):
        s_kept = [scores[i][j] for i in range(3) for j in kept[i]]
        s_gone = [scores[i][j] for i in range(3) for j in removed(kept[i], len(scores[i]))]
        if s_kept and s_gone:
            assert max(s_gone) <= min(s_kept), k


def test_allocate_is_global_and_respects_min_per_layer():
    heads, mlp = random_scores(VIT, seed=1)
    heads[1] = heads[1] * 0.01  # block 1's heads and channels all unimportant
    mlp[1] = mlp[1] * 0.01
    keep = allocate_units(heads, mlp, config=VIT, budget=0.75)
    assert len(keep.heads[1]) < min(len(keep.heads[0]), len(keep.heads[2]))
    assert len(keep.mlp[1]) < min(len(keep.mlp[0]), len(keep.mlp[2]))
    # per-layer normalisation removes that preference: every layer ranks its own units
    per_layer = allocate_units(heads, mlp, config=VIT, budget=0.75, normalize="layer")
    assert len(per_layer.mlp[1]) > len(keep.mlp[1])
    floor = allocate_units(heads, mlp, config=VIT, budget=0.75, min_per_layer=(2, 10))
    assert min(map(len, floor.heads)) >= 2 and min(map(len, floor.mlp)) >= 10
    small = prune_structured(vit_model(), floor).config
    assert config_param_count(small) <= 0.75 * config_param_count(VIT)
    assert allocate_units(heads, mlp, config=VIT, budget=1.0) == StructuredKeep(
        heads=((0, 1, 2, 3),) * 3, mlp=(tuple(range(24)),) * 3
    )


def test_allocate_llm_groups_and_flops():
    heads, mlp = random_scores(GQA, seed=2)
    keep = allocate_units(heads, mlp, config=GQA, budget=0.7)
    assert keep == np_allocate(heads, mlp, GQA, 0.7)
    lm = prune_structured(llm_model("gqa"), keep)
    assert param_count(lm) <= 0.7 * config_param_count(GQA)
    fk = allocate_units(heads, mlp, config=GQA, budget=0.7, kind="flops", tokens=32)
    small = prune_structured(llm_model("gqa"), fk).config
    assert config_flops(small, tokens=32) <= 0.7 * config_flops(GQA, tokens=32)
    # the same scores, reached through the importance functions of a pruned model
    again = head_importance(lm)
    assert [a.shape[0] for a in again] == [len(k) for k in keep.heads]


def test_allocate_errors():
    heads, mlp = random_scores(VIT, seed=3)
    with pytest.raises(ValueError, match="budget must be a fraction in"):
        allocate_units(heads, mlp, config=VIT, budget=0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        allocate_units(heads, mlp, config=VIT, budget=0.5, kind="latency")
    with pytest.raises(ValueError, match="normalize must be one of"):
        allocate_units(heads, mlp, config=VIT, budget=0.5, normalize="l1")
    with pytest.raises(ValueError, match="head_scores must hold one array per layer"):
        allocate_units(heads[:2], mlp, config=VIT, budget=0.5)
    with pytest.raises(ValueError, match=r"mlp_scores\[1\] must have shape \(24,\)"):
        allocate_units(heads, [mlp[0], mlp[1][:3], mlp[2]], config=VIT, budget=0.5)
    with pytest.raises(ValueError, match=r"head_scores\[0\] must be finite"):
        allocate_units([np.full(4, np.nan), *heads[1:]], mlp, config=VIT, budget=0.5)
    with pytest.raises(ValueError, match="cannot be met"):
        allocate_units(heads, mlp, config=VIT, budget=0.05)
    with pytest.raises(ValueError, match=r"tokens .* is required"):
        allocate_units(*random_scores(GQA, 0), config=GQA, budget=0.5, kind="flops")
    with pytest.raises(ValueError, match="min_per_layer"):
        allocate_units(heads, mlp, config=VIT, budget=0.5, min_per_layer=-1)


# ------------------------------------------------------------------------------ config, keep


def test_config_round_trip_and_saved_model_reloads(tmp_path):
    for cfg in (
        dataclasses.replace(VIT, layer_heads=(0, 2, 3), layer_mlp=(3, 0, 5), image_size=(28, 28)),
        llm_config("llama3.2-1b", num_layers=2, layer_kv_heads=(3, 8), layer_mlp=(5, 8192)),
        LLM_CFG["mha"],
    ):
        text = config_to_json(cfg)
        back = config_from_json(text)
        assert back == cfg and hash(back) == hash(cfg)
    pruned = prune_structured(llm_model("gqa"), LLM_KEEP["gqa"])
    save_pruned(tmp_path / "llm", pruned)
    again = load_pruned(tmp_path / "llm")
    assert again.config == pruned.config
    ids = ids_of()
    np.testing.assert_array_equal(llm_forward(again, ids)[0], llm_forward(pruned, ids)[0])
    vit = prune_structured(vit_model(), VIT_KEEP)
    save_pruned(tmp_path / "vit", vit)
    reloaded = load_pruned(tmp_path / "vit")
    np.testing.assert_array_equal(vit_forward(reloaded, images())[0], vit_forward(vit, images())[0])
    with pytest.raises(ValueError, match="type must be one of"):
        config_from_json('{"type": "VimConfig", "config": {}}')
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        config_from_json('{"type": "ViTConfig", "config": {"heads": 3}}')
    with pytest.raises(ValueError, match="must be the JSON of config_to_json"):
        config_from_json("not json")
    (tmp_path / "vit" / "config.json").write_text(config_to_json(VIT))
    with pytest.raises(ValueError, match=r"load_pruned: .* has shape"):
        load_pruned(tmp_path / "vit")


@pytest.mark.parametrize(
    "keep, match",
    [
        (StructuredKeep(heads=((0,), (1,))), r"keep.heads has 2 layers; the model has 3"),
        (StructuredKeep(mlp=((0,), (24,), (1,))), r"keep.mlp\[1\] has indices \[24\] out of range"),
        (StructuredKeep(heads=((0,), (-1,), (1,))), r"keep.heads\[1\] has indices \[-1\]"),
        ("all", "keep must be a StructuredKeep"),
    ],
)
def test_prune_errors(keep, match):
    with pytest.raises(ValueError, match=match):
        prune_structured(vit_model(), keep)


def test_keep_and_config_errors():
    with pytest.raises(ValueError, match=r"heads\[0\] has duplicate indices \[1\]"):
        StructuredKeep(heads=((1, 0, 1),))
    with pytest.raises(ValueError, match="mlp must be None or one sequence"):
        StructuredKeep(mlp=(3, 4))
    assert StructuredKeep(heads=[[2, 0]]).heads == ((0, 2),)
    with pytest.raises(ValueError, match="ViTConfig: layer_heads must have num_layers = 3"):
        dataclasses.replace(VIT, layer_heads=(1, 2))
    with pytest.raises(ValueError, match=r"ViTConfig: layer_mlp\[2\] must be an int in \[0, 24\]"):
        dataclasses.replace(VIT, layer_mlp=(1, 2, 25))
    with pytest.raises(ValueError, match=r"layer_heads\[1\] = 3 must be a multiple of num_groups"):
        dataclasses.replace(GQA, layer_heads=(2, 3, 4, 4), layer_kv_heads=None)
    with pytest.raises(ValueError, match=r"layer_kv_heads .* must equal layer_heads // num_groups"):
        fields = dataclasses.asdict(GQA)
        LlamaConfig(**{**fields, "layer_heads": (2, 2, 4, 4), "layer_kv_heads": (1, 1, 2, 1)})
    with pytest.raises(ValueError, match="layer_kv_heads must be None or a tuple"):
        dataclasses.replace(GQA, layer_kv_heads=3, layer_heads=None)
    derived = dataclasses.replace(GQA, layer_heads=(2, 0, 4, 2), layer_kv_heads=None)
    assert derived.layer_kv_heads == (1, 0, 2, 1) and derived.heads_per_layer == (2, 0, 4, 2)
    assert GQA.layer_heads is None and GQA.heads_per_layer == (4, 4, 4, 4)
