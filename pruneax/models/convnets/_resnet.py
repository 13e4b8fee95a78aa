"""CIFAR ResNets (He et al. 2016, Section 4.2) as open_lth builds them: ResNet-20, -32, ..., -110.

References: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016;
Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
ICML 2020 (open_lth, ``models/cifar_resnet.py``: ``cifar_resnet_N[_W]``).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models._shared.common import check_images, is_size, kaiming_normal, torch_linear_bias

# Blocks per stage for each depth N = 6 * blocks + 2 (open_lth "cifar_resnet_N").
RESNET_VARIANTS: dict[str, int] = {
    "resnet14": 2,
    "resnet20": 3,
    "resnet32": 5,
    "resnet44": 7,
    "resnet56": 9,
    "resnet110": 18,
}

# PyTorch BatchNorm2d defaults (open_lth): running = 0.9 * running + 0.1 * batch, eps = 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
_PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1; differs from "SAME" when the stride is 2


def _bn(features: int, scale_init: Literal["uniform", "ones"], rngs: nnx.Rngs) -> nnx.BatchNorm:
    init = jax.nn.initializers.uniform(1.0) if scale_init == "uniform" else jax.nn.initializers.ones
    return nnx.BatchNorm(
        features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, scale_init=init, rngs=rngs
    )


def _conv3(c_in: int, c_out: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        c_in,
        c_out,
        (3, 3),
        strides=stride,
        padding=_PAD1,
        use_bias=False,
        kernel_init=kaiming_normal,
        rngs=rngs,
    )


class Shortcut(nnx.Module):
    """Projection shortcut: 1x1 conv (stride 2, no bias) + BatchNorm, where the shape changes."""

    def __init__(
        self, c_in: int, c_out: int, bn_scale_init: Literal["uniform", "ones"], rngs: nnx.Rngs
    ):
        self.conv = nnx.Conv(
            c_in,
            c_out,
            (1, 1),
            strides=2,
            padding="VALID",
            use_bias=False,
            kernel_init=kaiming_normal,
            rngs=rngs,
        )
        self.bn = _bn(c_out, bn_scale_init, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, c_in] -> [B, ceil(H/2), ceil(W/2), c_out]."""
        return self.bn(self.conv(x))


class Block(nnx.Module):
    """Basic residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        downsample: bool,
        bn_scale_init: Literal["uniform", "ones"],
        rngs: nnx.Rngs,
    ):
        self.conv1 = _conv3(c_in, c_out, 2 if downsample else 1, rngs)
        self.bn1 = _bn(c_out, bn_scale_init, rngs)
        self.conv2 = _conv3(c_out, c_out, 1, rngs)
        self.bn2 = _bn(c_out, bn_scale_init, rngs)
        if downsample or c_in != c_out:
            self.shortcut = Shortcut(c_in, c_out, bn_scale_init, rngs)
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, c_in] -> [B, H', W', c_out] (H' = ceil(H/2) when downsampling)."""
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return jax.nn.relu(y + skip)


class CifarResNet(nnx.Module):
    """ResNet for CIFAR (He et al. 2016, Section 4.2), exactly as open_lth's ``cifar_resnet_N_W``.

    A 3x3 conv (``width`` filters) + BN + ReLU, then three stages of ``RESNET_VARIANTS[variant]``
    basic blocks with ``width``, ``2 * width``, ``4 * width`` filters (stages 2 and 3 start with
    a stride-2 block whose shortcut is a 1x1 conv + BN projection; other shortcuts are the
    identity), global average pooling, and a linear classifier. Convolutions have no bias and
    PyTorch's padding (1 pixel each side for 3x3, also at stride 2).

    Initialization follows open_lth's defaults (``model_init='kaiming_normal'``,
    ``batchnorm_init='uniform'``): conv and dense kernels He normal (untruncated, variance
    ``2 / fan_in``); BN scales uniform on [0, 1) (``bn_scale_init="uniform"``; ``"ones"`` is
    open_lth's ``fixed``), BN offsets 0; the classifier bias keeps PyTorch's default,
    uniform on ``±1/sqrt(4 * width)``. BatchNorm momentum and epsilon are PyTorch's (running
    average weight 0.9, eps 1e-5); unlike PyTorch, the running variance is updated with the
    biased batch variance (Flax's convention).

    BatchNorm uses batch statistics (and updates its running averages) in training mode and
    running averages in evaluation mode: switch with ``model.train()`` / ``model.eval()``.
    A new model is in training mode.

    Parameter names: ``conv/kernel``, ``bn/{scale,bias}``, ``blocks/{i}/conv{1,2}/kernel``,
    ``blocks/{i}/bn{1,2}/{scale,bias}``, ``blocks/{i}/shortcut/conv/kernel``,
    ``blocks/{i}/shortcut/bn/{scale,bias}`` and ``out/{kernel,bias}`` (the classifier: glob
    ``"out/*"``). ResNet-20: 272,474 parameters (270,896 weights: 270,256 conv + 640 dense;
    1,568 BN; 10 bias), as open_lth's ``test_cifar_resnet.py`` pins; ResNet-110: 1,730,714.

    Shapes:
      input ``x``: [B, H, W, in_channels] (CIFAR [B, 32, 32, 3]); any H, W >= 1 (global average
      pooling), 32 x 32 is what the architecture was designed for. Output: logits
      [B, num_classes] float32.

    Args:
      variant: a key of ``RESNET_VARIANTS`` (depth ``6 * blocks + 2``), e.g. ``"resnet20"``.
      width: filters of the first stage (open_lth's ``W``, default 16).
      num_classes: classifier width.
      in_channels: channels of the input images.
      bn_scale_init: ``"uniform"`` (open_lth default) or ``"ones"``.
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: at construction for an unknown variant or non-positive sizes; at call time if
        ``x`` is not [B, H, W, in_channels].

    References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
      Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020
      (open_lth).
    """

    def __init__(
        self,
        variant: str,
        *,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        bn_scale_init: Literal["uniform", "ones"] = "uniform",
        rngs: nnx.Rngs,
    ):
        if variant not in RESNET_VARIANTS:
            raise ValueError(f"variant must be one of {list(RESNET_VARIANTS)}; got {variant!r}")
        for name, value in (
            ("width", width),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
        ):
            if not is_size(value):
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if bn_scale_init not in ("uniform", "ones"):
            raise ValueError(f"bn_scale_init must be 'uniform' or 'ones'; got {bn_scale_init!r}")
        width, num_classes, in_channels = int(width), int(num_classes), int(in_channels)
        self.variant = variant
        self.in_channels = in_channels
        num_blocks = RESNET_VARIANTS[variant]

        self.conv = _conv3(in_channels, width, 1, rngs)
        self.bn = _bn(width, bn_scale_init, rngs)
        blocks = []
        c = width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for i in range(num_blocks):
                blocks.append(Block(c, filters, stage > 0 and i == 0, bn_scale_init, rngs))
                c = filters
        self.blocks = nnx.List(blocks)
        self.out = nnx.Linear(
            c, num_classes, kernel_init=kaiming_normal, bias_init=torch_linear_bias(c), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, in_channels]."""
        check_images(x, (None, None, self.in_channels), f"CifarResNet({self.variant!r})")
        x = jax.nn.relu(self.bn(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.out(x)


class ResNet20(CifarResNet):
    """ResNet-20 for CIFAR-10: ``CifarResNet("resnet20", ...)`` (open_lth ``cifar_resnet_20``).

    272,474 parameters with the defaults. See :class:`CifarResNet` for shapes, initialization,
    BatchNorm modes and parameter names.

    Args:
      width: filters of the first stage (16; open_lth's ``cifar_resnet_20_W``).
      num_classes: classifier width.
      in_channels: channels of the input images.
      bn_scale_init: ``"uniform"`` (open_lth default) or ``"ones"``.
      rngs: ``nnx.Rngs`` for the initializers.

    Raises:
      ValueError: as :class:`CifarResNet`.

    References: He et al., CVPR 2016, Section 4.2; Frankle et al., ICML 2020 (open_lth).
    """

    def __init__(
        self,
        *,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        bn_scale_init: Literal["uniform", "ones"] = "uniform",
        rngs: nnx.Rngs,
    ):
        super().__init__(
            "resnet20",
            width=width,
            num_classes=num_classes,
            in_channels=in_channels,
            bn_scale_init=bn_scale_init,
            rngs=rngs,
        )
