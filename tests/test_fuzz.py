"""Fuzz suite (issue 19): every public function of pruneax.tokens, pruneax.weights and pruneax.ops
given one adversarial argument returns normally or raises ValueError naming that argument.

Each public function has a small valid call template (``CALLS``); the fuzz test replaces ONE
argument of it (positional or keyword) by a value drawn from an adversarial pool (None, a str,
bools, negative / zero / huge ints, floats, NaN, empty / 0-d / wrong-rank / wrong-length arrays,
complex / int / bool / float16 / bfloat16 arrays, NaN- and inf-filled arrays, lists of str,
ragged lists, dicts) and calls the function directly. The only accepted outcomes are a normal
return or a ``ValueError`` whose message names the replaced argument as a whole word; any other
exception type (TypeError, IndexError, AttributeError, jax's internal errors, ...) fails.

Shapes are fixed per function (only the adversarial argument varies) so jit compilations are
shared between examples. ``HYPOTHESIS_PROFILE=dev`` draws more examples; the slow-marked
``test_every_adversarial_value`` (``-m slow``) tries every pool value on every argument.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pruneax.ops as O
import pruneax.tokens as T
from pruneax import weights as W


def few(n: int) -> settings:
    """``n`` examples under the "ci" profile (30 examples), proportionally more under "dev"."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 30))


def names(message: str, name: str) -> bool:
    """``name`` appears in ``message`` as a whole identifier (``x`` does not match ``x_vision``)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) is not None


# --------------------------------------------------------------------------------------------
# Call templates
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """A valid call ``fn(*args(), **kwargs())`` of a public function.

    Attributes:
      fn: the public function.
      args: builds the positional arguments (fresh values on every call).
      kwargs: builds the keyword arguments.
      accept: ``{argument: (other names,)}``: a ValueError about that argument may name one of
        the other arguments instead (a mismatch between two arguments is reported on either).
      use: exercises a returned object whose checks are deferred (a schedule, an optax
        transformation); its errors count as the call's.
      out: checks the output given the arguments actually passed (cheap range checks).
      setup / teardown: for the registry functions, which change global state.
      sizes: arguments that set the size of an allocation or the amount of work (``d_in``,
        ``n``, ``num_noise``): a huge int there is a valid request for a huge array (which XLA
        answers by aborting the process) or an endless loop, so the pool leaves "huge int" out
        for them.
    """

    fn: Callable[..., Any]
    args: Callable[[], tuple] = tuple
    kwargs: Callable[[], dict] = dict
    accept: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    use: Callable[[Any], Any] | None = None
    out: Callable[[Any, dict[str, Any]], None] | None = None
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    sizes: tuple[str, ...] = ()


N, D = 6, 3  # tokens, features
RNG = np.random.default_rng(0)
X = RNG.standard_normal((N, D)).astype(np.float32)
S = np.linspace(0.0, 1.0, N).astype(np.float32)
TEXT = RNG.standard_normal((2, D)).astype(np.float32)
XV = RNG.standard_normal((N, 2)).astype(np.float32)
IDX = np.array([1, 3], np.int32)
ATTN = np.asarray(jax.nn.softmax(jnp.asarray(RNG.standard_normal((2, 5, 5)), jnp.float32), -1))
VALUES = RNG.standard_normal((2, 5, 4)).astype(np.float32)
KEY = jax.random.key(0)


def in_range(idx: Any, n: int) -> None:
    """Selector output: int indices within [0, n)."""
    v = np.asarray(idx)
    assert np.issubdtype(v.dtype, np.integer), v.dtype
    assert v.size == 0 or (v.min() >= 0 and v.max() < n), (v, n)


def rows(name: str) -> Callable[[Any, dict[str, Any]], None]:
    """Output check of a selector over the rows of the argument ``name``."""
    return lambda out, a: in_range(out, np.shape(a[name])[0])


def fuzz_method(name: str) -> T.Method:
    return T.Method(name, lambda k, inp: T.topk(-inp["scores"], k), {"scores"})


def drop_method(name: str) -> None:
    if name in T.METHODS:
        T.unregister(name)


TOKENS = {
    "budget": Call(T.budget, lambda: (N, 0.5)),
    "cls_attention": Call(
        T.cls_attention, lambda: (ATTN,), lambda: {"cls_index": 0, "num_prefix": 1}
    ),
    # A mismatch of x and metric (or weights) in N is reported on the second array.
    "contextual_merge": Call(T.contextual_merge, lambda: (X, X, IDX, 1), accept={"x": ("metric",)}),
    "coverage": Call(
        T.coverage,
        lambda: (X, 2),
        lambda: {"text": TEXT, "x_vision": XV, "alpha": 0.5, "tau_tv": 0.01, "tau_vv": 0.2},
        # text / x_vision are checked against x (same D / same N): either may be named.
        accept={"x": ("text", "x_vision")},
        out=rows("x"),
    ),
    "coverage_matrix": Call(
        T.coverage_matrix,
        lambda: (X,),
        lambda: {"text": TEXT, "x_vision": XV, "alpha": 0.5, "tau_tv": 0.01, "tau_vv": 0.2},
        accept={"x": ("text", "x_vision")},
    ),
    "dominant_contextual": Call(
        T.dominant_contextual,
        lambda: (S, X, X, 2, 1),
        out=lambda out, a: [in_range(i, np.shape(a["scores"])[0]) for i in out[1:]],
    ),
    "feather": Call(
        T.feather,
        lambda: (S, 2),
        lambda: {"grid": (2, 3), "stride": 2},
        accept={"scores": ("grid",)},  # N != rows * cols is reported on grid
        out=rows("scores"),
    ),
    "flowcut_prune_count": Call(T.flowcut_prune_count, lambda: (S, N, 2, 1)),
    "flowcut_scores": Call(
        T.flowcut_scores, lambda: (ATTN, VALUES), lambda: {"alive": np.ones(4, bool)}
    ),
    "flowcut_select": Call(
        T.flowcut_select,
        lambda: (np.stack([ATTN] * 2), np.stack([VALUES] * 2), 2),
        out=lambda out, a: in_range(out[0], np.shape(a["values"])[2] - 1),  # patches: T - 1
    ),
    "flowcut_step": Call(
        T.flowcut_step,
        lambda: (ATTN, VALUES, np.ones(4, bool), None, 2, 0),
        lambda: {"count": None},
    ),
    "focal_select": Call(
        T.focal_select,
        lambda: (np.full((2, 4, 4), 0.25, np.float32), 2),
        lambda: {"strategy": "row", "grid": (2, 2)},
        out=lambda out, a: in_range(out, np.shape(a["attn"])[-1]),
    ),
    "focal_significance": Call(T.focal_significance, lambda: (ATTN,)),
    "fuse_pruned": Call(T.fuse_pruned, lambda: (X, IDX, S), accept={"x": ("weights",)}),
    # idx out of range of a shorter x is reported on idx (with the bound)
    "gather": Call(T.gather, lambda: (X, IDX), lambda: {"axis": 0}, accept={"x": ("idx",)}),
    "get_method": Call(T.get_method, lambda: ("topk",)),
    "hiprune": Call(
        T.hiprune,
        lambda: (S, S, 2),
        lambda: {"grid": (2, 3), "alpha": 0.5},
        out=rows("deep_scores"),
    ),
    "hiprune_anchors": Call(T.hiprune_anchors, lambda: (4, 0.5)),
    "holov": Call(T.holov, lambda: (S, X, 2), lambda: {"num_chunks": 2}, out=rows("scores")),
    "holov_chunks": Call(T.holov_chunks, lambda: (N, 2)),
    "kcenter": Call(
        T.kcenter, lambda: (X, 2), lambda: {"pivot": 0, "metric": "cosine"}, out=rows("x")
    ),
    "keep_mask": Call(T.keep_mask, lambda: (IDX, N), sizes=("n",)),
    "last_query_attention": Call(
        T.last_query_attention, lambda: (ATTN,), lambda: {"start": 1, "stop": 3}
    ),
    "maxmin_diversity": Call(T.maxmin_diversity, lambda: (X, 2), out=rows("x")),
    "maxsum_diversity": Call(
        T.maxsum_diversity, lambda: (X, 2), lambda: {"pivot": 0}, out=rows("x")
    ),
    "query_key_attention": Call(
        T.query_key_attention, lambda: (np.ones((4, D), np.float32), np.ones((2, 5, D), np.float32))
    ),
    "random": Call(
        T.random, lambda: (KEY, N, 2), out=lambda out, a: in_range(out, a["n"]), sizes=("n",)
    ),
    "received_attention": Call(T.received_attention, lambda: (ATTN,), lambda: {"num_prefix": 1}),
    "register": Call(
        T.register,
        lambda: (fuzz_method("fuzz_register"),),
        lambda: {"replace": False},
        teardown=lambda: drop_method("fuzz_register"),
    ),
    "select_tokens": Call(
        T.select_tokens, lambda: ("topk", 2), lambda: {"scores": S}, out=rows("scores")
    ),
    "tome_merge": Call(
        T.tome_merge,
        lambda: (X, X, 1),
        lambda: {"size": np.ones(N, np.float32), "num_protected": 1},
        accept={"x": ("metric",)},
    ),
    "topk": Call(T.topk, lambda: (S, 2), out=rows("scores")),
    "uniform": Call(
        T.uniform,
        lambda: (2,),
        lambda: {"grid": (2, 3)},
        out=lambda out, a: in_range(out, math.prod(a["grid"])),
    ),
    "uniform_grid": Call(
        T.uniform_grid, lambda: ((4, 4), 2), out=lambda out, a: in_range(out, math.prod(a["grid"]))
    ),
    "unprotected_positions": Call(
        T.unprotected_positions,
        lambda: (N, (0,)),
        out=lambda out, a: in_range(out, a["n"]),
        sizes=("n",),
    ),
    "unregister": Call(
        T.unregister,
        lambda: ("fuzz_unregister",),
        setup=lambda: T.register(fuzz_method("fuzz_unregister"), replace=True),
        teardown=lambda: drop_method("fuzz_unregister"),
    ),
    "with_protected": Call(
        T.with_protected,
        lambda: (IDX, N, (0,)),
        out=lambda out, a: in_range(out, a["n"]),
        sizes=("n",),
    ),
}


# weights: a dense layer, BN scales, a conv layer, LRP plans
def params() -> dict:
    return {
        "dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5], [1.5, -0.2]]), "bias": jnp.ones(2)}
    }


def masks() -> dict:
    return W.layerwise_masks(W.magnitude_scores(params()), 0.5)


def bn_params() -> dict:
    return {"bn1": {"scale": jnp.array([0.5, -0.2, 0.0]), "bias": jnp.zeros(3)}}


def grads_of(tree: Any) -> Any:
    return jax.tree.map(jnp.ones_like, tree)


def use_optimizer(tree: Callable[[], Any]) -> Callable[[Any], Any]:
    """Runs ``init`` and one ``update`` of the returned optax transformation on ``tree()``."""

    def use(opt):
        p = tree()
        state = opt.init(p)
        return opt.update(grads_of(p), state, p)

    return use


def plan() -> tuple:
    return (
        W.LRPLayer("conv", "c", padding="VALID"),
        W.LRPLayer("relu"),
        W.LRPLayer("flatten"),
        W.LRPLayer("dense", "out"),
    )


def conv_params() -> dict:
    return {
        "c": {"kernel": jnp.arange(1.0, 5.0).reshape(1, 1, 1, 4)},
        "out": {"kernel": jnp.ones((4, 2))},
    }


def batches() -> list:
    return [(jnp.ones((1, 1, 1, 1)), jnp.array([0]))]


def dense_plan() -> tuple:
    return (W.LRPLayer("dense", "fc"), W.LRPLayer("relu"), W.LRPLayer("dense", "out"))


def dense_params() -> dict:
    return {"fc": {"kernel": jnp.ones((3, 4))}, "out": {"kernel": jnp.ones((4, 2))}}


def eco_params() -> dict:
    return {"a": jnp.ones((2, 2)), "b": jnp.full((2, 2), 0.5)}


def eco_loss(p, x):
    """The user's loss: batch elements are opaque to the library (it only checks that they are
    arrays) and reach this function, whose own errors are the user's: it names ``batches``."""
    if not isinstance(x, jax.Array | np.ndarray) or x.shape != (1, 2):
        raise ValueError(f"batches: the test loss takes [1, 2] arrays; got {type(x).__name__}")
    return jnp.sum((x @ p["a"] @ p["b"]) ** 2)


KERNEL = jnp.array([[1.0, 1.0], [2.0, -1.0], [3.0, 2.0], [0.5, 4.0]])  # [d_in=4, d_out=2]
CALIB = jnp.asarray(RNG.standard_normal((1, 5, 4)), jnp.float32)  # [B, T, d_in]
HESSIAN = W.hessian_update(W.hessian_init(4), CALIB).h
GRAM = np.asarray(RNG.standard_normal((32, 4)))
ISS_STATE = W.iss_p(optax.sgd(0.1), 0.5, soft_steps=10).init(params())


def masked_state():
    return W.masked_optimizer(optax.sgd(0.1)).init(params())


WEIGHTS = {
    "allocate_keep": Call(
        W.allocate_keep, lambda: ([1.0, 3.0], [100, 100], 0.5), lambda: {"max_sparsity": 0.9}
    ),
    "allocate_sparsity": Call(
        W.allocate_sparsity,
        lambda: ([1.0, 1.0, 4.0], [10, 10, 10], 0.5),
        lambda: {"max_sparsity": 0.7},
    ),
    "apply_masks": Call(W.apply_masks, lambda: (params(), masks())),
    "bn_l1_gradient": Call(
        W.bn_l1_gradient,
        lambda: (bn_params(), 0.25),
        lambda: {"masks": None, "scale_filter": None, "smooth_l1": False, "lr": None},
    ),
    "bn_prune_masks": Call(
        W.bn_prune_masks, lambda: (bn_params(), 0.01), lambda: {"scale_filter": None}
    ),
    "default_prunable": Call(W.default_prunable, lambda: ("dense/kernel", np.zeros((3, 4)))),
    "erk_sparsities": Call(
        W.erk_sparsities, lambda: (params(), 0.5), lambda: {"prunable": None, "power": 1.0}
    ),
    "filter_masks": Call(
        W.filter_masks,
        lambda: ({"c": {"kernel": jnp.ones((1, 1, 1, 3)), "bias": jnp.ones(3)}}, [("c", 1)]),
    ),
    "first_order_scores": Call(
        W.first_order_scores,
        lambda: (eco_loss, eco_params(), {"g": ["a", "b"]}, [jnp.ones((1, 2))]),
    ),
    "global_masks": Call(
        W.global_masks,
        lambda: (W.magnitude_scores(params()), 0.5),
        lambda: {"prunable": None, "overrides": None, "masks": None},
    ),
    "group_scores": Call(
        W.group_scores,
        lambda: ({"a": 4.0, "b": 2.0}, {"g": ["a", "b"]}, eco_params()),
        lambda: {"reduce": "avg"},
    ),
    "hessian_init": Call(W.hessian_init, lambda: (4,), sizes=("d_in",)),
    "hessian_update": Call(W.hessian_update, lambda: (W.hessian_init(4), CALIB)),
    "input_sq_norms": Call(W.input_sq_norms, lambda: (CALIB,)),
    "iss_masks": Call(W.iss_masks, lambda: (ISS_STATE,)),
    "iss_p": Call(
        W.iss_p,
        lambda: (optax.sgd(0.1), 0.5),
        lambda: {"shrink": 0.95, "soft_steps": 2, "prunable": None},
        use=use_optimizer(params),
    ),
    "iterative": Call(W.iterative, lambda: (0.2,), use=lambda schedule: schedule(1)),
    "iterative_filter_pruning": Call(
        W.iterative_filter_pruning,
        lambda: (conv_params(), plan(), batches(), lambda p, m: p),
        lambda: {
            "criterion": "weight",
            "pr_step": 0.25,
            "total_pr": 0.5,
            "eps": 1e-9,
            "normalize": "default",
        },
    ),
    "layerwise_masks": Call(
        W.layerwise_masks,
        lambda: (W.magnitude_scores(params()), 0.5),
        lambda: {"prunable": None, "overrides": None, "masks": None},
    ),
    "leaf_names": Call(W.leaf_names, lambda: (params(),)),
    # count out of range for fewer candidate filters is reported on count.
    "lowest_filters": Call(
        W.lowest_filters,
        lambda: ({"a": jnp.array([0.5, 0.1]), "b": jnp.array([0.2, 0.9])}, 2),
        lambda: {"exclude": ()},
        accept={"scores": ("count",)},
    ),
    "lrp_filter_scores": Call(
        W.lrp_filter_scores,
        lambda: (conv_params(), plan(), batches()),
        lambda: {"eps": 1e-9, "normalize": "l1", "kinds": ("conv",)},
    ),
    # A batch size of x other than labels' is reported on labels.
    "lrp_relevance": Call(
        W.lrp_relevance,
        lambda: (dense_params(), dense_plan(), jnp.array([[1.0, 2.0, 1.0]]), jnp.array([1])),
        lambda: {"eps": 1e-9},
        accept={"x": ("labels",)},
    ),
    "magnitude_mask": Call(
        W.magnitude_mask, lambda: (KERNEL,), lambda: {"sparsity": 0.5, "n_m": None}
    ),
    "magnitude_scores": Call(W.magnitude_scores, lambda: (params(),)),
    "mask_sparsity": Call(
        W.mask_sparsity,
        lambda: (0.25,),
        lambda: {"masks": None, "scale_filter": None, "smooth_l1": False, "lr": None},
        use=use_optimizer(bn_params),
    ),
    "masked_optimizer": Call(
        W.masked_optimizer, lambda: (optax.sgd(0.1), masks()), use=use_optimizer(params)
    ),
    # r_out must have the layer output's shape, which x and w set: reported on r_out.
    "maxpool_relevance": Call(
        W.maxpool_relevance,
        lambda: (jnp.array([1.0, 4.0, 2.0, 3.0]).reshape(1, 2, 2, 1), jnp.ones((1, 1, 1, 1))),
        lambda: {"window": (2, 2), "strides": None, "padding": "VALID", "eps": 1e-9},
        accept={"x": ("r_out",)},
    ),
    "nm_masks": Call(
        W.nm_masks,
        lambda: ({"kernel": jnp.array([[1.0], [4.0], [2.0], [3.0]])}, 2, 4),
        lambda: {"prunable": None, "axis": -2},
    ),
    "normalize_filter_scores": Call(
        W.normalize_filter_scores, lambda: ({"c": jnp.array([1.0, 3.0])}, "l1")
    ),
    "one_shot": Call(W.one_shot, lambda: (0.9,), lambda: {"step": 100}, use=lambda s: s(100)),
    "path_name": Call(
        W.path_name,
        lambda: (jax.tree_util.tree_flatten_with_path({"dense": {"kernel": 0}})[0][0][0],),
    ),
    "polynomial": Call(
        W.polynomial,
        lambda: (0.9, 0, 100),
        lambda: {"initial": 0.0, "power": 3.0},
        use=lambda s: s(50),
    ),
    "prunable_names": Call(W.prunable_names, lambda: (params(),), lambda: {"prunable": None}),
    "prune_round": Call(
        W.prune_round,
        lambda: (params(), None, 0.5),
        lambda: {"scope": "layerwise", "prunable": None, "overrides": None, "scores": None},
    ),
    "random_masks": Call(W.random_masks, lambda: (KEY, masks())),
    "random_scores": Call(W.random_scores, lambda: (KEY, params())),
    "rewind": Call(W.rewind, lambda: (params(), grads_of(params()), masks())),
    "saliency_scores": Call(W.saliency_scores, lambda: (params(), grads_of(params()))),
    "set_masks": Call(W.set_masks, lambda: (masked_state(), masks(), optax.sgd(0.1))),
    "soft_shrink": Call(
        W.soft_shrink, lambda: (params(), 0.5), lambda: {"shrink": 0.5, "prunable": None}
    ),
    # hessian must be [d_in, d_in] with kernel's d_in: a mismatch is reported on hessian.
    "sparsegpt_prune": Call(
        W.sparsegpt_prune,
        lambda: (KERNEL, HESSIAN),
        lambda: {"sparsity": 0.5, "n_m": None, "blocksize": 128, "percdamp": 0.01},
        accept={"kernel": ("hessian",)},
    ),
    "sparsity_report": Call(W.sparsity_report, lambda: (masks(),)),
    "taylor_filter_scores": Call(
        W.taylor_filter_scores,
        lambda: (conv_params(), plan(), batches()),
        lambda: {"normalize": "l2", "kinds": ("conv",)},
    ),
    "tyr_layer_loss": Call(
        W.tyr_layer_loss, lambda: (np.array([[1.0], [2.0]]), np.eye(2), np.array([[1.0], [2.0]]))
    ),
    "tyr_local_prune": Call(
        W.tyr_local_prune,
        lambda: (np.asarray(KERNEL, np.float64), GRAM.T @ GRAM, 2, 1),
        lambda: {"rounds": 1, "score": "coded", "percdamp": 0.01},
        accept={"kernel": ("hessian",)},
    ),
    "uniform_sparsities": Call(
        W.uniform_sparsities, lambda: (params(), 0.8), lambda: {"prunable": None}
    ),
    # sq_norms must be [d_in] with kernel's d_in: a mismatch is reported on sq_norms.
    "wanda_mask": Call(
        W.wanda_mask,
        lambda: (KERNEL, jnp.ones(4)),
        lambda: {"sparsity": 0.5, "n_m": None},
        accept={"kernel": ("sq_norms",)},
    ),
    "wanda_scores": Call(
        W.wanda_scores,
        lambda: (KERNEL, jnp.array([4.0, 1.0, 2.0, 0.5])),
        accept={"kernel": ("sq_norms",)},
    ),
    "weight_filter_scores": Call(
        W.weight_filter_scores,
        lambda: (conv_params(), plan()),
        lambda: {"normalize": "l1", "kinds": ("conv",)},
    ),
    "zeroth_order_scores": Call(
        W.zeroth_order_scores,
        lambda: (eco_loss, eco_params(), {"g": ["a", "b"]}, [jnp.ones((1, 2))]),
        lambda: {"key": KEY, "eps": 1e-3, "num_noise": 1, "progress": None, "done": None},
        sizes=("num_noise",),  # the number of noise draws: a huge int is a valid (endless) run
    ),
    "zplus_conv": Call(
        W.zplus_conv,
        lambda: (jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1)), jnp.ones((1, 2, 2, 1))),
        lambda: {"strides": (2, 2), "padding": "VALID", "eps": 1e-9},
        accept={"x": ("r_out",), "w": ("r_out",)},
    ),
    "zplus_dense": Call(
        W.zplus_dense,
        lambda: (jnp.array([[1.0, 3.0]]), jnp.array([[1.0], [-2.0]]), jnp.ones((1, 1))),
        lambda: {"eps": 1e-9},
        accept={"x": ("r_out",), "w": ("r_out",)},
    ),
}

SCAN_B, SCAN_L, SCAN_E, SCAN_N = 1, 4, 2, 3
OPS = {
    "gap_delta_sum": Call(
        O.gap_delta_sum,
        lambda: (np.ones((1, 5, 2), np.float32), np.array([[True, False, False, True, True]])),
    ),
    "selective_scan": Call(
        O.selective_scan,
        lambda: (
            np.ones((SCAN_B, SCAN_L, SCAN_E), np.float32),
            np.full((SCAN_B, SCAN_L, SCAN_E), 0.5, np.float32),
            -np.ones((SCAN_E, SCAN_N), np.float32),
            np.ones((SCAN_B, SCAN_L, SCAN_N), np.float32),
            np.ones((SCAN_B, SCAN_L, SCAN_N), np.float32),
        ),
        lambda: {
            "D": np.ones(SCAN_E, np.float32),
            "z": np.ones((SCAN_B, SCAN_L, SCAN_E), np.float32),
            "h0": None,
            "mode": "associative",
            "keep": None,
            "gap_delta": None,
            "chunk_size": None,
            "remat": False,
            "return_state": False,
        },
    ),
}

CALLS: dict[str, Call] = {
    **{f"tokens.{k}": v for k, v in TOKENS.items()},
    **{f"weights.{k}": v for k, v in WEIGHTS.items()},
    **{f"ops.{k}": v for k, v in OPS.items()},
}

# Public names that are not functions: classes, NamedTuples and tables.
SKIP = {
    "tokens.INPUTS": "a constant tuple (the input names of registered methods)",
    "tokens.METHODS": "a read-only mapping (the registry)",
    "tokens.Method": "a NamedTuple class (validated by its own __new__; see test_errors.py)",
    "weights.HessianState": "a NamedTuple (SparseGPT's state), built by hessian_init",
    "weights.ISSState": "a NamedTuple (ISS-P's optimizer state), built by iss_p().init",
    "weights.LRPLayer": "a NamedTuple (one layer of an LRP plan)",
    "weights.MaskedState": "a NamedTuple (masked_optimizer's state)",
    "weights.SparsityReport": "a NamedTuple (sparsity_report's result)",
    "ops.MODES": "a constant tuple (selective_scan's modes)",
}

MODULES = {"tokens": T, "weights": W, "ops": O}


def test_every_public_function_has_a_template():
    public = {f"{m}.{n}" for m, mod in MODULES.items() for n in mod.__all__}
    missing = sorted(public - set(CALLS) - set(SKIP))
    assert not missing, f"public functions without a fuzz template: {missing}"
    stale = sorted((set(CALLS) | set(SKIP)) - public)
    assert not stale, f"templates / skips of names not in __all__: {stale}"
    for name in SKIP:  # only classes and tables are skipped, never a function
        module, attr = name.split(".")
        assert not inspect.isfunction(getattr(MODULES[module], attr)), name
    for name, call in CALLS.items():  # each template calls the public function it is named by
        module, attr = name.split(".")
        assert call.fn is getattr(MODULES[module], attr), name


# --------------------------------------------------------------------------------------------
# Adversarial values
# --------------------------------------------------------------------------------------------

GENERIC: dict[str, Callable[[], Any]] = {
    "None": lambda: None,
    "str": lambda: "abc",
    "True": lambda: True,
    "negative int": lambda: -3,
    "zero": lambda: 0,
    "huge int": lambda: 10**12,
    "float": lambda: 2.5,
    "nan": lambda: float("nan"),
    "empty array": lambda: np.zeros((0,), np.float32),
    "0-d array": lambda: np.array(1.5, np.float32),
    "list of str": lambda: ["a", "b"],
    "object array": lambda: np.array([object(), object()], dtype=object),
    "dict": lambda: {"a": 1.0},
    "ragged list": lambda: [[1.0, 2.0], [3.0]],
    "nested list": lambda: [[1.0, 2.0], [3.0, 4.0]],
    "vector": lambda: np.ones((N,), np.float32),
    "matrix": lambda: np.ones((N, D), np.float32),
}


def shaped(shape: tuple[int, ...]) -> dict[str, Callable[[], Any]]:
    """Variants of an array argument of shape ``shape``: wrong rank, length, dtype, values."""
    out = {
        "extra axis": lambda: np.ones((*shape, 2), np.float32),
        "complex": lambda: np.ones(shape, np.complex64),
        "int": lambda: np.ones(shape, np.int32),
        "bool": lambda: np.ones(shape, bool),
        "nan-filled": lambda: np.full(shape, np.nan, np.float32),
        "inf-filled": lambda: np.full(shape, np.inf, np.float32),
        "float16": lambda: np.ones(shape, np.float16),
        "bfloat16": lambda: jnp.ones(shape, jnp.bfloat16),
        "int out of range": lambda: np.full(shape, 10**6, np.int32),
        "int negative": lambda: np.full(shape, -1, np.int32),
    }
    if shape:
        out["one axis fewer"] = lambda: np.ones(shape[1:], np.float32)
        longer = (shape[0] + 1, *shape[1:])
        out["longer axis 0"] = lambda: np.ones(longer, np.float32)
        last = (*shape[:-1], shape[-1] + 1)
        out["longer last axis"] = lambda: np.ones(last, np.float32)
    return out


def pool(value: Any) -> dict[str, Callable[[], Any]]:
    """Adversarial replacements of a template argument ``value``."""
    out = dict(GENERIC)
    if isinstance(value, np.ndarray | jax.Array) and not jax.dtypes.issubdtype(
        value.dtype, jax.dtypes.prng_key
    ):
        out |= shaped(tuple(value.shape))
    return out


def slots(call: Call) -> list[tuple[str, Any]]:
    """``(argument name, template value)`` of every argument of the template."""
    params_ = list(inspect.signature(call.fn).parameters.values())
    out = []
    for i, v in enumerate(call.args()):
        assert params_[i].kind in (params_[i].POSITIONAL_ONLY, params_[i].POSITIONAL_OR_KEYWORD)
        out.append((params_[i].name, v))
    return out + list(call.kwargs().items())


def run(call: Call, replace: dict[str, Any]) -> Any:
    """Calls the template with the named arguments replaced; returns the output (used)."""
    params_ = list(inspect.signature(call.fn).parameters)
    args = [replace.get(params_[i], v) for i, v in enumerate(call.args())]
    kwargs = {k: replace.get(k, v) for k, v in call.kwargs().items()}
    bound = dict(zip(params_, args, strict=False)) | kwargs
    if call.setup is not None:
        call.setup()
    try:
        out = call.fn(*args, **kwargs)
        if call.use is not None:
            jax.block_until_ready(call.use(out))
        jax.block_until_ready(out)
        if call.out is not None:
            call.out(out, bound)
        return out
    finally:
        if call.teardown is not None:
            call.teardown()


def check(name: str, arg: str, label: str) -> None:
    """One fuzz case: argument ``arg`` of ``CALLS[name]`` replaced by pool value ``label``."""
    call = CALLS[name]
    value = dict(slots(call))[arg]
    bad = pool(value)[label]()
    try:
        with warnings.catch_warnings():  # a silently dropped imaginary part is a failure too
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            run(call, {arg: bad})
    except ValueError as e:
        message = str(e)
        allowed = (arg, *call.accept.get(arg, ()))
        assert any(names(message, a) for a in allowed), (
            f"{name}: {arg}={label}: the ValueError names none of {allowed}: {message}"
        )
    except AssertionError as e:  # the template's output check
        raise AssertionError(f"{name}: {arg}={label}: bad output: {e}") from e
    except Exception as e:  # any other exception type fails the case
        raise AssertionError(
            f"{name}: {arg}={label}: {type(e).__name__} (want a ValueError naming {arg!r}): {e}"
        ) from e


def cases(name: str) -> list[tuple[str, str]]:
    call = CALLS[name]
    return [
        (arg, label)
        for arg, value in slots(call)
        for label in pool(value)
        if not (label == "huge int" and arg in call.sizes)
    ]


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CALLS))
def test_template_is_valid(name):
    """The unmodified template runs (so the fuzz cases below test one bad argument each)."""
    run(CALLS[name], {})


@pytest.mark.parametrize("name", sorted(CALLS))
@few(12)
@given(data=st.data())
def test_fuzz(name, data):
    """One argument of the template, then one adversarial value of its pool."""
    by_arg: dict[str, list[str]] = {}
    for arg, label in cases(name):
        by_arg.setdefault(arg, []).append(label)
    arg = data.draw(st.sampled_from(list(by_arg)), label="argument")
    label = data.draw(st.sampled_from(by_arg[arg]), label="value")
    check(name, arg, label)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_adversarial_value(name):
    """Every pool value on every argument (exhaustive; ``-m slow``). Collects all failures."""
    failures = []
    for arg, label in cases(name):
        try:
            check(name, arg, label)
        except AssertionError as e:
            failures.append(str(e).splitlines()[0][:300])
    assert not failures, "\n".join(failures)


def test_names_helper():
    assert names("x must have shape [N, D]", "x")
    assert not names("x_vision must have shape", "x")
    assert math.isnan(GENERIC["nan"]())
