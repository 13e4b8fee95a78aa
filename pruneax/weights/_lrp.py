"""Layer-wise relevance propagation (LRP) with the z+ rule, as used by "Pruning by Explaining".

The z+ rule redistributes the relevance ``R`` of a layer's outputs onto its inputs in
proportion to the positive contributions ``x_i * w_ij^+`` (bias ignored):
``Z = x @ W+``, ``S = R / stab(Z)``, ``R_in = x * (W+^T S)``. ``W+^T S`` is computed as the
vector-Jacobian product of the layer with ``W+``, so any stride / padding of a convolution is
handled by JAX's transpose (no hand-written ``conv_transpose``). The stabiliser is
``stab(Z) = Z + eps * sign(Z)`` with ``sign(0) = 1``: a unit whose inputs are all zero gets
``R / eps`` instead of a division by zero (the published code adds ``+1e-9`` only).

A network is described by a *plan*, a tuple of ``LRPLayer`` (conv, dense, relu, dropout,
maxpool, flatten) whose ``name`` points into a parameter pytree by leaf name (``"convs/0"`` ->
``"convs/0/kernel"``, ``"convs/0/bias"``): no Flax dependency. ``pruneax.models.convnets
.lrp_plan`` builds the plan of a ``ConvNet`` / ``LeNet300100``.

References: Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
  Layer-Wise Relevance Propagation", PLoS ONE 2015; Montavon et al., "Explaining nonlinear
  classification decisions with deep Taylor decomposition", Pattern Recognition 2017; Yeom et
  al., "Pruning by Explaining: A Novel Criterion for Deep Neural Network Pruning", Pattern
  Recognition 2021 (code: seulkiyeom/LRP_pruning).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks, _paths

KINDS = ("conv", "dense", "relu", "dropout", "maxpool", "flatten")
_DN = ("NHWC", "HWIO", "NHWC")


class LRPLayer(NamedTuple):
    """One layer of an LRP plan (hashable, so a plan can be a static ``jit`` argument).

    Attributes:
      kind: ``"conv"`` (NHWC input, HWIO kernel), ``"dense"`` (kernel ``[d_in, d_out]``),
        ``"relu"``, ``"dropout"`` (identity at inference), ``"maxpool"`` (NHWC) or
        ``"flatten"`` (``[B, ...] -> [B, prod]``, row-major).
      name: for conv / dense, the parameter prefix: ``name + "/kernel"`` (and optional
        ``name + "/bias"``) in the parameter tree's leaf names; None for the others.
      strides: conv / maxpool strides; None = ``(1, 1)`` for conv, ``window`` for maxpool.
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))`` (conv and maxpool).
      window: maxpool window.
    """

    kind: str
    name: str | None = None
    strides: tuple[int, int] | None = None
    padding: str | tuple[tuple[int, int], ...] = "SAME"
    window: tuple[int, int] = (2, 2)


def check_eps(eps: object) -> float:
    """``eps`` as a float; ValueError unless it is a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.integer | np.floating):
        raise ValueError(f"eps must be a positive float; got {type(eps).__name__} {eps!r}")
    if not (math.isfinite(float(eps)) and float(eps) > 0):
        raise ValueError(f"eps must be a finite float > 0; got {eps!r}")
    return float(eps)


def _stabilise(z: jax.Array, eps: float) -> jax.Array:
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _zplus(layer_fn, x: jax.Array, r_out: jax.Array, eps: float) -> jax.Array:
    """z+ through the linear map ``layer_fn`` (already built with ``W+``, no bias)."""
    z, vjp = jax.vjp(layer_fn, x)
    if z.shape != r_out.shape:
        raise ValueError(f"r_out has shape {r_out.shape}; the layer's output is {z.shape}")
    (c,) = vjp((r_out / _stabilise(z, eps)).astype(z.dtype))
    return x * c


def zplus_dense(x: jax.Array, w: jax.Array, r_out: jax.Array, *, eps: float = 1e-9) -> jax.Array:
    """z+ relevance of a dense layer's inputs: ``x * ((R / stab(x @ W+)) @ W+^T)``.

    Args:
      x: inputs [B, d_in].
      w: kernel [d_in, d_out] (Flax layout); only its positive part is used, the bias never.
      r_out: relevance of the outputs [B, d_out].
      eps: stabiliser > 0: ``Z + eps * sign(Z)`` with ``sign(0) = 1``.

    Returns:
      Relevance of the inputs [B, d_in]. With ``x >= 0`` it sums to ``sum(r_out)`` up to
      ``eps`` (outputs whose ``Z`` is 0 pass nothing on).

    Raises:
      ValueError: for eps <= 0 or shapes that do not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> r = W.zplus_dense(jnp.array([[1.0, 3.0]]), jnp.array([[1.0], [-2.0]]), jnp.ones((1, 1)))
      >>> [round(v, 6) for v in r[0].tolist()]  # the negative weight gets no share
      [1.0, 0.0]
    """
    eps = check_eps(eps)
    x, w, r_out = _checks.floats("zplus_dense", x=x, w=w, r_out=r_out)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"x must be [B, d_in] and w [d_in, d_out]; got {x.shape}, {w.shape}")
    wp = jnp.maximum(w, 0)
    return _zplus(lambda a: a @ wp, x, r_out, eps)


def _pad(padding):
    return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def zplus_conv(
    x: jax.Array,
    w: jax.Array,
    r_out: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[Sequence[int]] = "SAME",
    eps: float = 1e-9,
) -> jax.Array:
    """z+ relevance of a 2-D convolution's inputs (NHWC input, HWIO kernel, any stride/padding).

    ``Z = conv(x, W+)``, ``S = R / stab(Z)``, ``R_in = x * conv^T(S, W+)`` where ``conv^T`` is
    the vector-Jacobian product of the convolution (so positions that no window covers, e.g.
    the last row with stride 2 and VALID padding, get zero relevance).

    Args:
      x: inputs [B, H, W, C_in].
      w: kernel [kh, kw, C_in, C_out]; only the positive part is used, the bias never.
      r_out: relevance of the outputs [B, H', W', C_out].
      strides: the convolution's strides.
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``, as ``lax.conv``.
      eps: stabiliser > 0.

    Returns:
      Relevance of the inputs [B, H, W, C_in].

    Raises:
      ValueError: for eps <= 0 or shapes that do not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1))
      >>> r = W.zplus_conv(x, w, jnp.ones((1, 2, 2, 1)), strides=(2, 2), padding="VALID")
      >>> round(float(r.sum()), 5)
      4.0
    """
    eps = check_eps(eps)
    x, w, r_out = _checks.floats("zplus_conv", x=x, w=w, r_out=r_out)
    if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2]:
        raise ValueError(f"x must be [B, H, W, C_in] and w [kh, kw, C_in, C_out]; got "
                         f"{x.shape}, {w.shape}")  # fmt: skip
    strides = _checks.ints(strides, "strides", 2, "zplus_conv")
    padding = _pad(_checks.padding(padding, 2, "zplus_conv"))
    x, wp = x.astype(jnp.result_type(x, w)), jnp.maximum(w, 0).astype(jnp.result_type(x, w))
    conv = functools.partial(
        jax.lax.conv_general_dilated,
        rhs=wp,
        window_strides=strides,
        padding=padding,
        dimension_numbers=_DN,
    )
    return _zplus(lambda a: conv(a), x, r_out, eps)


def _pool(x, window, strides, padding):
    pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), pad
    )  # fmt: skip


def maxpool_relevance(
    x: jax.Array,
    r_out: jax.Array,
    *,
    window: Sequence[int] = (2, 2),
    strides: Sequence[int] | None = None,
    padding: str | Sequence[Sequence[int]] = "VALID",
    eps: float = 1e-9,
) -> jax.Array:
    """Winner-take-all relevance through a max-pool: each window's relevance goes to its max.

    ``R_in = x * unpool(R / stab(maxpool(x)))``, where unpool is the max-pool's
    vector-Jacobian product (the gradient goes to the first maximal position of a window; with
    overlapping windows contributions add up).

    Args:
      x: pool inputs [B, H, W, C].
      r_out: relevance of the pool outputs [B, H', W', C].
      window: pool window.
      strides: pool strides (None = window).
      padding: ``"VALID"``, ``"SAME"`` or explicit pairs for H and W.
      eps: stabiliser > 0.

    Returns:
      Relevance of the inputs [B, H, W, C].

    Raises:
      ValueError: for eps <= 0 or shapes that do not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> x = jnp.array([1.0, 4.0, 2.0, 3.0]).reshape(1, 2, 2, 1)
      >>> r = W.maxpool_relevance(x, jnp.ones((1, 1, 1, 1)))
      >>> [round(v, 6) for v in r.ravel().tolist()]
      [0.0, 1.0, 0.0, 0.0]
    """
    eps = check_eps(eps)
    x, r_out = _checks.floats("maxpool_relevance", x=x, r_out=r_out)
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, C]; got shape {x.shape}")
    window = _checks.ints(window, "window", 2, "maxpool_relevance")
    if strides is not None:
        strides = _checks.ints(strides, "strides", 2, "maxpool_relevance")
    strides = window if strides is None else strides
    padding = _pad(_checks.padding(padding, 2, "maxpool_relevance"))
    return _zplus(lambda a: _pool(a, window, strides, padding), x, r_out, eps)


def _param(flat: Mapping[str, Any], layer: LRPLayer, leaf: str, required: bool = True):
    key = f"{layer.name}/{leaf}"
    if key not in flat or flat[key] is None:
        if required:
            raise ValueError(
                f"plan layer {layer.name!r} ({layer.kind}): params has no parameter {key!r}"
            )
        return None
    return _checks.array(flat[key], f"params {key}")


def _forward_layer(flat, layer: LRPLayer, x):
    if layer.kind == "conv":
        y = jax.lax.conv_general_dilated(
            x, _param(flat, layer, "kernel"), layer.strides or (1, 1), _pad(layer.padding),
            dimension_numbers=_DN,
        )  # fmt: skip
    elif layer.kind == "dense":
        y = x @ _param(flat, layer, "kernel")
    elif layer.kind == "relu":
        return jax.nn.relu(x)
    elif layer.kind == "maxpool":
        return _pool(x, layer.window, layer.strides or layer.window, _pad(layer.padding))
    elif layer.kind == "flatten":
        return jnp.reshape(x, (x.shape[0], -1))
    else:  # dropout: identity at inference
        return x
    b = _param(flat, layer, "bias", required=False)
    return y if b is None else y + b


def check_plan(plan: Sequence[LRPLayer], where: str) -> tuple[LRPLayer, ...]:
    """The plan as a tuple; ValueError (prefixed ``where``) naming any unsupported layer."""
    if not isinstance(plan, Sequence) or not plan:
        raise ValueError(f"{where}: plan must be a non-empty sequence of LRPLayer; got {plan!r}")
    out = []
    for i, layer in enumerate(plan):
        if not isinstance(layer, LRPLayer):
            raise ValueError(f"{where}: plan[{i}] must be an LRPLayer; got {layer!r}")
        if layer.kind not in KINDS:
            raise ValueError(
                f"{where}: plan[{i}] ({layer.name or layer.kind!r}) has unsupported layer kind "
                f"{layer.kind!r}; supported: {KINDS}"
            )
        if layer.kind in ("conv", "dense") and not layer.name:
            raise ValueError(f"{where}: plan[{i}] ({layer.kind}) needs a parameter name")
        out.append(layer._replace(padding=_pad(layer.padding)))
    if out[-1].kind != "dense":
        raise ValueError(f"{where}: the plan must end with the dense classifier; got {out[-1]}")
    return tuple(out)


def forward(params: Any, plan: Sequence[LRPLayer], x: jax.Array, probes=None):
    """Logits and the input of every plan layer; ``probes[i]`` is added to layer i's output."""
    flat = _paths.by_name(params)
    inputs = []
    for i, layer in enumerate(plan):
        inputs.append(x)
        x = _forward_layer(flat, layer, x)
        if probes is not None and i in probes:
            x = x + probes[i]
    return x, inputs


def _backward(params, plan, x, labels, eps):
    logits, inputs = forward(params, plan, x)
    r = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    flat, out = _paths.by_name(params), {}
    for layer, a in zip(reversed(plan), reversed(inputs), strict=True):
        if layer.kind in ("conv", "dense"):
            out[layer.name] = r
            w = _param(flat, layer, "kernel")
            if layer.kind == "dense":
                r = zplus_dense(a, w, r, eps=eps)
            else:
                r = zplus_conv(a, w, r, strides=layer.strides or (1, 1),
                               padding=layer.padding, eps=eps)  # fmt: skip
        elif layer.kind == "maxpool":
            r = maxpool_relevance(a, r, window=layer.window, strides=layer.strides,
                                  padding=layer.padding, eps=eps)  # fmt: skip
        elif layer.kind == "flatten":
            r = jnp.reshape(r, a.shape)
    out["input"] = r
    return out


_backward_jit = jax.jit(_backward, static_argnames=("plan", "eps"))


def logits_shape(params: Any, plan: tuple[LRPLayer, ...], x: jax.Array, where: str, name: str):
    """The shape of ``forward``'s logits; ValueError naming ``params`` (a missing or non-array
    parameter) or ``name`` (an input the plan cannot take)."""
    flat = _paths.by_name(params)
    for layer in (layer for layer in plan if layer.kind in ("conv", "dense")):
        _param(flat, layer, "kernel"), _param(flat, layer, "bias", required=False)
    try:
        return jax.eval_shape(lambda p, a: forward(p, plan, a)[0], params, x)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(
            f"{where}: the plan cannot run on {name} of shape {x.shape} {x.dtype} with these "
            f"params: {str(e).splitlines()[0]}"
        ) from None


def check_labels(labels: Any, batch: int, num_classes: int, where: str) -> jax.Array:
    """Integer labels [B] in ``[0, num_classes)`` (checked when concrete)."""
    arr = jnp.asarray(_checks.array(labels, "labels", where))
    if arr.shape != (batch,) or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(
            f"{where}: labels must be integer [B={batch}]; got {arr.dtype} {arr.shape}"
        )
    try:
        host = np.asarray(arr)
    except jax.errors.TracerArrayConversionError:  # under jit: not checked
        return arr
    if host.size:
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{where}: labels must be in [0, {num_classes}) (num_classes); got min {lo}, "
                f"max {hi}"
            )
    return arr


def lrp_relevance(
    params: Any,
    plan: Sequence[LRPLayer],
    x: jax.Array,
    labels: jax.Array,
    *,
    eps: float = 1e-9,
) -> dict[str, jax.Array]:
    """z+ relevance at the output of every conv / dense layer, from the one-hot true label.

    The initial relevance is the one-hot of ``labels`` at the logits (value 1, not the logit);
    it is propagated back with the z+ rule through dense and conv layers, passed unchanged
    through ReLU and dropout, winner-take-all through max-pools and reshaped through flatten.

    Args:
      params: parameter pytree (dict or Flax ``nnx.State``) holding ``{name}/kernel`` and
        optionally ``{name}/bias`` for every conv / dense layer of the plan.
      plan: the network as ``LRPLayer`` objects, ending with the dense classifier.
      x: a batch of inputs [B, ...] (NHWC images for a conv plan).
      labels: true labels, integer [B] in ``[0, num_classes)``.
      eps: z+ stabiliser > 0 (the published code's 1e-9 by default).

    Returns:
      ``{layer name: relevance at that layer's OUTPUT}`` for every conv ([B, H, W, C]) and
      dense ([B, d]) layer, plus ``"input"``: the relevance of ``x``.

    Raises:
      ValueError: for an unsupported layer kind (naming it), eps <= 0, labels of the wrong
        shape or out of range, or parameters missing from ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> plan = (W.LRPLayer("dense", "fc"), W.LRPLayer("relu"), W.LRPLayer("dense", "out"))
      >>> params = {"fc": {"kernel": jnp.ones((3, 4))}, "out": {"kernel": jnp.ones((4, 2))}}
      >>> rel = W.lrp_relevance(params, plan, jnp.array([[1.0, 2.0, 1.0]]), jnp.array([1]))
      >>> round(float(rel["input"].sum()), 5), rel["fc"].shape
      (1.0, (1, 4))
    """
    plan = check_plan(plan, "lrp_relevance")
    eps = check_eps(eps)
    x = _checks.array(x, "x", "lrp_relevance", floating=True)
    logits = logits_shape(params, plan, x, "lrp_relevance", "x")
    labels = check_labels(labels, x.shape[0], logits.shape[-1], "lrp_relevance")
    return _backward_jit(params, plan, x, labels, eps)
