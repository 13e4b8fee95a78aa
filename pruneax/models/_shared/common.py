"""Helpers shared by the model files: initializers, input checks, parameter counting."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.weights import default_prunable, leaf_names

# Glorot / Xavier *normal* as in TensorFlow's ``glorot_normal`` (the LTH code): a normal truncated
# at 2 standard deviations, rescaled so that the variance is exactly 2 / (fan_in + fan_out).
glorot_normal = jax.nn.initializers.glorot_normal()

# He / Kaiming normal as PyTorch's ``kaiming_normal_`` (mode="fan_in", ReLU gain): an untruncated
# normal with variance 2 / fan_in. Flax's own ``kaiming_normal`` is truncated, hence this one.
kaiming_normal = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_linear_bias(fan_in: int) -> jax.nn.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` bias init: uniform on ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def is_size(value: object) -> bool:
    """True for a positive integer (Python or NumPy), False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_images(x: jax.Array, expected_hwc: Sequence[int | None], where: str) -> None:
    """Raises ``ValueError`` unless ``x`` is ``[B, H, W, C]`` matching ``expected_hwc``.

    ``None`` entries of ``expected_hwc`` accept any size.
    """
    if x.ndim != 4:
        raise ValueError(
            f"{where}: x must be a batch of images [B, H, W, C] with "
            f"(H, W, C) = {tuple(expected_hwc)}; got shape {tuple(x.shape)}"
        )
    for got, want in zip(x.shape[1:], expected_hwc, strict=True):
        if want is not None and got != want:
            raise ValueError(
                f"{where}: x must have (H, W, C) = {tuple(expected_hwc)} (None = any); got shape "
                f"{tuple(x.shape)}"
            )


def param_count(model: nnx.Module, *, kernels_only: bool = False) -> int:
    """Number of trainable parameters (``nnx.Param`` leaves) of ``model``.

    BatchNorm running statistics (``nnx.BatchStat``) are not parameters and are not counted.
    Works on a real model and on an abstract one from ``nnx.eval_shape`` (no memory allocated).

    Args:
      model: a Flax NNX module.
      kernels_only: count only the leaves that ``pruneax.weights``' default predicate selects
        (named ``kernel`` with ``ndim >= 2``: the conv and dense weights the papers count as
        "weights"); biases and norm scales/offsets are then left out.

    Returns:
      The total number of scalar entries, a Python int.

    Example:
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> M.param_count(M.LeNet300100(rngs=nnx.Rngs(0)))  # 784-300-100-10
      266610
    """
    state = nnx.state(model, nnx.Param)
    total = 0
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        if kernels_only and not default_prunable(name, leaf):
            continue
        total += math.prod(leaf.shape)
    return total


class PatchGrid:
    """Patch geometry of an image-model config with ``image_size`` (int or (H, W)) and
    ``patch_size`` fields; mixed into ``ViTConfig`` and ``VimConfig``."""

    image_size: int | tuple[int, int]
    patch_size: int

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the input images."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(rows, cols)``."""
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens N = rows * cols."""
        return self.grid[0] * self.grid[1]


def layer_sizes(
    value: object, num_layers: int, top: int, name: str, where: str
) -> tuple[int, ...] | None:
    """Validates a per-layer size field of a config (structured pruning): None, or
    ``num_layers`` ints in ``[0, top]``; returns it as a tuple (hashable) or None.

    Raises:
      ValueError: naming ``where`` and ``name`` for a non-sequence, a wrong length or an entry
        that is not an int in ``[0, top]``.
    """
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(
            f"{where}: {name} must be None or a tuple of {num_layers} ints; got {value!r}"
        )
    if len(value) != num_layers:
        raise ValueError(
            f"{where}: {name} must have num_layers = {num_layers} entries; got {len(value)}"
        )
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= top:
            raise ValueError(f"{where}: {name}[{i}] must be an int in [0, {top}]; got {v!r}")
    return tuple(int(v) for v in value)
