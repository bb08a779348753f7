"""Save and load masks (kept for existing imports): the formats live in
:mod:`topo_pai.masks.files`, saving and loading on :class:`topo_pai.Masks`."""

from topo_pai.masks.files import SUFFIXES
from topo_pai.masks.mask import load_masks, save_masks

__all__ = ["SUFFIXES", "load_masks", "save_masks"]
