"""Kept as a public import path (the README, notebooks and user scripts import
``topo_pai.plotting``): the plots live next to the experiments they draw, in
:mod:`topo_pai.experiments.plotting`."""

from topo_pai.experiments.plotting import *  # noqa: F403
from topo_pai.experiments.plotting import __all__  # noqa: F401
