"""pruneax.models: parameter counts against the papers, prunable names, shapes, BatchNorm modes,
initializers and a jitted training step.

Speed: JAX compiles every random initializer per shape (about 1 s each on a busy 2-core CPU), so
most tests use abstract models (``nnx.eval_shape``: shapes only, nothing compiled) or models
whose arrays are filled from NumPy (``materialize``); real initializers are tested on LeNet here
and on the bigger models in the ``slow`` tests.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.weights import leaf_names, prunable_names

PUBLIC = [
    "CONVNET_VARIANTS",
    "LLM_VARIANTS",
    "RESNET_VARIANTS",
    "VIM_METRICS",
    "VIM_MODES",
    "VIM_VARIANTS",
    "VIT_VARIANTS",
    "VLM",
    "VLM_SELECT_METHODS",
    "BiMambaMixer",
    "CifarResNet",
    "ConvNet",
    "FastVSpec",
    "FeatherSpec",
    "GGUFTokenizer",
    "GenerationOutput",
    "KVCache",
    "LeNet300100",
    "LlamaConfig",
    "LlamaLM",
    "LlamaOutput",
    "LlavaNext",
    "LlavaNextConfig",
    "MambaBlock",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "MambaOutput",
    "MixerOutput",
    "PruneContext",
    "PruneSpec",
    "PruneStage",
    "PruneStep",
    "PruningPlan",
    "ResNet20",
    "SSMBranch",
    "SSMMixer",
    "StructuredKeep",
    "TodreSpec",
    "TransPruneSpec",
    "TransitionStats",
    "TyrSupernet",
    "VLMConfig",
    "VLMOutput",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "ViTStage",
    "Vim",
    "VimBlock",
    "VimConfig",
    "VimOutput",
    "VimPruneStage",
    "VimPruningPlan",
    "VisionDropSpec",
    "VisualSelect",
    "allocate_units",
    "block_flops",
    "calibrated_prune",
    "causal_conv",
    "config_flops",
    "config_from_json",
    "config_param_count",
    "config_to_json",
    "decode_greedy",
    "ecoflap_prune",
    "feather_criterion",
    "gap_counts",
    "generate_greedy",
    "gguf_tokenizer",
    "head_importance",
    "init_cache",
    "llm_config",
    "llm_tokens_per_layer",
    "load_gguf",
    "load_llava_next",
    "load_llm",
    "load_lucidrains_vit",
    "load_mamba",
    "load_pruned",
    "load_vit",
    "load_vlm",
    "mixer_forward",
    "mlp_importance",
    "nirvana_allocate",
    "nirvana_prune",
    "nirvana_scores",
    "nirvana_select_calibration",
    "param_count",
    "partition_spec",
    "prune_structured",
    "pruned_mixer_forward",
    "read_checkpoint",
    "read_safetensors",
    "read_torch_state_dict",
    "remove_filters",
    "save_pruned",
    "shard_model",
    "smollm2_gguf_path",
    "taylor_grads",
    "todre_shares",
    "transprune_iga",
    "transprune_ttv",
    "tyr_apply",
    "tyr_fitness",
    "tyr_mutate",
    "tyr_offspring",
    "tyr_prune",
    "tyr_search",
    "tyr_sparse_kl",
    "tyr_supernet",
    "uniform_visual_indices",
    "unit_counts",
    "vim_config",
    "vim_flops",
    "vim_token_scores",
    "visiondrop_scores",
    "vit_config",
    "vit_flops",
    "vlm_prefill_flops",
    "write_safetensors",
]

FACTORIES: dict[str, Callable[[], nnx.Module]] = {
    "lenet": lambda: M.LeNet300100(rngs=nnx.Rngs(0)),
    "conv2": lambda: M.ConvNet("conv2", rngs=nnx.Rngs(0)),
    "conv4": lambda: M.ConvNet("conv4", rngs=nnx.Rngs(0)),
    "conv6": lambda: M.ConvNet("conv6", rngs=nnx.Rngs(0)),
    "resnet20": lambda: M.ResNet20(rngs=nnx.Rngs(0)),
}


@functools.cache
def abstract(name: str) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves: no initializer runs, nothing is compiled."""
    return nnx.eval_shape(FACTORIES[name])


def materialize(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Concrete arrays for an abstract model, drawn with NumPy (no JAX compile per shape).

    Kernels ~ N(0, 2 / fan_in), BN scales and running variances 1, everything else 0.
    """
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    leaves = []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        last = name.rsplit("/", 1)[-1]
        if last == "kernel":
            value = rng.normal(size=leaf.shape) * math.sqrt(2 / math.prod(leaf.shape[:-1]))
        elif last in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        leaves.append(jnp.asarray(value, leaf.dtype))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def out_shape(model: nnx.Module, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    return nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, jnp.float32))


# ------------------------------------------------------------------------------ public surface


# One public subpackage per architecture (plus structured pruning); the names above are
# re-exported from them.
SUBPACKAGES = ["convnets", "llama", "mamba", "structured", "vim", "vit", "vlm"]


def test_subpackages_are_public():
    import importlib

    for name in SUBPACKAGES:
        sub = importlib.import_module(f"pruneax.models.{name}")
        assert sub.__all__, name
        for item in sub.__all__:
            assert getattr(sub, item) is not None


def test_all_is_pinned():
    assert list(M.__all__) == PUBLIC


def test_no_unlisted_public_names():
    public = {n for n in dir(M) if not n.startswith("_")} - set(SUBPACKAGES)
    assert public == set(PUBLIC), public ^ set(PUBLIC)
    for name in PUBLIC:
        assert getattr(M, name) is not None


@pytest.mark.parametrize("name", ["CifarResNet", "ConvNet", "LeNet300100", "ResNet20"])
def test_models_are_documented(name):
    doc = inspect.getdoc(getattr(M, name))
    for section in ("Args:", "Raises:", "References:"):
        assert section in doc, f"{name}'s docstring has no {section}"
    # Defined in a private module of an architecture subpackage, re-exported explicitly.
    module = getattr(M, name).__module__
    assert module.startswith("pruneax.models.") and module.split(".")[-1].startswith("_"), module


def test_param_count_is_documented():
    doc = inspect.getdoc(M.param_count)
    assert "Returns" in doc and "Args" in doc


# ------------------------------------------------------------------------------ parameter counts

# (all parameters, conv + dense kernels = the papers' "weights").
# LeNet-300-100: LTH Figure 2 "266K": 784*300 + 300*100 + 100*10 = 266,200 weights + 410 biases.
# Conv-2/4/6 on CIFAR-10: LTH Figure 2 gives 4.3M / 2.4M / 1.7M weights; the architecture it
# specifies has 4,300,992 / 2,425,024 / 2,261,184 (Conv-6's 1.7M does not follow from it).
# ResNet-20: open_lth's test_cifar_resnet.py pins 272,474 parameters.
COUNTS = {
    "lenet": (266_610, 266_200),
    "conv2": (4_301_642, 4_300_992),
    "conv4": (2_425_930, 2_425_024),
    "conv6": (2_262_602, 2_261_184),
    "resnet20": (272_474, 270_896),
}
# LTH Figure 2: conv layers 38K / 260K / 1.1M.
CONV_WEIGHTS = {"conv2": 38_592, "conv4": 259_776, "conv6": 1_144_512}


@pytest.mark.parametrize("name", list(COUNTS))
def test_param_counts_match_papers(name):
    total, weights = COUNTS[name]
    model = abstract(name)
    assert M.param_count(model) == total
    assert M.param_count(model, kernels_only=True) == weights


@pytest.mark.parametrize("name", list(CONV_WEIGHTS))
def test_convnet_conv_weights_match_lth(name):
    state = nnx.state(abstract(name), nnx.Param)
    sizes = [
        math.prod(leaf.shape)
        for n, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True)
        if n.startswith("convs/") and n.endswith("/kernel")
    ]
    assert sum(sizes) == CONV_WEIGHTS[name]


def test_lenet_weight_breakdown():
    state = nnx.state(abstract("lenet"), nnx.Param)
    shapes = dict(zip(leaf_names(state), (x.shape for x in jax.tree.leaves(state)), strict=True))
    assert shapes == {
        "fcs/0/kernel": (784, 300),
        "fcs/0/bias": (300,),
        "fcs/1/kernel": (300, 100),
        "fcs/1/bias": (100,),
        "out/kernel": (100, 10),
        "out/bias": (10,),
    }


def test_wide_resnet_count_matches_open_lth():
    # open_lth test_cifar_resnet.py: cifar_resnet_14_128 has 11,093,130 parameters.
    model = nnx.eval_shape(lambda: M.CifarResNet("resnet14", width=128, rngs=nnx.Rngs(0)))
    assert M.param_count(model) == 11_093_130


@pytest.mark.slow
def test_resnet110_count_matches_open_lth():
    model = nnx.eval_shape(lambda: M.CifarResNet("resnet110", rngs=nnx.Rngs(0)))
    assert M.param_count(model) == 1_730_714


def test_param_count_excludes_batch_stats():
    model = abstract("resnet20")
    stats = nnx.state(model, nnx.BatchStat)
    # 784 channels of BatchNorm: 784 means + 784 variances, none counted as parameters.
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(stats)) == 2 * 784


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", list(FACTORIES))
def test_default_prunable_leaves_are_exactly_conv_and_dense_kernels(name):
    model = abstract(name)
    expected = sorted(
        "/".join(map(str, path)) + "/kernel"
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Conv | nnx.Linear)
    )
    selected = prunable_names(nnx.state(model, nnx.Param))
    assert sorted(selected) == expected
    assert all(not n.endswith(("bias", "scale")) for n in selected)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_output_layer_has_a_stable_name(name):
    state = nnx.state(abstract(name), nnx.Param)
    assert prunable_names(state, "out/*") == ["out/bias", "out/kernel"]
    assert state["out"]["kernel"].shape[-1] == 10


def test_resnet_names():
    names = leaf_names(nnx.state(abstract("resnet20"), nnx.Param))
    assert "conv/kernel" in names and "bn/scale" in names
    assert "blocks/3/shortcut/conv/kernel" in names  # first block of stage 2 projects
    assert "blocks/6/shortcut/bn/scale" in names
    assert not any(n.startswith(("blocks/0/shortcut", "blocks/4/shortcut")) for n in names)


def test_resnet_uses_pytorch_padding_at_stride_2():
    # open_lth's Conv2d(padding=1): stride-2 windows are centred on even pixels; Flax "SAME"
    # would pad (0, 1) and centre them on odd pixels.
    block = abstract("resnet20").blocks[3]
    assert block.conv1.strides == 2 and block.conv1.padding == ((1, 1), (1, 1))
    assert block.shortcut.conv.padding == "VALID" and block.shortcut.conv.strides == 2


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    "in_features, shape",
    [(784, (3, 28, 28, 1)), (784, (3, 28, 28)), (784, (3, 784)), (64, (3, 8, 8)), (64, (1, 64))],
)
def test_lenet_output_shape(in_features, shape):
    model = nnx.eval_shape(lambda: M.LeNet300100(in_features=in_features, rngs=nnx.Rngs(0)))
    out = out_shape(model, shape)
    assert out.shape == (shape[0], 10) and out.dtype == jnp.float32


@pytest.mark.parametrize("variant", sorted(M.CONVNET_VARIANTS))
@pytest.mark.parametrize("hwc", [(32, 32, 3), (28, 28, 1), (8, 8, 1)])
def test_convnet_output_shape(variant, hwc):
    model = nnx.eval_shape(lambda: M.ConvNet(variant, input_shape=hwc, rngs=nnx.Rngs(0)))
    out = out_shape(model, (2, *hwc))
    assert out.shape == (2, 10) and out.dtype == jnp.float32


@pytest.mark.parametrize("hw", [(32, 32), (8, 8), (7, 5)])
def test_resnet_output_shape(hw):
    out = out_shape(abstract("resnet20"), (2, *hw, 3))
    assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_num_classes_and_channels():
    model = nnx.eval_shape(
        lambda: M.CifarResNet("resnet14", num_classes=100, in_channels=1, rngs=nnx.Rngs(0))
    )
    assert out_shape(model, (2, 16, 16, 1)).shape == (2, 100)


# ------------------------------------------------------------------------------ bad input


def test_bad_inputs_fail_early():
    lenet, conv, resnet = abstract("lenet"), abstract("conv2"), abstract("resnet20")
    with pytest.raises(ValueError, match=r"in_features.*\(3, 28, 27\)"):
        out_shape(lenet, (3, 28, 27))
    with pytest.raises(ValueError, match="784"):
        out_shape(lenet, (784,))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*\(2, 28, 28, 1\)"):
        out_shape(conv, (2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        out_shape(conv, (32, 32, 3))
    with pytest.raises(ValueError, match=r"\(None, None, 3\)"):
        out_shape(resnet, (2, 32, 32, 1))


def test_bad_construction_arguments():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"conv2.*conv4.*conv6.*'conv3'"):
        M.ConvNet("conv3", rngs=rngs)
    with pytest.raises(ValueError, match="at least 8"):
        M.ConvNet("conv6", input_shape=(4, 4, 1), rngs=rngs)
    with pytest.raises(ValueError, match="input_shape"):
        M.ConvNet("conv2", input_shape=(32, 32), rngs=rngs)
    with pytest.raises(ValueError, match="resnet20"):
        M.CifarResNet("resnet18", rngs=rngs)
    with pytest.raises(ValueError, match="width"):
        M.CifarResNet("resnet20", width=0, rngs=rngs)
    with pytest.raises(ValueError, match="bn_scale_init"):
        M.ResNet20(bn_scale_init="zeros", rngs=rngs)
    with pytest.raises(ValueError, match="in_features"):
        M.LeNet300100(in_features=0, rngs=rngs)
    with pytest.raises(ValueError, match="in_features"):
        M.LeNet300100(in_features=True, rngs=rngs)


def test_numpy_integer_sizes_are_accepted():
    hwc = tuple(np.array([8, 8, 1]))  # e.g. images.shape[1:] of a NumPy array
    model = nnx.eval_shape(lambda: M.ConvNet("conv6", input_shape=hwc, rngs=nnx.Rngs(0)))
    assert out_shape(model, (2, 8, 8, 1)).shape == (2, 10)
    lenet = nnx.eval_shape(lambda: M.LeNet300100(in_features=np.int64(64), rngs=nnx.Rngs(0)))
    assert out_shape(lenet, (2, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------------------------ initializers


@pytest.fixture(scope="module")
def lenet() -> M.LeNet300100:
    """A real LeNet for 8x8 digits (its initializers compile once per shape: a few seconds)."""
    return M.LeNet300100(in_features=64, rngs=nnx.Rngs(0))


def test_lenet_init_is_truncated_glorot_normal_with_zero_bias(lenet):
    for layer in [*lenet.fcs, lenet.out]:
        w = np.asarray(layer.kernel[...])
        fan_in, fan_out = w.shape
        std = math.sqrt(2 / (fan_in + fan_out))
        assert abs(w.std() / std - 1) < 0.15 if w.size < 5000 else abs(w.std() / std - 1) < 0.05
        # Truncated at 2 standard deviations of the underlying normal (std / 0.8796...).
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6
        assert np.all(np.asarray(layer.bias[...]) == 0)


@pytest.mark.slow
def test_resnet20_and_convnet_init():
    model = M.ResNet20(rngs=nnx.Rngs(0))
    w = np.asarray(model.blocks[8].conv2.kernel[...])  # [3, 3, 64, 64]
    assert abs(w.std() / math.sqrt(2 / (9 * 64)) - 1) < 0.03
    assert np.abs(w).max() > 3 * w.std()  # untruncated, as torch.nn.init.kaiming_normal_
    scale = np.asarray(model.blocks[0].bn1.scale[...])
    assert np.all((scale >= 0) & (scale < 1)) and scale.std() > 0  # open_lth 'uniform' BN init
    assert np.all(np.asarray(model.blocks[0].bn1.bias[...]) == 0)
    bias = np.asarray(model.out.bias[...])
    assert np.all(np.abs(bias) <= 1 / 8) and np.any(bias != 0)  # PyTorch Linear default
    ones = M.ResNet20(bn_scale_init="ones", rngs=nnx.Rngs(0))
    assert np.all(np.asarray(ones.bn.scale[...]) == 1)

    conv = M.ConvNet("conv2", rngs=nnx.Rngs(0))
    w = np.asarray(conv.convs[1].kernel[...])  # [3, 3, 64, 64]
    std = math.sqrt(2 / (9 * 64 + 9 * 64))
    assert abs(w.std() / std - 1) < 0.03
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6


# ------------------------------------------------------------------------------ BatchNorm modes


def test_batchnorm_train_and_eval_modes_differ():
    model = materialize(abstract("resnet20"))
    x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, size=(4, 8, 8, 3)), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))

    y_train = forward(model, x)  # a new model is in training mode: batch statistics
    mean = np.asarray(model.bn.mean[...])
    assert np.any(mean != 0), "training mode must update the running mean (through nnx.jit)"

    model.eval()
    y_eval = forward(model, x)
    assert not np.allclose(y_train, y_eval, atol=1e-3)
    np.testing.assert_array_equal(model.bn.mean[...], mean)  # eval mode leaves stats alone
    # In eval mode an example's output does not depend on the rest of the batch.
    np.testing.assert_allclose(forward(model, x[:2]), y_eval[:2], rtol=1e-4, atol=1e-4)
    model.train()
    assert model.bn.use_running_average is False


# ------------------------------------------------------------------------------ training


def _train_step():
    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def _fit(model, x, y, steps, lr=1e-3, compile_counter=None):
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    step = _train_step()
    losses = [float(step(model, optimizer, x, y))]
    if compile_counter is None:
        losses += [float(step(model, optimizer, x, y)) for _ in range(steps - 1)]
        return losses
    with compile_counter() as counter:
        losses += [float(step(model, optimizer, x, y)) for _ in range(steps - 1)]
    assert counter.count == 0, counter.messages
    return losses


def test_jitted_train_step_reduces_loss(lenet, compile_counter):
    from pruneax.data import load_digits

    ds = load_digits()
    x = jnp.asarray(ds.train_images[:32], jnp.float32) / ds.pixel_max
    y = jnp.asarray(ds.train_labels[:32], jnp.int32)
    model = nnx.clone(lenet)
    losses = _fit(model, x, y, steps=5, lr=1e-2, compile_counter=compile_counter)
    assert losses[-1] < 0.7 * losses[0] and all(np.diff(losses) < 0), losses
    # The fixture is untouched (the step updated the clone in place).
    assert not np.allclose(model.out.kernel[...], lenet.out.kernel[...])


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, shape",
    [
        (lambda: M.ConvNet("conv2", input_shape=(8, 8, 1), rngs=nnx.Rngs(0)), (16, 8, 8, 1)),
        (lambda: M.ResNet20(rngs=nnx.Rngs(0)), (16, 8, 8, 3)),
    ],
    ids=["conv2", "resnet20"],
)
def test_jitted_train_step_reduces_loss_convnets(factory, shape):
    model = materialize(nnx.eval_shape(factory))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)
    losses = _fit(model, x, y, steps=5)
    assert losses[-1] < 0.7 * losses[0], losses
