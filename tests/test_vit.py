"""pruneax.models.ViT: variants and parameter counts, token layout, attention against a NumPy
recomputation, proportional attention, pruning-plan plumbing, jit without retracing, mean
pooling, registers, the fixed sin-cos embedding, bfloat16, and input / config errors.

Speed: most models here are abstract (``nnx.eval_shape``) and filled from NumPy
(``materialize``): JAX compiles every random initializer per shape, which costs seconds on a busy
2-core CPU. One small model (``real``) goes through the real initializers.
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

import pruneax.models as M
from pruneax.models.vit import FixedEmbedding, PruneStage, ViTStage
from pruneax.weights import leaf_names, prunable_names
from tests._models import random_model

TINY = M.ViTConfig(
    image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=48,
    num_classes=5,
)  # fmt: skip


def materialize(config: M.ViTConfig, seed: int = 0, std: float = 0.2, **kw) -> M.ViT:
    """A ViT whose parameters are drawn with NumPy (``tests._models.random_model``)."""
    return random_model(M.ViT, config, seed, std, **kw)


def images(config: M.ViTConfig, batch: int = 2, seed: int = 1) -> jax.Array:
    h, w = config.image_hw
    x = np.random.default_rng(seed).normal(size=(batch, h, w, config.num_channels))
    return jnp.asarray(x, jnp.float32)


@functools.partial(nnx.jit, static_argnames=("plan", "return_attention", "return_hidden_states"))
def forward(
    model: M.ViT,
    x: jax.Array,
    plan: M.PruningPlan | None = None,
    return_attention: bool = False,
    return_hidden_states: bool = False,
) -> M.ViTOutput:
    """The jitted forward pass (one compile per model config instead of one per op)."""
    return model(
        x, plan=plan, return_attention=return_attention, return_hidden_states=return_hidden_states
    )


@pytest.fixture(scope="module")
def tiny() -> M.ViT:
    return materialize(TINY)


@pytest.fixture(scope="module")
def real() -> M.ViT:
    """Real initializers; sin-cos positions, a distillation token and two registers."""
    config = dataclasses.replace(
        TINY, num_layers=1, pos_embed="sincos", distillation_token=True, num_registers=2
    )
    return M.ViT(config, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------ variants


def test_variant_table():
    assert list(M.VIT_VARIANTS) == ["Ti/16", "S/16", "B/16", "mnist/4", "cifar/4"]
    mnist = M.vit_config("mnist/4")
    assert (mnist.image_size, mnist.num_channels, mnist.patch_size) == (28, 1, 4)
    assert (mnist.grid, mnist.num_patches, mnist.num_classes) == ((7, 7), 49, 10)
    cifar = M.vit_config("cifar/4")
    assert (cifar.grid, cifar.hidden_size, cifar.num_layers, cifar.num_heads) == (
        (8, 8),
        192,
        12,
        3,
    )
    assert M.vit_config("S/16", num_classes=100).num_classes == 100
    # the table is not changed by overrides
    assert "num_classes" not in M.VIT_VARIANTS["S/16"]


# timm's vit_{tiny,small,base}_patch16_224 parameter counts (1000 classes).
@pytest.mark.parametrize(
    "name, params",
    [("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656), ("mnist/4", None)],
)
def test_variant_shapes_and_counts(name, params):
    config = M.vit_config(name)
    model = nnx.eval_shape(lambda: M.ViT(config, rngs=nnx.Rngs(0)))
    if params is not None:
        assert M.param_count(model) == params
    x = jax.ShapeDtypeStruct((2, *config.image_hw, config.num_channels), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    n, d = config.num_patches, config.hidden_size
    assert out.logits.shape == (2, config.num_classes)
    assert out.hidden.shape == (2, 1 + n, d)
    assert out.pooled.shape == (2, d)
    assert out.sizes.shape == (2, 1 + n)
    assert out.kept == () and out.attentions is None and out.hidden_states is None


def test_unknown_variant_lists_names():
    with pytest.raises(ValueError, match=r"Ti/16.*cifar/4.*got 'L/16'"):
        M.vit_config("L/16")
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        M.vit_config("Ti/16", hiden_size=3)


def test_prunable_leaves_are_the_kernels(tiny):
    names = prunable_names(nnx.state(tiny, nnx.Param))
    blocks = [
        f"blocks/{i}/{m}/kernel"
        for i in range(2)
        for m in ("attn/key", "attn/out", "attn/query", "attn/value", "mlp/fc1", "mlp/fc2")
    ]
    assert sorted(names) == sorted([*blocks, "head/kernel", "patch_embed/kernel"])


# ------------------------------------------------------------------------------ token layout


def test_token_order_and_row_major_patches():
    config = dataclasses.replace(
        TINY, image_size=(8, 12), distillation_token=True, num_registers=3, num_layers=1
    )
    model = materialize(config)
    assert (model.grid, model.num_patches, model.num_prefix) == ((2, 3), 6, 5)
    assert model.pos_embed.shape == (1, 2 + 6, 32)  # registers have no position
    x = images(config, batch=1)
    tokens = np.asarray(model.embed(x))[0]
    assert tokens.shape == (5 + 6, 32)
    pos = np.asarray(model.pos_embed[...])[0]
    np.testing.assert_allclose(tokens[0], model.cls_token[...][0, 0] + pos[0], rtol=1e-6)
    np.testing.assert_allclose(tokens[1], model.dist_token[...][0, 0] + pos[1], rtol=1e-6)
    np.testing.assert_allclose(tokens[2:5], model.registers[...][0], rtol=1e-6)
    kernel = np.asarray(model.patch_embed.kernel[...])  # [p, p, C, D]
    bias = np.asarray(model.patch_embed.bias[...])
    img = np.asarray(x)[0]
    for r in range(2):
        for c in range(3):
            patch = img[4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
            want = np.einsum("ijc,ijcd->d", patch, kernel) + bias + pos[2 + 3 * r + c]
            np.testing.assert_allclose(tokens[5 + 3 * r + c], want, rtol=1e-5, atol=1e-5)


def test_registers_flow_through_and_are_never_pooled(tiny):
    config = dataclasses.replace(TINY, num_registers=4)
    model = materialize(config)
    out = forward(model, images(config), return_hidden_states=True)
    assert out.hidden.shape == (2, 1 + 4 + 16, 32)
    assert all(h.shape == (2, 21, 32) for h in out.hidden_states)
    np.testing.assert_allclose(out.pooled, out.hidden[:, 0], rtol=1e-6)


# ------------------------------------------------------------------------------ attention


def _layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_attention_matches_numpy_recomputation(tiny):
    x = images(TINY)
    out = forward(tiny, x, return_attention=True, return_hidden_states=True)
    assert len(out.attentions) == 2 and len(out.hidden_states) == 3
    for probs in out.attentions:
        assert probs.shape == (2, 4, 17, 17) and probs.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
    block = tiny.blocks[1]
    h = np.asarray(out.hidden_states[1], np.float64)
    p = lambda v: np.asarray(v[...], np.float64)
    y = _layer_norm(h, p(block.norm1.scale), p(block.norm1.bias), TINY.layer_norm_eps)
    q = (y @ p(block.attn.query.kernel) + p(block.attn.query.bias)).reshape(2, 17, 4, 8)
    k = (y @ p(block.attn.key.kernel) + p(block.attn.key.bias)).reshape(2, 17, 4, 8)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.attentions[1], want, atol=1e-5)
    # the final norm applies to the last residual stream
    last = np.asarray(out.hidden_states[-1], np.float64)
    normed = _layer_norm(last, p(tiny.norm.scale), p(tiny.norm.bias), TINY.layer_norm_eps)
    np.testing.assert_allclose(out.hidden, normed, atol=1e-4)
    logits = normed[:, 0] @ p(tiny.head.kernel) + p(tiny.head.bias)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)
    # asking for nothing changes nothing (up to XLA fusing the two programs differently)
    plain = forward(tiny, x)
    np.testing.assert_allclose(plain.logits, out.logits, atol=1e-5)


def test_proportional_attention_equals_duplicated_tokens(tiny):
    """ToMe: one token of size 2 attends like two identical tokens of size 1."""
    attn = tiny.blocks[0].attn
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 4, 32)), jnp.float32)
    dup = jnp.concatenate([x, x[:, 3:]], axis=1)  # token 3 twice
    out_dup, probs_dup, _ = attn(dup, return_attention=True)
    size = jnp.asarray([[1.0, 1.0, 1.0, 2.0]])
    out_s, probs_s, keys = attn(x, size=size, return_attention=True, return_keys=True)
    np.testing.assert_allclose(out_s, out_dup[:, :4], atol=1e-5)
    merged = probs_dup[..., :4, 3] + probs_dup[..., :4, 4]
    np.testing.assert_allclose(probs_s[..., 3], merged, atol=1e-6)
    assert keys.shape == (1, 4, 4, 8)
    with pytest.raises(ValueError, match=r"size must be \[B, T\]"):
        attn(x, size=jnp.ones((1, 5)))


# ------------------------------------------------------------------------------ plan plumbing


_CALLS: list[dict] = []


@dataclasses.dataclass(frozen=True)
class ReverseStage:
    """A user-defined stage (the public ``ViTStage`` protocol): keeps the LAST ``keep`` patch
    tokens in reverse order, sizes 2, and optionally one synthetic token."""

    layer: int
    keep: int
    read: tuple[bool, bool] = (False, True)
    synthetic: bool = False
    in_block: bool = False
    uses_size: bool = True

    def reads(self):
        return {self.layer - 1: self.read}

    def out_tokens(self, n):
        return self.keep + self.synthetic

    def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key):
        _CALLS.append(dict(layer=self.layer, aux=aux, ids=patch_ids, p=num_prefix, grid=grid))
        n, k = patch_ids.shape[1], self.keep
        src = jnp.broadcast_to(jnp.arange(n - 1, n - 1 - k, -1, dtype=jnp.int32), (x.shape[0], k))
        if self.synthetic:
            src = jnp.concatenate([src, jnp.full((x.shape[0], 1), -1, jnp.int32)], axis=1)
        patches = jnp.take_along_axis(x[:, num_prefix:], jnp.maximum(src, 0)[..., None], axis=1)
        new_x = jnp.concatenate([x[:, :num_prefix], patches], axis=1)
        new_size = jnp.concatenate([size[:, :num_prefix], 2 * jnp.ones(src.shape)], axis=1)
        return new_x, new_size, src


def test_plan_plumbing(tiny):
    """The forward loop calls a user's stage through the public protocol and composes kept."""
    assert isinstance(ReverseStage(1, 6), ViTStage)
    _CALLS.clear()
    plan = M.PruningPlan((ReverseStage(layer=1, keep=6),))
    out = tiny(images(TINY), plan=plan, return_attention=True)
    assert len(_CALLS) == 1 and _CALLS[0]["layer"] == 1 and _CALLS[0]["p"] == 1
    assert _CALLS[0]["grid"] == (4, 4)
    assert set(_CALLS[0]["aux"]) == {0} and _CALLS[0]["aux"][0]["keys"].shape == (2, 4, 17, 8)
    np.testing.assert_array_equal(_CALLS[0]["ids"], np.tile(np.arange(16), (2, 1)))
    np.testing.assert_array_equal(out.kept[0], np.tile(np.arange(15, 9, -1), (2, 1)))
    assert out.hidden.shape == (2, 7, 32) and out.attentions[1].shape == (2, 4, 7, 7)
    np.testing.assert_array_equal(out.sizes, np.array([[1] + [2] * 6] * 2))

    _CALLS.clear()  # in a block: after block 0's attention, before its MLP
    stage = ReverseStage(layer=1, keep=5, read=(True, False), synthetic=True, in_block=True)
    out = tiny(images(TINY), plan=M.PruningPlan((stage,)), return_hidden_states=True)
    assert _CALLS[0]["aux"][0]["attn"].shape == (2, 4, 17, 17)
    np.testing.assert_array_equal(out.kept[0][0], [15, 14, 13, 12, 11, -1])
    assert out.hidden_states[1].shape == (2, 7, 32)  # block 0's MLP ran on the kept tokens


def test_mean_pool_is_size_weighted_after_merging():
    @dataclasses.dataclass(frozen=True)
    class FirstTwo:  # keeps patch tokens 0 and 1 with sizes 1 and 3
        layer: int = 1
        in_block: bool = False
        uses_size: bool = True

        def reads(self):
            return {}

        def out_tokens(self, n):
            return 2

        def apply(self, x, *, size, aux, patch_ids, num_prefix, grid, key):
            src = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (x.shape[0], 2))
            return x[:, :2], jnp.asarray([[1.0, 3.0]] * x.shape[0]), src

    config = dataclasses.replace(TINY, class_token=False, pool="mean", final_norm="pooled")
    model = materialize(config)
    plan = M.PruningPlan((FirstTwo(),))
    out = nnx.jit(lambda m, x: m(x, plan=plan))(model, images(config))
    want = model.norm((out.hidden[:, 0] + 3 * out.hidden[:, 1]) / 4)
    np.testing.assert_allclose(out.pooled, want, atol=1e-5)


def test_mean_pool_without_plan():
    config = dataclasses.replace(TINY, num_registers=2, pool="mean")
    model = materialize(config)
    out = forward(model, images(config))
    assert model.num_prefix == 3
    np.testing.assert_allclose(out.pooled, out.hidden[:, 3:].mean(1), atol=1e-6)
    np.testing.assert_allclose(out.logits, model.head(out.pooled), atol=1e-6)


def test_deit_teacher_pool_averages_two_heads():
    config = dataclasses.replace(TINY, distillation_token=True, pool="cls_dist")
    model = materialize(config)
    out = forward(model, images(config))
    want = (model.head(out.hidden[:, 0]) + model.head_dist(out.hidden[:, 1])) / 2
    np.testing.assert_allclose(out.logits, want, atol=1e-6)


def test_clip_layout_pooled_norm_and_pooler():
    config = dataclasses.replace(TINY, pre_norm=True, final_norm="pooled", pooler=True)
    model = materialize(config)
    out = forward(model, images(config), return_hidden_states=True)
    np.testing.assert_array_equal(out.hidden, out.hidden_states[-1])  # raw last state
    np.testing.assert_allclose(out.pooled, model.norm(out.hidden[:, 0]), atol=1e-6)
    np.testing.assert_allclose(out.pooler_output, jnp.tanh(model.pooler(out.pooled)), atol=1e-6)
    emb = model.pre_norm(model.embed(images(config)))
    np.testing.assert_allclose(out.hidden_states[0], emb, atol=1e-6)


# ------------------------------------------------------------------------------ jit, dtypes


def test_jit_matches_eager_and_does_not_retrace(tiny):
    traces = []

    def forward(m, x):
        traces.append(1)
        return m(x, plan=None)

    f = nnx.jit(forward)
    x = images(TINY)
    a = f(tiny, x)
    b = f(tiny, x + 1.0)
    assert len(traces) == 1
    np.testing.assert_allclose(a.logits, tiny(x).logits, atol=1e-5)
    assert not np.allclose(a.logits, b.logits)
    # the plan is a static, hashable argument
    g = nnx.jit(lambda m, x, plan: m(x, plan=plan), static_argnames="plan")
    np.testing.assert_allclose(g(tiny, x, plan=None).logits, a.logits, atol=1e-6)
    g(tiny, x, plan=None)
    assert hash(M.PruningPlan.at(2, 0.5)) == hash(M.PruningPlan.at(2, 0.5))


def test_bfloat16_runs_and_is_close_to_float32():
    f32 = materialize(TINY, std=0.1)
    bf16 = materialize(TINY, std=0.1, dtype=jnp.bfloat16)
    x = images(TINY)
    a = forward(f32, x, return_attention=True)
    b = forward(bf16, x, return_attention=True)
    assert b.hidden.dtype == jnp.bfloat16 and b.attentions[0].dtype == jnp.float32
    assert b.logits.dtype == jnp.bfloat16
    scale = float(jnp.abs(a.logits).max())
    assert float(jnp.abs(a.logits - b.logits.astype(jnp.float32)).max()) < 0.05 * scale
    assert float(jnp.abs(a.attentions[1] - b.attentions[1]).max()) < 0.02
    stored = materialize(TINY, std=0.1, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert stored.blocks[0].attn.query.kernel.dtype == jnp.bfloat16
    assert forward(stored, x).logits.dtype == jnp.bfloat16


# ------------------------------------------------------------------------------ real init


def test_real_init_is_timm_style(real):
    assert real.num_prefix == 4 and real.head_dist is None
    kernel = np.asarray(real.blocks[0].mlp.fc1.kernel[...])
    assert 0.015 < kernel.std() < 0.025 and np.abs(kernel).max() <= 0.04 + 1e-6
    assert np.abs(np.asarray(real.patch_embed.kernel[...])).max() <= 0.04 + 1e-6
    assert not np.any(np.asarray(real.blocks[0].attn.query.bias[...]))
    np.testing.assert_array_equal(real.blocks[0].norm1.scale[...], 1.0)
    np.testing.assert_array_equal(real.norm.bias[...], 0.0)
    for token in (real.cls_token, real.dist_token, real.registers):
        assert isinstance(token, nnx.Param) and 0.005 < float(jnp.std(token[...])) < 0.04
    out = forward(real, images(real.config))
    assert out.logits.shape == (2, 5) and out.hidden.shape == (2, 4 + 16, 32)


def _mae_sincos(embed_dim, grid_size):
    """facebookresearch/mae util/pos_embed.py (square grid, no cls), verbatim in NumPy."""

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], 1)


def test_sincos_position_embedding_is_fixed(real):
    pos = real.pos_embed
    assert isinstance(pos, FixedEmbedding) and not isinstance(pos, nnx.Param)
    assert pos.shape == (1, 2 + 16, 32)
    np.testing.assert_array_equal(pos[...][0, :2], 0.0)  # CLS / distillation positions
    np.testing.assert_allclose(pos[...][0, 2:], _mae_sincos(32, 4), atol=1e-6)
    assert "pos_embed" not in leaf_names(nnx.state(real, nnx.Param))
    # gradients w.r.t. the parameters do not include it
    grads = nnx.grad(lambda m: m.embed(images(real.config)).sum())(real)
    assert "pos_embed" not in leaf_names(grads)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "shape, match",
    [
        ((16, 16, 3), r"\[B, H, W, C\].*got shape \(16, 16, 3\)"),
        ((2, 3, 16, 16), r"\(H, W, C\) = \(16, 16, 3\).*got shape \(2, 3, 16, 16\)"),
        ((2, 16, 20, 3), r"got shape \(2, 16, 20, 3\)"),
        ((2, 16, 16, 1), r"got shape \(2, 16, 16, 1\)"),
    ],
)
def test_bad_images_fail_early(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny(jnp.zeros(shape))


def test_integer_images_and_bad_plans_fail(tiny):
    with pytest.raises(ValueError, match="floating point"):
        tiny(jnp.zeros((2, 16, 16, 3), jnp.uint8))
    with pytest.raises(ValueError, match="plan must be a PruningPlan"):
        tiny(images(TINY), plan=(PruneStage(1, 4),))
    with pytest.raises(ValueError, match="model has 2 blocks"):
        tiny(images(TINY), plan=M.PruningPlan.at(2, 4))
    with pytest.raises(ValueError, match="config must be a ViTConfig"):
        M.ViT(dict(hidden_size=32), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=30), r"divisible by patch_size 4"),
        (dict(image_size=(16, 18)), r"divisible by patch_size 4"),
        (dict(image_size=(16,)), r"image_size must be a positive int or \(height, width\)"),
        (dict(image_size=0), r"image_size must be"),
        (dict(num_heads=5), r"hidden_size 32 must be divisible by num_heads 5"),
        (dict(num_layers=0), r"num_layers must be a positive int; got 0"),
        (dict(hidden_size=32.0), r"hidden_size must be a positive int"),
        (dict(num_classes=-1), r"num_classes must be an int >= 0; got -1"),
        (dict(num_registers=-2), r"num_registers must be an int >= 0"),
        (dict(pos_embed="rope"), r"pos_embed must be one of \['learned', 'sincos', 'none'\]"),
        (dict(pool="max"), r"pool must be one of"),
        (dict(final_norm="last"), r"final_norm must be one of"),
        (dict(hidden_act="swish"), r"hidden_act must be one of \['gelu', 'gelu_tanh'"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps must be a float > 0"),
        (dict(class_token=False), r"pool='cls' needs class_token=True"),
        (dict(class_token=False, pool="mean", distillation_token=True), r"needs class_token"),
        (dict(pool="cls_dist"), r"pool='cls_dist'.*needs distillation_token=True"),
        (dict(hidden_size=30, num_heads=6, pos_embed="sincos"), r"divisible by 4; got 30"),
        (dict(qkv_bias=1), r"qkv_bias must be a bool"),
    ],
)
def test_bad_config_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **overrides)


def test_config_is_hashable_and_normalized():
    a = M.ViTConfig(image_size=[32, 48], patch_size=8, num_classes=np.int64(3))
    assert a.image_size == (32, 48) and a.grid == (4, 6) and type(a.num_classes) is int
    assert hash(a) == hash(M.ViTConfig(image_size=(32, 48), patch_size=8, num_classes=3))
