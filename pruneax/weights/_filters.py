"""Filter (output-channel) pruning criteria and the iterative schedule of "Pruning by Explaining".

Criteria, each ``{layer name: [C_out] score}`` accumulated over a pruning set: LRP z+
relevance at the layer's output (Yeom et al.), weight L1 per filter (Li et al.) and first-order
Taylor ``|sum a * dL/da|`` (Molchanov et al.); per-layer normalisation (L1 or L2) makes layers
comparable for one global ascending ranking. Pruned filters are *masked* (kernel column and
bias entry set to zero, kept zero with ``apply_masks`` / ``masked_optimizer``); pruneax has no
physical channel removal for convnets.

References: Yeom et al., "Pruning by Explaining", Pattern Recognition 2021; Li et al., "Pruning
  Filters for Efficient ConvNets", ICLR 2017; Molchanov et al., "Pruning Convolutional Neural
  Networks for Resource Efficient Inference", ICLR 2017.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks, _lrp, _paths

Batches = Iterable[tuple[jax.Array, jax.Array]] | Callable[[], Iterable[tuple[jax.Array, Any]]]
NORMS = ("l1", "l2", None)
DEFAULT_NORM = {"lrp": "l1", "weight": "l1", "taylor": "l2"}


def _layers(plan, kinds, where):
    kinds = tuple(_checks.items(kinds, "kinds", where))
    if (
        not kinds
        or not all(isinstance(k, str) for k in kinds)
        or not set(kinds) <= {"conv", "dense"}
    ):
        raise ValueError(
            f"{where}: kinds must be a non-empty subset of ('conv', 'dense'); got {kinds}"
        )
    return tuple(i for i, layer in enumerate(plan) if layer.kind in kinds)


def _batches(batches: Batches, where: str, floating: bool):
    it = _checks.iterator(batches() if callable(batches) else batches, "batches", where)
    n = 0
    for item in it:
        if not (isinstance(item, Sequence) and len(item) == 2):
            raise ValueError(f"{where}: batches must yield (x, labels) pairs; got {type(item)}")
        yield _checks.array(item[0], f"batches[{n}] x", where, floating=floating), item[1]
        n += 1
    if n == 0:
        raise ValueError(f"{where}: batches is empty")


def normalize_filter_scores(
    scores: Mapping[str, jax.Array], normalize: str | None
) -> dict[str, jax.Array]:
    """Per-layer normalisation: ``"l1"`` ``v / sum|v|``, ``"l2"`` ``|v| / ||v||_2``, None: as is.

    A layer whose scores are all zero is left at zero (no division by zero).

    Args:
      scores: ``{layer: [C] scores}``.
      normalize: ``"l1"``, ``"l2"`` or None.

    Returns:
      ``{layer: [C] float32}``.

    Raises:
      ValueError: for another ``normalize``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.normalize_filter_scores({"c": jnp.array([1.0, 3.0])}, "l1")["c"].tolist()
      [0.25, 0.75]
    """
    _checks.choice(normalize, NORMS, "normalize")
    out = {}
    for name, v in _checks.mapping(scores, "scores").items():
        v = _checks.array(v, f"scores[{name!r}]").astype(jnp.float32)
        if normalize == "l1":
            d = jnp.sum(jnp.abs(v))
        elif normalize == "l2":
            v = jnp.abs(v)
            d = jnp.sqrt(jnp.sum(v * v))
        else:
            d = jnp.ones(())
        out[name] = jnp.where(d > 0, v / jnp.where(d > 0, d, 1.0), v)
    return out


@functools.partial(jax.jit, static_argnames=("plan", "eps", "idx"))
def _lrp_sums(params, x, labels, plan, eps, idx):
    rel = _lrp._backward(params, plan, x, labels, eps)
    sums = {}
    for i in idx:
        r = rel[plan[i].name]
        sums[plan[i].name] = jnp.sum(r, axis=tuple(range(r.ndim - 1)))
    return sums


def _accumulate(fn, params, plan, batches, where, floating=True):
    total = None
    for i, (x, labels) in enumerate(_batches(batches, where, floating)):
        logits = _lrp.logits_shape(params, plan, x, where, f"batches[{i}] x")
        y = _lrp.check_labels(labels, x.shape[0], logits.shape[-1], where)
        part = fn(params, x, y)
        total = part if total is None else {k: total[k] + part[k] for k in total}
    return total


def lrp_filter_scores(
    params: Any,
    plan: Sequence[_lrp.LRPLayer],
    batches: Batches,
    *,
    eps: float = 1e-9,
    normalize: str | None = "l1",
    kinds: Sequence[str] = ("conv",),
) -> dict[str, jax.Array]:
    """LRP filter scores: z+ relevance at each layer's OUTPUT, summed over batch and space.

    For every batch the one-hot true label is propagated back (``lrp_relevance``); a filter's
    score is the sum of the relevance of its output channel over examples and positions,
    accumulated over the whole pruning set, then normalised per layer.

    Args:
      params: parameter pytree with the plan's ``{name}/kernel`` (``/bias``) leaves.
      plan: the network as ``LRPLayer`` objects.
      batches: ``(x, labels)`` pairs, or a zero-argument callable returning them.
      eps: z+ stabiliser > 0.
      normalize: ``"l1"`` (the published code), ``"l2"`` or None.
      kinds: which layers to score: ``("conv",)`` (filters) and/or ``"dense"`` (units).

    Returns:
      ``{layer name: [C_out] float32}`` in plan order.

    Raises:
      ValueError: bad plan / eps / labels / normalize / kinds, or no batches.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> plan = (W.LRPLayer("conv", "c", padding="VALID"), W.LRPLayer("relu"),
      ...         W.LRPLayer("flatten"), W.LRPLayer("dense", "out"))
      >>> params = {"c": {"kernel": jnp.ones((1, 1, 1, 2))}, "out": {"kernel": jnp.ones((2, 2))}}
      >>> s = W.lrp_filter_scores(params, plan, [(jnp.ones((1, 1, 1, 1)), jnp.array([0]))])
      >>> s["c"].tolist()
      [0.5, 0.5]
    """
    plan = _lrp.check_plan(plan, "lrp_filter_scores")
    eps, idx = _lrp.check_eps(eps), _layers(plan, kinds, "lrp_filter_scores")
    fn = functools.partial(_lrp_sums, plan=plan, eps=eps, idx=idx)
    total = _accumulate(fn, params, plan, batches, "lrp_filter_scores")
    return normalize_filter_scores(total, normalize)


def weight_filter_scores(
    params: Any,
    plan: Sequence[_lrp.LRPLayer],
    *,
    normalize: str | None = "l1",
    kinds: Sequence[str] = ("conv",),
) -> dict[str, jax.Array]:
    """Li et al.'s criterion: the L1 norm of each filter's kernel weights (bias excluded).

    Args:
      params: parameter pytree with the plan's ``{name}/kernel`` leaves.
      plan: the network as ``LRPLayer`` objects.
      normalize: ``"l1"`` (the published code with ``--norm``), ``"l2"`` or None.
      kinds: ``("conv",)`` and/or ``"dense"``.

    Returns:
      ``{layer name: [C_out] float32}``.

    Raises:
      ValueError: bad plan / normalize / kinds.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> plan = (W.LRPLayer("dense", "out"),)
      >>> params = {"out": {"kernel": jnp.array([[1.0, -3.0]])}}
      >>> W.weight_filter_scores(params, plan, normalize=None, kinds=("dense",))["out"].tolist()
      [1.0, 3.0]
    """
    plan = _lrp.check_plan(plan, "weight_filter_scores")
    flat = _paths.by_name(params)
    out = {}
    for i in _layers(plan, kinds, "weight_filter_scores"):
        w = _lrp._param(flat, plan[i], "kernel")
        out[plan[i].name] = jnp.sum(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
    return normalize_filter_scores(out, normalize)


@functools.partial(jax.jit, static_argnames=("plan", "idx"))
def _taylor_sums(params, x, labels, plan, idx):
    def outputs(pr, a):  # the output of every plan layer, probes added
        logits, inputs = _lrp.forward(params, plan, a, pr)
        return logits, [*inputs[1:], logits]

    shapes = jax.eval_shape(lambda a: outputs(None, a)[1], x)
    probes = {i: jnp.zeros(shapes[i].shape, shapes[i].dtype) for i in idx}

    def loss(pr):
        logits, acts = outputs(pr, x)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), acts

    grads, acts = jax.grad(loss, has_aux=True)(probes)
    out = {}
    for i in idx:
        ag = acts[i] * grads[i]
        out[plan[i].name] = jnp.sum(ag, axis=tuple(range(ag.ndim - 1))) / (ag.size // ag.shape[-1])
    return out


def taylor_filter_scores(
    params: Any,
    plan: Sequence[_lrp.LRPLayer],
    batches: Batches,
    *,
    normalize: str | None = "l2",
    kinds: Sequence[str] = ("conv",),
) -> dict[str, jax.Array]:
    """Molchanov et al.'s first-order Taylor criterion, as the LRP-pruning code computes it.

    Per batch: ``sum(a * dL/da) / (B * H * W)`` over examples and positions, where ``a`` is the
    layer's output (before the ReLU) and ``L`` the mean cross-entropy of the true labels;
    summed over batches, then ``abs`` (of the total, not per example) and normalised.

    Args:
      params: parameter pytree with the plan's ``{name}/kernel`` (``/bias``) leaves.
      plan: the network as ``LRPLayer`` objects.
      batches: ``(x, labels)`` pairs, or a zero-argument callable returning them.
      normalize: ``"l2"`` (the published code with ``--norm``), ``"l1"`` or None.
      kinds: ``("conv",)`` and/or ``"dense"``.

    Returns:
      ``{layer name: [C_out] float32}``, non-negative.

    Raises:
      ValueError: bad plan / labels / normalize / kinds, or no batches.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> plan = (W.LRPLayer("dense", "h"), W.LRPLayer("relu"), W.LRPLayer("dense", "out"))
      >>> params = {"h": {"kernel": jnp.eye(2)}, "out": {"kernel": jnp.array([[1.0, 0], [0, 2.0]])}}
      >>> s = W.taylor_filter_scores(params, plan, [(jnp.ones((1, 2)), jnp.array([0]))],
      ...                            normalize=None, kinds=("dense",))
      >>> s["h"].shape
      (2,)
    """
    plan = _lrp.check_plan(plan, "taylor_filter_scores")
    idx = _layers(plan, kinds, "taylor_filter_scores")
    fn = functools.partial(_taylor_sums, plan=plan, idx=idx)
    total = _accumulate(fn, params, plan, batches, "taylor_filter_scores", floating=False)
    return normalize_filter_scores({k: jnp.abs(v) for k, v in total.items()}, normalize)


def lowest_filters(
    scores: Mapping[str, jax.Array],
    count: int,
    *,
    exclude: Collection[tuple[str, int]] = (),
) -> list[tuple[str, int]]:
    """The ``count`` lowest-scoring filters over all layers (global ascending ranking).

    Ties go to the earlier layer (in ``scores`` order), then the lower index. Filters in
    ``exclude`` (already pruned) are not candidates.

    Args:
      scores: ``{layer: [C] scores}``, normalised per layer when layers are to be compared.
      count: how many filters to return, ``0 <= count <= candidates``.
      exclude: ``(layer, index)`` pairs to skip.

    Returns:
      ``[(layer, index), ...]`` from the lowest score up.

    Raises:
      ValueError: if count is not an int in range.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> W.lowest_filters({"a": jnp.array([0.5, 0.1]), "b": jnp.array([0.2, 0.9])}, 2)
      [('a', 1), ('b', 0)]
    """
    exclude = {_checks.pair(e, "exclude[i]") for e in _checks.items(exclude, "exclude")}
    for k, v in _checks.mapping(scores, "scores").items():
        _checks.shape_of(v, f"scores[{k!r}]")
    cand = [
        (float(v), k, j)
        for k, s in scores.items()
        for j, v in enumerate(np.asarray(s, np.float64).ravel())
        if (k, j) not in exclude
    ]
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise ValueError(f"count must be an int; got {type(count).__name__} {count!r}")
    if not 0 <= count <= len(cand):
        raise ValueError(f"count must be in [0, {len(cand)}] (candidate filters); got {count}")
    order = sorted(range(len(cand)), key=lambda t: cand[t][0])  # stable: layer order, index
    return [(cand[t][1], cand[t][2]) for t in order[:count]]
