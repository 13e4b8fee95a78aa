"""The LRP plan of the plain (conv-ReLU-pool-dense) networks, for ``pruneax.weights``'s z+ LRP
and filter-pruning criteria ("Pruning by Explaining", Yeom et al. 2021)."""

from __future__ import annotations

from flax import nnx

from pruneax.models.convnets._convnets import ConvNet, LeNet300100
from pruneax.weights import LRPLayer

_SUPPORTED = (nnx.Conv, nnx.Linear, nnx.List)


def _conv_layer(conv: nnx.Conv, name: str) -> LRPLayer:
    if conv.feature_group_count != 1 or any(d != 1 for d in _pair(conv.kernel_dilation)):
        raise ValueError(f"lrp_plan: layer {name!r}: grouped or dilated convolutions are not "
                         "supported by the z+ LRP pass")  # fmt: skip
    if any(d != 1 for d in _pair(conv.input_dilation)) or conv.mask is not None:
        raise ValueError(f"lrp_plan: layer {name!r}: input dilation / kernel masks unsupported")
    padding = conv.padding
    if not isinstance(padding, str):
        if isinstance(padding, int):
            padding = ((padding, padding),) * 2
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    elif padding not in ("SAME", "VALID"):
        raise ValueError(f"lrp_plan: layer {name!r}: padding {padding!r} is not supported")
    return LRPLayer("conv", name, strides=_pair(conv.strides), padding=padding)


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    return tuple(int(s) for s in v)


def _dense(prefix: str, n: int) -> list[LRPLayer]:
    return [x for j in range(n) for x in (LRPLayer("dense", f"{prefix}/{j}"), LRPLayer("relu"))]


def lrp_plan(model: nnx.Module) -> tuple[LRPLayer, ...]:
    """The ``pruneax.weights.LRPLayer`` plan of a ``ConvNet`` or ``LeNet300100``.

    The plan follows the model's forward pass (conv + ReLU, 2x2 max-pool after each stage,
    flatten, dense + ReLU, classifier); its names are the parameter prefixes of
    ``nnx.state(model, nnx.Param)`` (``"convs/0"``, ``"fcs/1"``, ``"out"``).

    Args:
      model: a ``ConvNet`` (Conv-2/4/6) or ``LeNet300100``.

    Returns:
      A tuple of ``LRPLayer`` for ``lrp_relevance`` / ``lrp_filter_scores`` /
      ``iterative_filter_pruning``.

    Raises:
      ValueError: for any other model, naming the first layer the z+ pass does not support
        (e.g. a ``CifarResNet``'s BatchNorm; its residual adds are not supported either).

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.convnets import ConvNet, lrp_plan
      >>> plan = lrp_plan(ConvNet("conv2", input_shape=(8, 8, 1), rngs=nnx.Rngs(0)))
      >>> [layer.name or layer.kind for layer in plan][:6]
      ['convs/0', 'relu', 'convs/1', 'relu', 'maxpool', 'flatten']
    """
    if isinstance(model, ConvNet):
        plan, i = [], 0
        for n in model.stage_sizes:
            for _ in range(n):
                plan += [_conv_layer(model.convs[i], f"convs/{i}"), LRPLayer("relu")]
                i += 1
            plan.append(LRPLayer("maxpool", window=(2, 2), strides=(2, 2), padding="VALID"))
        plan.append(LRPLayer("flatten"))
        return (*plan, *_dense("fcs", len(model.fcs)), LRPLayer("dense", "out"))
    if isinstance(model, LeNet300100):
        return (LRPLayer("flatten"), *_dense("fcs", len(model.fcs)), LRPLayer("dense", "out"))
    if not isinstance(model, nnx.Module):
        raise ValueError(f"lrp_plan: model must be an nnx.Module; got {type(model).__name__}")
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and path and not isinstance(node, _SUPPORTED):
            name = "/".join(str(p) for p in path)
            raise ValueError(
                f"lrp_plan: layer {name!r} ({type(node).__name__}) of {type(model).__name__} is "
                "not supported by the z+ LRP pass (supported models: ConvNet, LeNet300100; no "
                "BatchNorm, no residual adds)"
            )
    raise ValueError(
        f"lrp_plan: {type(model).__name__} is not supported (supported: ConvNet, LeNet300100); "
        "build an LRPLayer plan by hand for other plain conv-ReLU-pool-dense networks"
    )
