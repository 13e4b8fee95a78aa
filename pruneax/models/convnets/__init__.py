"""The lottery-ticket papers' small networks: LeNet-300-100, Conv-2/4/6 and CIFAR ResNets
(open_lth); ``lrp_plan`` describes ConvNet / LeNet300100 for ``pruneax.weights``'s LRP filter
pruning; ``remove_filters`` physically removes pruned filters (and dense hidden units) from
them.
"""

from pruneax.models.convnets._convnets import (
    CONVNET_VARIANTS,
    ConvNet,
    LeNet300100,
)
from pruneax.models.convnets._lrp import lrp_plan
from pruneax.models.convnets._remove import remove_filters
from pruneax.models.convnets._resnet import (
    RESNET_VARIANTS,
    CifarResNet,
    ResNet20,
)

__all__ = [
    "CONVNET_VARIANTS",
    "RESNET_VARIANTS",
    "CifarResNet",
    "ConvNet",
    "LeNet300100",
    "ResNet20",
    "lrp_plan",
    "remove_filters",
]
