"""The small networks of the Lottery Ticket Hypothesis paper: LeNet-300-100 and Conv-2/4/6.

References: Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks", ICLR 2019 (arXiv:1803.03635), Figure 2 (architectures) and Appendix.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.common import check_images, glorot_normal, is_size

# Conv-N of the LTH paper: widths of the 3x3 convolutions of each stage; every stage ends with a
# 2x2 max-pool (stride 2). The dense head is the same for all: FC 256, 256, then the classifier.
CONVNET_VARIANTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "conv2": ((64, 64),),
    "conv4": ((64, 64), (128, 128)),
    "conv6": ((64, 64), (128, 128), (256, 256)),
}
CONVNET_HIDDEN: tuple[int, ...] = (256, 256)
LENET_HIDDEN: tuple[int, ...] = (300, 100)


class LeNet300100(nnx.Module):
    """LeNet-300-100: the fully connected MNIST network of the LTH paper (784-300-100-10, ReLU).

    Kernels use Glorot (Xavier) *normal* init, truncated at two standard deviations and
    rescaled to variance ``2 / (fan_in + fan_out)`` (TensorFlow's ``glorot_normal``, which the
    LTH code used; the paper's "Gaussian Glorot"); biases start at zero.

    Parameter names (``nnx.state(model, nnx.Param)``): ``fcs/0/kernel`` [in_features, 300],
    ``fcs/1/kernel`` [300, 100], ``out/kernel`` [100, num_classes] and the matching ``*/bias``.
    The LTH prunes hidden layers at 20% per round and the output layer at 10%: the override glob
    ``"out/*"`` selects the output layer. With the defaults: 266,200 weights + 410 biases =
    266,610 parameters (the paper's 266K).

    Shapes:
      input ``x``: [B, ...] with ``prod(x.shape[1:]) == in_features``, e.g. MNIST [B, 28, 28, 1],
      [B, 28, 28] or [B, 784]; scikit-learn digits [B, 8, 8] with ``in_features=64``. It is
      flattened row-major inside. Output: logits [B, num_classes] float32.

    Args:
      in_features: number of input values per example (784 for MNIST 28x28, 64 for digits 8x8).
      num_classes: classifier width.
      hidden: hidden layer widths.
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: at construction for non-positive sizes; at call time if ``x`` has no batch
        axis or its per-example size is not ``in_features``.

    References: Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, Figure 2;
      Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
      networks", AISTATS 2010.
    """

    def __init__(
        self,
        *,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = LENET_HIDDEN,
        rngs: nnx.Rngs,
    ):
        if not all(is_size(s) for s in (in_features, *hidden, num_classes)):
            raise ValueError(
                f"in_features, hidden and num_classes must be positive ints; got in_features="
                f"{in_features!r}, hidden={tuple(hidden)!r}, num_classes={num_classes!r}"
            )
        sizes = [int(in_features), *(int(h) for h in hidden)]
        num_classes = int(num_classes)
        self.in_features = sizes[0]
        self.fcs = nnx.List(
            [
                nnx.Linear(a, b, kernel_init=glorot_normal, rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.out = nnx.Linear(sizes[-1], num_classes, kernel_init=glorot_normal, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits [B, num_classes] for inputs [B, ...] of ``in_features`` values each."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"LeNet300100: x must be [B, ...] with {self.in_features} values per example "
                f"(in_features); got shape {tuple(x.shape)}"
            )
        x = jnp.reshape(x, (x.shape[0], -1))
        for fc in self.fcs:
            x = jax.nn.relu(fc(x))
        return self.out(x)


def _sizes(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of positive ints, or None if it is not a sequence of them."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        return None
    items = tuple(value)
    return tuple(int(s) for s in items) if all(is_size(s) for s in items) else None


def _max_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class ConvNet(nnx.Module):
    """Conv-2 / Conv-4 / Conv-6 of the LTH paper (VGG-like CIFAR-10 networks).

    ``variant`` picks the convolution stages from ``CONVNET_VARIANTS``: conv2 = 64, 64, pool;
    conv4 = conv2 + 128, 128, pool; conv6 = conv4 + 256, 256, pool. Convolutions are 3x3,
    stride 1, SAME padding, with bias, followed by ReLU; pools are 2x2 max, stride 2, VALID
    (odd sizes round down, as TensorFlow's ``max_pooling2d``). The head is FC 256, FC 256
    (ReLU) and a linear classifier. All kernels use Glorot normal init (truncated, TensorFlow
    ``glorot_normal``); biases start at zero.

    Parameter names: ``convs/{i}/kernel`` [3, 3, C_in, C_out], ``fcs/{j}/kernel``,
    ``out/kernel`` [256, num_classes], and the matching ``*/bias``. The LTH prunes conv layers
    at 10% (Conv-2, Conv-4) or 15% (Conv-6), FC at 20% and the output at 10%: globs
    ``"convs/*"``, ``"fcs/*"``, ``"out/*"``.

    Weight counts on CIFAR-10 (32x32x3, ``param_count(model, kernels_only=True)``):

    =======  =========  =========  =========  ===========================
    variant  conv       dense      total      LTH paper, Figure 2
    =======  =========  =========  =========  ===========================
    conv2    38,592     4,262,400  4,300,992  38K conv, 4.3M total
    conv4    259,776    2,165,248  2,425,024  260K conv, 2.4M total
    conv6    1,144,512  1,116,672  2,261,184  1.1M conv, 1.7M total (a)
    =======  =========  =========  =========  ===========================

    (a) The architecture as the paper specifies it (and as the LTH and Zhou et al. 2019 code
    builds it: three pools take 32x32 to 4x4x256 = 4,096 features into FC 256) has 2.26M
    weights; the 1.7M printed in Figure 2 does not follow from it. Biases add 128 / 384 / 896
    (conv) + 522 (dense): ``param_count`` gives 4,301,642 / 2,425,930 / 2,262,602.

    Shapes:
      input ``x``: [B, H, W, C] with ``(H, W, C) == input_shape`` (CIFAR [B, 32, 32, 3], MNIST
      [B, 28, 28, 1], digits [B, 8, 8, 1]). Output: logits [B, num_classes] float32.

    Args:
      variant: ``"conv2"``, ``"conv4"`` or ``"conv6"``.
      input_shape: ``(H, W, C)`` of one example; H and W must be at least ``2 ** stages``
        (conv2: 2, conv4: 4, conv6: 8), so that every pool has a 2x2 window; 8x8 digits work
        for all three.
      num_classes: classifier width.
      widths: output channels of each convolution, one per conv layer in order (2 / 4 / 6
        entries); None (default) = the variant's, e.g. conv4 ``(64, 64, 128, 128)``.
        ``remove_filters`` builds models with smaller widths.
      hidden: widths of the dense hidden layers (default ``(256, 256)``).
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: at construction for an unknown variant, an input too small for the pools,
        or ``widths`` / ``hidden`` that are not positive ints (``widths`` of the wrong length);
        at call time if ``x`` is not ``[B, *input_shape]``.

    References: Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, Figure 2 (after
      Simonyan & Zisserman's VGG); Zhou et al., "Deconstructing Lottery Tickets", NeurIPS 2019.
    """

    def __init__(
        self,
        variant: str,
        *,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        widths: Sequence[int] | None = None,
        hidden: Sequence[int] = CONVNET_HIDDEN,
        rngs: nnx.Rngs,
    ):
        if variant not in CONVNET_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(CONVNET_VARIANTS)}; got {variant!r}")
        if len(input_shape) != 3 or not all(is_size(s) for s in input_shape):
            raise ValueError(f"input_shape must be (H, W, C) positive ints; got {input_shape!r}")
        if not is_size(num_classes):
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        stages = CONVNET_VARIANTS[variant]
        n_convs = sum(len(s) for s in stages)
        if widths is None:
            widths = [width for s in stages for width in s]
        conv_sizes, dense_sizes = _sizes(widths), _sizes(hidden)
        if conv_sizes is None or len(conv_sizes) != n_convs:
            raise ValueError(
                f"widths must be {n_convs} positive ints (one per conv layer of {variant!r}) "
                f"or None; got {widths!r}"
            )
        if dense_sizes is None:
            raise ValueError(f"hidden must be a sequence of positive ints; got {hidden!r}")
        h, w, c = (int(s) for s in input_shape)
        num_classes = int(num_classes)
        if min(h, w) < 2 ** len(stages):
            raise ValueError(
                f"ConvNet {variant!r} has {len(stages)} 2x2 max-pools, so H and W must be at "
                f"least {2 ** len(stages)}; got input_shape={tuple(input_shape)}"
            )
        self.variant = variant
        self.input_shape = (h, w, c)
        self.stage_sizes = tuple(len(s) for s in stages)

        convs, todo = [], iter(conv_sizes)
        for stage in stages:
            for _ in stage:
                width = next(todo)
                convs.append(
                    nnx.Conv(c, width, (3, 3), padding="SAME", kernel_init=glorot_normal, rngs=rngs)
                )
                c = width
            h, w = h // 2, w // 2
        self.convs = nnx.List(convs)
        self.widths, self.hidden = conv_sizes, dense_sizes
        sizes = [h * w * c, *dense_sizes]
        self.fcs = nnx.List(
            [
                nnx.Linear(a, b, kernel_init=glorot_normal, rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.out = nnx.Linear(sizes[-1], num_classes, kernel_init=glorot_normal, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, C] of shape ``input_shape``."""
        check_images(x, self.input_shape, f"ConvNet({self.variant!r})")
        i = 0
        for n in self.stage_sizes:
            for _ in range(n):
                x = jax.nn.relu(self.convs[i](x))
                i += 1
            x = _max_pool(x)
        x = jnp.reshape(x, (x.shape[0], -1))
        for fc in self.fcs:
            x = jax.nn.relu(fc(x))
        return self.out(x)
