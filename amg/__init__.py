"""Automatic mask generation on top of :mod:`sam_model`: point grids, crops, filters, NMS, RLE,
mask records, output writers and the ``segment-everything`` command."""

from .config import AMGConfig, ConfigError
from .generator import MaskGenerator
from .mask_data import MaskData

__all__ = ["AMGConfig", "ConfigError", "MaskGenerator", "MaskData"]
