"""Physical removal of pruned filters (and dense hidden units) from the plain networks.

``pruneax.weights.filter_masks`` masks a filter: its kernel column and bias are zero, so after
the ReLU the channel is constant zero, stays zero through the 2x2 max-pool, and contributes
nothing to the next layer. ``remove_filters`` builds the smaller network without those channels
and without the next layer's matching inputs: the same function with smaller convolutions and
matmuls.

References: Yeom et al., "Pruning by Explaining: A Novel Criterion for Deep Neural Network
Pruning", Pattern Recognition 2021; Li et al., "Pruning Filters for Efficient ConvNets",
ICLR 2017 (removing a filter and the next layer's input channel).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.loader import abstract_leaves
from pruneax.models.convnets._convnets import ConvNet, LeNet300100
from pruneax.models.convnets._resnet import CifarResNet
from pruneax.weights._paths import by_name

_WHERE = "remove_filters"


def _units(model: ConvNet | LeNet300100) -> list[tuple[str, int]]:
    """``(layer name, output width)`` of the removable layers in forward order (the classifier
    ``out`` follows the last one)."""
    convs = model.convs if isinstance(model, ConvNet) else []
    return [(f"convs/{i}", c.out_features) for i, c in enumerate(convs)] + [
        (f"fcs/{j}", fc.out_features) for j, fc in enumerate(model.fcs)
    ]


def _check_model(model: object) -> None:
    if isinstance(model, CifarResNet):
        raise ValueError(
            f"{_WHERE}: model is a {type(model).__name__}; physical removal of ResNet filters is "
            "not supported (its BatchNorm layers and residual adds couple the channels of a "
            "stage, so a filter cannot be removed on its own); supported models: ConvNet, "
            "LeNet300100. Mask ResNet filters with pruneax.weights.filter_masks instead"
        )
    if not isinstance(model, ConvNet | LeNet300100):
        raise ValueError(
            f"{_WHERE}: model must be a ConvNet or a LeNet300100; got {type(model).__name__}"
        )


def _check_pruned(pruned: object, widths: dict[str, int]) -> dict[str, set[int]]:
    """``{layer: removed indices}`` from ``(layer name, output index)`` pairs."""
    expected = f"one of {sorted(widths)}" if widths else "none (the model has no hidden layer)"
    if isinstance(pruned, str | bytes | dict) or not isinstance(pruned, Iterable):
        raise ValueError(
            f"{_WHERE}: pruned must be an iterable of (layer name, output index) pairs; got "
            f"{type(pruned).__name__}"
        )
    drop: dict[str, set[int]] = {}
    for item in pruned:
        ok = isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)
        if ok:
            layer, j = item
            ok = isinstance(j, numbers.Integral) and not isinstance(j, bool)
        if not ok:
            raise ValueError(
                f"{_WHERE}: pruned must hold (layer name, output index) pairs of a str and an "
                f"int; got {item!r}"
            )
        if layer == "out":
            raise ValueError(
                f"{_WHERE}: pruned names the classifier output layer 'out' (index {j}); its "
                f"outputs are the logits and cannot be removed; expected a layer {expected}"
            )
        if layer not in widths:
            raise ValueError(
                f"{_WHERE}: pruned names an unknown layer {layer!r}; expected {expected}"
            )
        if not 0 <= int(j) < widths[layer]:
            raise ValueError(
                f"{_WHERE}: pruned index {j} of layer {layer!r} is out of range; expected an int "
                f"in [0, {widths[layer]})"
            )
        if int(j) in drop.setdefault(layer, set()):
            raise ValueError(
                f"{_WHERE}: pruned holds ({layer!r}, {int(j)}) more than once; expected distinct "
                "pairs"
            )
        drop[layer].add(int(j))
    for layer, idx in drop.items():
        if len(idx) == widths[layer]:
            raise ValueError(
                f"{_WHERE}: pruned removes all {widths[layer]} outputs of layer {layer!r}; at "
                "least one must remain"
            )
    return drop


def remove_filters(
    model: ConvNet | LeNet300100, pruned: Iterable[tuple[str, int]]
) -> ConvNet | LeNet300100:
    """A smaller copy of ``model`` without the pruned filters (dense hidden units).

    Takes the ``(layer name, output index)`` pairs that ``pruneax.weights.filter_masks`` takes
    (names as in ``nnx.state(model, nnx.Param)`` and ``lrp_plan``: ``"convs/{i}"`` and
    ``"fcs/{j}"``). Each pruned conv filter loses its kernel column (last axis) and bias entry,
    and the next layer loses the matching input: the next conv its input channel, the first
    dense layer after the flatten every row of that channel (the flatten is row-major over
    ``(h, w, c)``, so channel ``c`` of ``C`` is rows ``p * C + c`` for every position ``p``). A
    pruned dense hidden unit loses its column and bias entry and the next layer its row. The
    kept units stay in their order and every other parameter is copied unchanged.

    With ReLU after every removable layer (and max-pools after ReLUs), a filter whose kernel
    column and bias are zero outputs exactly zero, so the result computes what ``model``
    computes with ``apply_masks(params, filter_masks(params, pruned))`` (up to float rounding),
    with fewer parameters. ``model`` is not modified; an already smaller model works (indices
    then refer to its current units). After ``iterative_filter_pruning`` pass every pair of its
    history: ``[p for step in history for p in step]``.

    Args:
      model: a ``ConvNet`` (conv filters and dense hidden units) or a ``LeNet300100`` (dense
        hidden units).
      pruned: ``(layer name, output index)`` pairs, distinct, each index in ``[0, width)``.

    Returns:
      A new model of the same class with the smaller widths (``ConvNet(widths=, hidden=)``,
      ``LeNet300100(hidden=)``), same input shape and classes, parameters in their dtypes.

    Raises:
      ValueError: for a ``CifarResNet`` (BatchNorm and residual adds couple its channels: not
        supported) or any other model; for ``pruned`` that is not pairs of a str and an int,
        names an unknown layer or the classifier ``"out"``, has an index out of range or a
        pair twice, or removes every output of a layer; for a model whose variables are not
        those its class builds.

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.convnets import ConvNet, remove_filters
      >>> model = ConvNet("conv2", input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
      >>> small = remove_filters(model, [("convs/0", 3), ("convs/1", 0), ("convs/1", 5)])
      >>> small.widths, small.convs[1].kernel.shape, small.fcs[0].kernel.shape
      ((63, 62), (3, 3, 63, 62), (992, 256))
    """
    _check_model(model)
    units = _units(model)
    drop = _check_pruned(pruned, dict(units))
    values = dict(by_name(nnx.state(model)))
    names = [name for name, _ in units] + ["out"]
    new_width = {}
    for k, (layer, width) in enumerate(units):
        keep = np.asarray(sorted(set(range(width)) - drop.get(layer, set())), np.int32)
        new_width[layer] = len(keep)
        if len(keep) == width:
            continue
        for leaf in ("kernel", "bias"):
            values[f"{layer}/{leaf}"] = jnp.take(values[f"{layer}/{leaf}"], keep, axis=-1)
        nxt = f"{names[k + 1]}/kernel"
        rows = values[nxt].shape[-2]  # next kernel: conv [kh, kw, C, O] or dense [P * C, O]
        positions = rows // width
        elem = (np.arange(positions)[:, None] * width + keep[None, :]).reshape(-1)
        values[nxt] = jnp.take(values[nxt], jnp.asarray(elem, jnp.int32), axis=-2)
    hidden = [new_width[f"fcs/{j}"] for j in range(len(model.fcs))]
    num_classes = model.out.out_features
    if isinstance(model, LeNet300100):
        in_features = model.in_features

        def build():
            return LeNet300100(
                in_features=in_features, num_classes=num_classes, hidden=hidden, rngs=nnx.Rngs(0)
            )
    else:
        widths = [new_width[f"convs/{i}"] for i in range(len(model.convs))]
        variant, input_shape = model.variant, model.input_shape

        def build():
            return ConvNet(
                variant,
                input_shape=input_shape,
                num_classes=num_classes,
                widths=widths,
                hidden=hidden,
                rngs=nnx.Rngs(0),
            )

    leaf_names, abstract, merge = abstract_leaves(build)
    if sorted(leaf_names) != sorted(values):  # the model carries something unexpected
        raise ValueError(
            f"{_WHERE}: the model's variables {sorted(values)} differ from those of its class "
            f"{sorted(leaf_names)}"
        )
    leaves = []
    for name, leaf in zip(leaf_names, abstract, strict=True):
        value = values[name]
        if tuple(value.shape) != tuple(leaf.shape):  # pragma: no cover - a bug if reached
            raise AssertionError(f"{_WHERE}: {name} has shape {value.shape}, not {leaf.shape}")
        leaves.append(jnp.asarray(value))
    return merge(leaves)
