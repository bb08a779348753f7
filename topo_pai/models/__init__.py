"""Reference architectures written in plain torch (no torchvision).

Every constructor accepts ``in_channels``, ``num_classes`` and ``input_size``
(an int or ``(H, W)``) so that the same network can be built and analysed at
any input shape; :func:`get_model` builds one from its name.

>>> from topo_pai.models import get_model
>>> get_model("conv4", in_channels=1, input_size=28, width=0.25).classifier[1].in_features
1568
"""

from topo_pai.models.convnet import conv2, conv4, conv6
from topo_pai.models.lenet import lenet5, lenet_300_100
from topo_pai.models.registry import available_models, get_model, model_options
from topo_pai.models.resnet import resnet18, resnet20, resnet32, resnet50, resnet56
from topo_pai.models.vgg import vgg11, vgg16, vgg19

__all__ = ["available_models", "conv2", "conv4", "conv6", "get_model", "lenet5", "lenet_300_100",
           "model_options", "resnet18", "resnet20", "resnet32", "resnet50", "resnet56", "vgg11",
           "vgg16", "vgg19"]
