"""Flax NNX models for pruning experiments.

- ``LeNet300100``: the LTH paper's MNIST MLP (784-300-100-10).
- ``ConvNet(variant)``: the LTH paper's Conv-2 / Conv-4 / Conv-6 (``CONVNET_VARIANTS``).
- ``CifarResNet(variant)`` / ``ResNet20``: CIFAR ResNets as open_lth builds them
  (``RESNET_VARIANTS``).
- ``param_count``: parameters of a model (all, or only the prunable kernels).

Every prunable weight is a leaf named ``kernel`` (conv and dense), so ``pruneax.weights``'
default predicate selects exactly them; the classifier is the attribute ``out`` (glob
``"out/*"``).
"""

from pruneax.models._common import param_count
from pruneax.models._convnets import CONVNET_VARIANTS, ConvNet, LeNet300100
from pruneax.models._resnet import RESNET_VARIANTS, CifarResNet, ResNet20

__all__ = [
    "CONVNET_VARIANTS",
    "RESNET_VARIANTS",
    "CifarResNet",
    "ConvNet",
    "LeNet300100",
    "ResNet20",
    "param_count",
]
