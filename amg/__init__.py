"""Automatic mask generation on top of :mod:`sam_model`: the generator and its pure steps (point
grids, crops, filters, NMS, stability score, upscaling, small regions, ranking, refinement, RLE,
mask data, records, configuration).

Runs over many images (the ``segment-everything`` command, inputs, output writers, resume, the
local and Ray engines) live in :mod:`amg.dataset`; quality evaluation (ground truth, proposal
recall, reports) in :mod:`amg.evaluation`. Both sit above this package, which never imports them.

``MaskGenerator`` and ``MaskData`` are imported lazily so that ``amg.dataset.cli`` starts
without torch.
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
