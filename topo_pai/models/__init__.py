"""Reference architectures written in plain torch (no torchvision).

Every constructor accepts ``in_channels`` and ``num_classes`` so that the same
network can be analysed at any input shape.
"""

from topo_pai.models.resnet import resnet20, resnet32, resnet56, resnet18, resnet50
from topo_pai.models.vgg import vgg11, vgg16, vgg19

__all__ = ["resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "vgg11", "vgg16", "vgg19"]
