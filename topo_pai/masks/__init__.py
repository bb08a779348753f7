"""The mask type: :class:`Masks` (parameter name to a bool tensor), its one validator
(:mod:`~topo_pai.masks.validate`, which also checks ``|w|``) and its file formats
(:mod:`~topo_pai.masks.files`).

Not to be confused with :mod:`topo_pai.graph.masks`, which turns validated masks into
the per-layer multiplicity matrices the counting engines read.
"""

from topo_pai.masks.mask import Masks, as_masks, load_masks, save_masks

__all__ = ["Masks", "as_masks", "load_masks", "save_masks"]
