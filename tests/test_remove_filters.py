"""Physical removal of pruned filters (``remove_filters``) from ConvNet and LeNet-300-100.

The oracle is the original model with ``apply_masks(params, filter_masks(params, pruned))``:
a zeroed filter outputs relu(0) = 0, max-pools of zeros are zero, so the removed model must
compute the same logits (float32, 1e-5). Models are built abstractly and filled from NumPy
(random kernels AND biases: masking must zero the pruned biases too), so only the forward
passes compile.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pruneax import weights as W
from pruneax.models import param_count
from pruneax.models.convnets import CifarResNet, ConvNet, LeNet300100, lrp_plan, remove_filters


def filled(build, seed: int = 0) -> nnx.Module:
    """``build()``'s model with N(0, 2 / fan_in) kernels (He) and N(0, 0.1^2) biases, from
    NumPy."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    leaves = []
    for name, leaf in zip(W.leaf_names(state), jax.tree.leaves(state), strict=True):
        scale = math.sqrt(2 / math.prod(leaf.shape[:-1])) if name.endswith("kernel") else 0.1
        leaves.append(jnp.asarray(rng.normal(size=leaf.shape) * scale, jnp.float32))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def logits(model: nnx.Module, x) -> jax.Array:
    """``model(x)``, compiled as one program (faster to compile than op by op)."""
    return _forward(*nnx.split(model), x)


def masked_logits(model: nnx.Module, pruned, x) -> jax.Array:
    """The oracle: the ORIGINAL model with the pruned filters masked to zero."""
    graphdef, params = nnx.split(model, nnx.Param)
    masked = W.apply_masks(params, W.filter_masks(params, pruned))
    return _forward(graphdef, masked, x)


def random_pruned(model: nnx.Module, rng: np.random.Generator) -> list[tuple[str, int]]:
    """A random set per layer: 1 .. width // 2 outputs of each (the last conv always loses some,
    so the flatten order of the conv -> dense transition is exercised; pruning more could leave
    a network whose kept units are all dead after the ReLU, which would hide such errors)."""
    layers = [(f"convs/{i}", c.out_features) for i, c in enumerate(getattr(model, "convs", []))]
    layers += [(f"fcs/{j}", fc.out_features) for j, fc in enumerate(model.fcs)]
    pruned = []
    for name, width in layers:
        n = int(rng.integers(1, width // 2 + 1))
        pruned += [(name, int(j)) for j in rng.choice(width, n, replace=False)]
    rng.shuffle(pruned)
    return [tuple(p) for p in pruned]


CASES = {
    # odd spatial sizes: 9x7 -> 4x3 -> 2x1 (floor pools), C_in = 2
    "conv4-9x7x2": (
        lambda: ConvNet(
            "conv4",
            input_shape=(9, 7, 2),
            num_classes=5,
            widths=(6, 5, 7, 4),
            hidden=(9, 6),
            rngs=nnx.Rngs(0),
        ),
        (9, 7, 2),
    ),
    "conv2-8x8x1": (
        lambda: ConvNet(
            "conv2", input_shape=(8, 8, 1), widths=(8, 6), hidden=(7,), rngs=nnx.Rngs(0)
        ),
        (8, 8, 1),
    ),
    # 16x16 -> 8x8 -> 4x4 -> 2x2: four positions into the dense layer
    "conv6-16x16x3": (
        lambda: ConvNet(
            "conv6",
            input_shape=(16, 16, 3),
            num_classes=3,
            widths=(4, 5, 6, 6, 7, 6),
            hidden=(6, 5),
            rngs=nnx.Rngs(0),
        ),
        (16, 16, 3),
    ),
    "lenet": (
        lambda: LeNet300100(in_features=12, num_classes=4, hidden=(9, 7), rngs=nnx.Rngs(0)),
        (3, 4),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_removed_model_computes_the_masked_model(case):
    build, shape = CASES[case]
    seed = list(CASES).index(case)
    rng = np.random.default_rng(seed)
    model = filled(build, seed)
    before = jax.tree.map(np.asarray, nnx.state(model))
    x = jnp.asarray(rng.normal(size=(16, *shape)), jnp.float32)
    pruned = random_pruned(model, rng)
    small = remove_filters(model, pruned)
    assert type(small) is type(model)
    want = masked_logits(model, pruned, x)
    np.testing.assert_allclose(logits(small, x), want, rtol=1e-5, atol=1e-5)
    # the masking changed the logits (the oracle is not the unpruned model), and the pruned
    # network still depends on its input (not all its kept units dead: that would hide errors)
    assert float(jnp.abs(want - logits(model, x)).max()) > 1e-3
    assert float(np.ptp(np.asarray(want), axis=0).max()) > 1e-3
    # each layer lost exactly its pruned outputs
    for kind in ("convs", "fcs"):
        for i, layer in enumerate(getattr(model, kind, [])):
            removed = sum(1 for n, _ in pruned if n == f"{kind}/{i}")
            assert getattr(small, kind)[i].out_features == layer.out_features - removed, (kind, i)
    # the original is unchanged
    after = jax.tree.map(np.asarray, nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_removing_nothing_is_a_copy_and_removal_composes():
    build, shape = CASES["conv4-9x7x2"]
    model = filled(build, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *shape)), jnp.float32)
    same = remove_filters(model, [])
    np.testing.assert_array_equal(logits(same, x), logits(model, x))
    # twice in a row (indices of the second call refer to the smaller model) = once
    first = [("convs/3", 0), ("convs/1", 2)]
    twice = remove_filters(remove_filters(model, first), [("convs/3", 0), ("fcs/0", 8)])
    once = remove_filters(model, [*first, ("convs/3", 1), ("fcs/0", 8)])
    np.testing.assert_allclose(logits(twice, x), logits(once, x), rtol=1e-6, atol=1e-6)
    assert twice.widths == once.widths == (6, 4, 7, 2)


def test_parameter_count_drops_by_the_hand_computed_number():
    # Conv-2 on 8x8x1, widths (4, 5), hidden (6, 7), 3 classes: one pool -> 4x4x5 = 80 features.
    model = filled(
        lambda: ConvNet(
            "conv2",
            input_shape=(8, 8, 1),
            num_classes=3,
            widths=(4, 5),
            hidden=(6, 7),
            rngs=nnx.Rngs(0),
        )
    )
    # conv0 9*1*4+4 = 40, conv1 9*4*5+5 = 185, fc0 80*6+6 = 486, fc1 6*7+7 = 49, out 7*3+3 = 24
    assert param_count(model) == 40 + 185 + 486 + 49 + 24 == 784
    pruned = [("convs/0", 1), ("convs/1", 0), ("convs/1", 2), ("fcs/0", 5)]
    small = remove_filters(model, pruned)
    # conv0 loses a filter: 9*1 + 1 = 10; conv1 loses the input channel (9*1*5 = 45) and 2
    # filters of its remaining 3 inputs (2 * (9*3 + 1) = 56); fc0 loses 2 channels * 16
    # positions = 32 rows of 6 (192) and a unit of the remaining 48 rows (48 + 1 = 49); fc1
    # loses a row of 7 (7)
    drop = 10 + 45 + 56 + 192 + 49 + 7
    assert param_count(model) - param_count(small) == drop == 359
    assert small.widths == (3, 3) and small.hidden == (5, 7)
    assert small.fcs[0].kernel.shape == (48, 5)
    # the kept slices in their order: conv1 keeps filters 1, 3, 4 of inputs 0, 2, 3; fc0 keeps
    # the rows p * 5 + c of channels c = 1, 3, 4 at the 16 positions p, units 0..4
    k1 = np.asarray(model.convs[1].kernel)[:, :, [0, 2, 3]][..., [1, 3, 4]]
    np.testing.assert_array_equal(small.convs[1].kernel, k1)
    rows = [p * 5 + c for p in range(16) for c in (1, 3, 4)]
    np.testing.assert_array_equal(small.fcs[0].kernel, np.asarray(model.fcs[0].kernel)[rows, :5])

    lenet = filled(
        lambda: LeNet300100(in_features=64, num_classes=3, hidden=(10, 8), rngs=nnx.Rngs(0))
    )
    small = remove_filters(lenet, [("fcs/0", 0), ("fcs/0", 4), ("fcs/0", 9), ("fcs/1", 7)])
    # fc0 loses 3 columns of 64 + 3 biases (195); fc1 loses 3 rows of 8 (24) then a unit of
    # the remaining 7 rows (7 + 1); out loses a row of 3 (3)
    assert param_count(lenet) - param_count(small) == 195 + 24 + 8 + 3 == 230


def test_after_iterative_filter_pruning():
    """End to end: LRP filter pruning with a masked retrain, then the removed model."""
    model = filled(
        lambda: ConvNet(
            "conv2",
            input_shape=(8, 8, 1),
            num_classes=3,
            widths=(6, 8),
            hidden=(10,),
            rngs=nnx.Rngs(0),
        )
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 12), jnp.int32)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p, xb, yb):
        logits = nnx.merge(graphdef, p)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def retrain(p, masks):  # two masked SGD steps, one compiled program
        tx = W.masked_optimizer(optax.sgd(0.05), masks)
        state = tx.init(p)
        for _ in range(2):
            updates, state = tx.update(jax.grad(loss)(p, x, y), state, p)
            p = optax.apply_updates(p, updates)
        return p

    # 14 filters, pr_step 0.15 -> 2 per iteration, int(7 * 0.5) = 3 iterations
    params, _, history = W.iterative_filter_pruning(
        params, lrp_plan(model), [(x, y)], retrain, pr_step=0.15, total_pr=0.5
    )
    pruned = [p for step in history for p in step]
    assert len(pruned) == 6
    nnx.update(model, params)
    small = remove_filters(model, pruned)
    assert sum(small.widths) == 14 - 6
    np.testing.assert_allclose(logits(small, x), logits(model, x), rtol=1e-5, atol=1e-5)  # masked
    # the smaller model trains (its own plan, its own gradient) and scores with LRP
    g2, p2 = nnx.split(small, nnx.Param)
    l2 = lambda p: optax.softmax_cross_entropy_with_integer_labels(nnx.merge(g2, p)(x), y).mean()
    value, g = jax.jit(jax.value_and_grad(l2))(p2)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))
    scores = W.lrp_filter_scores(p2, lrp_plan(small), [(x, y)])
    assert [len(scores[f"convs/{i}"]) for i in range(2)] == list(small.widths)


CONV = lambda: ConvNet("conv2", input_shape=(8, 8, 1), widths=(3, 4), hidden=(5,), rngs=nnx.Rngs(0))
BAD_PRUNED = [
    ([("convs/7", 0)], r"pruned names an unknown layer 'convs/7'; expected one of \['convs/0'"),
    ([("fc/0", 0)], r"unknown layer 'fc/0'"),
    ([("out", 1)], r"pruned names the classifier output layer 'out'"),
    ([("convs/1", 4)], r"pruned index 4 of layer 'convs/1' is out of range; expected .*\[0, 4\)"),
    ([("convs/0", -1)], r"pruned index -1 of layer 'convs/0' is out of range"),
    ([("fcs/0", 1), ("fcs/0", 1)], r"pruned holds \('fcs/0', 1\) more than once"),
    ([("convs/0", j) for j in range(3)], r"pruned removes all 3 outputs of layer 'convs/0'"),
    ([("convs/0",)], r"pruned must hold \(layer name, output index\) pairs"),
    ([("convs/0", 1.0)], r"pruned must hold .* pairs of a str and an int"),
    ([("convs/0", True)], r"pruned must hold .* pairs of a str and an int"),
    ([(0, 1)], r"pruned must hold"),
    ("convs/0", r"pruned must be an iterable of \(layer name, output index\) pairs; got str"),
    (None, r"pruned must be an iterable"),
]


@pytest.mark.parametrize(("pruned", "match"), BAD_PRUNED)
def test_bad_pruned_raises_naming_the_argument(pruned, match):
    model = nnx.eval_shape(CONV)  # the checks come before any array is touched
    with pytest.raises(ValueError, match=match):
        remove_filters(model, pruned)


def test_lenet_has_no_conv_layers_to_remove():
    lenet = nnx.eval_shape(lambda: LeNet300100(in_features=4, hidden=(3,), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"unknown layer 'convs/0'; expected one of \['fcs/0'\]"):
        remove_filters(lenet, [("convs/0", 0)])


def test_unsupported_models_raise():
    resnet = nnx.eval_shape(lambda: CifarResNet("resnet14", width=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"CifarResNet.*not supported.*BatchNorm.*residual"):
        remove_filters(resnet, [("conv", 0)])
    with pytest.raises(ValueError, match="model must be a ConvNet or a LeNet300100; got dict"):
        remove_filters({"convs": []}, [])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (3,)}, r"widths must be 2 positive ints .* of 'conv2'"),
        ({"widths": (3, 0)}, "widths must be"),
        ({"widths": "ab"}, "widths must be"),
        ({"hidden": (5, -1)}, "hidden must be a sequence of positive ints"),
        ({"hidden": 5}, "hidden must be"),
    ],
)
def test_convnet_rejects_bad_widths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvNet("conv2", input_shape=(8, 8, 1), rngs=nnx.Rngs(0), **kwargs)


def test_convnet_default_widths_are_the_papers():
    model = nnx.eval_shape(lambda: ConvNet("conv6", rngs=nnx.Rngs(0)))
    assert model.widths == (64, 64, 128, 128, 256, 256) and model.hidden == (256, 256)
    assert param_count(model) == 2_262_602  # as before the widths argument (LTH Figure 2)
