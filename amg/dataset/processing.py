"""One image of a run, the same in both engines: generate, apply the record filters, write the
image's files, then its done marker (last, atomically); and a failure as a one-line reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageReadError, remove_temp_files
from .jobs import ImageJob
from .options import RunOptions
from .outputs import OutputPaths, coco_annotations, write_image_outputs
from .record_filters import apply_record_filters
from .state import RunState

__all__ = ["ImageProcessor", "load_generator", "failure_reason"]


def load_generator(options: RunOptions, device: str) -> Any:
    """The model and :class:`amg.MaskGenerator` of a run (``output_mode="coco_rle"``).

    Raises:
        sam_model.CheckpointError: the model cannot be loaded.
    """
    from sam_model import load_model  # heavy imports only when a model is needed

    from ..generator import MaskGenerator

    return MaskGenerator(load_model(options.model, device=device), options.config)


class ImageProcessor:
    """Turns one decoded image into its outputs and done marker (shared by both engines).

    Args:
        generator: anything with ``generate((H, W, 3) uint8 RGB) -> list of records`` whose
            ``segmentation`` is COCO RLE (a :class:`amg.MaskGenerator` with
            ``output_mode="coco_rle"``).
        options: the run's :class:`~amg.dataset.options.RunOptions`.
    """

    def __init__(self, generator: Any, options: RunOptions) -> None:
        self.generator = generator
        self.options = options
        self.paths = OutputPaths(options.output)
        self.state = RunState(options.output)

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The image's records after the record filters (area bounds, mask NMS)."""
        o = self.options
        return apply_record_filters(self.generator.generate(image), min_area=o.min_area,
                                    max_area=o.max_area, mask_nms_thresh=o.mask_nms_thresh)

    def finish(self, job: ImageJob, image: np.ndarray, records: list[dict[str, Any]]) -> int:
        """Write the image's files, then its done marker; returns the number of masks.

        Raises:
            OSError: a file cannot be written; ValueError: see
                :func:`amg.dataset.outputs.label_map`.
        """
        o = self.options
        remove_temp_files(self.paths.png_dir(job.stem))
        write_image_outputs(self.paths, job.stem, image, records, o.formats)
        part: dict[str, Any] = {"height": int(image.shape[0]), "width": int(image.shape[1]),
                                "masks": len(records)}
        if "coco" in o.formats:
            part["annotations"] = coco_annotations(records, o.segmentation, o.min_polygon_area)
        self.state.mark_done(job, part)
        return len(records)

    def process(self, job: ImageJob, image: np.ndarray) -> int:
        """:meth:`generate` then :meth:`finish`; returns the number of masks."""
        return self.finish(job, image, self.generate(image))


def failure_reason(path: Path, exc: BaseException) -> str:
    """An exception as a one-line reason, without the leading ``"<path>: "`` it may carry;
    other than for :class:`amg.io.ImageReadError` and ``ValueError``, the exception's class
    name leads (``"RuntimeError: ..."``)."""
    msg = str(exc)
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if not isinstance(exc, (ImageReadError, ValueError)):
        msg = f"{type(exc).__name__}: {msg}"
    return msg
