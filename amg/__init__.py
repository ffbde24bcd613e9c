"""Automatic mask generation on top of :mod:`sam_model`: point grids, crops, filters, NMS, RLE,
mask records, output writers and the ``segment-everything`` command.

``MaskGenerator`` and ``MaskData`` are imported lazily so that ``amg.cli`` starts without torch.
"""

from .config import AMGConfig, ConfigError

__all__ = ["AMGConfig", "ConfigError", "MaskGenerator", "MaskData"]


def __getattr__(name: str):
    if name == "MaskGenerator":
        from .generator import MaskGenerator
        return MaskGenerator
    if name == "MaskData":
        from .mask_data import MaskData
        return MaskData
    raise AttributeError(f"module 'amg' has no attribute {name!r}")
