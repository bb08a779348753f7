"""Exceptions raised by topo_pai.

Every error names the parameter, layer or fx node at fault and says how to fix it.
"""


class TopoPaiError(Exception):
    """Base class of all topo_pai errors."""


class MaskError(TopoPaiError, ValueError):
    """A mask has the wrong key, shape or values."""


class InputShapeError(TopoPaiError, ValueError):
    """``input_shape`` does not fit the model."""


class TraceError(TopoPaiError, RuntimeError):
    """torch.fx could not trace the model."""


class UnsupportedOpError(TopoPaiError, NotImplementedError):
    """The traced graph holds an op whose topology topo_pai does not know."""


class NoPrunableLayerError(TopoPaiError, ValueError):
    """The model has no Linear or Conv layer on its input-to-output graph."""


class PathCountTooLarge(TopoPaiError, OverflowError):
    """The exact (arbitrary-precision) path count would take too much work."""


class ModelBuildError(TopoPaiError, RuntimeError):
    """A user's model (``file.py:callable`` or ``package.module:callable``) raised while its
    code was imported or called; the message names the model, the exception is chained."""


class ModelAttributeError(TopoPaiError, AttributeError):
    """A model specification names a callable that its module or file does not have."""


class UncoveredWeightsWarning(UserWarning):
    """The model holds weight tensors that no mask can cover (not Linear or Conv weights),
    so its sparsity and topology leave them out."""
