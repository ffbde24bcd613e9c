"""One image of a run, the same in both engines: decode it (size limits), generate, apply the
record filters, write the image's files, then its done marker (last, atomically); and a failure
as a one-line reason. A write that fails because the disk is full (or the quota exhausted, or
the file system read-only) stops the run (:class:`~amg.dataset.state.RunStopped`) instead of
failing image after image: the finished images stay, and the same command resumes."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageReadError, check_image_size, load_image, remove_temp_files, write_atomic
from .coco_images import CocoImages
from .jobs import ImageJob
from .label_studio import image_url, label_studio_results, label_studio_task
from .options import RunOptions
from .outputs import OutputPaths, coco_annotations, link_image, write_image_outputs
from .record_filters import apply_record_filters
from .state import RunState, RunStopped
from .yolo import yolo_label_text

__all__ = ["ImageProcessor", "decode_image", "load_generator", "failure_reason", "STOP_ERRNOS",
           "stop_reason"]

# Write errors that no later image can escape: the run stops (and resumes when fixed).
STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def stop_reason(exc: BaseException) -> str | None:
    """For an ``OSError`` whose errno is in :data:`STOP_ERRNOS`, its one-line reason (e.g.
    ``"No space left on device"``); else ``None``."""
    if isinstance(exc, OSError) and exc.errno in STOP_ERRNOS:
        return exc.strerror or str(exc)
    return None


def decode_image(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str | None]:
    """:func:`amg.io.load_image` with the run's ``max_pixels``, then
    :func:`amg.io.check_image_size` (the generator's smallest sides).

    Raises:
        amg.io.ImageReadError: see both (an :class:`amg.io.ImageSizeError` for the limits).
    """
    image, note = load_image(path, max_pixels=max_pixels)
    check_image_size(path, *image.shape[:2])
    return image, note


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
        self.paths = OutputPaths(options.output, options.subset)
        self.state = RunState(options.output)
        self.coco_images = CocoImages(options.coco_images) if options.coco_images else None

    def dataset_file_name(self, job: ImageJob) -> str:
        """The image's ``file_name`` in the COCO and YOLO layouts: its ``--coco-images``
        entry's, else its path relative to the image root.

        Raises:
            ValueError: the image is not in ``--coco-images``.
        """
        return self.coco_images.entry(job.file_name)["file_name"] if self.coco_images else job.file_name

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The image's records after the record filters (area bounds, mask NMS)."""
        o = self.options
        return apply_record_filters(self.generator.generate(image), min_area=o.min_area,
                                    max_area=o.max_area, mask_nms_thresh=o.mask_nms_thresh)

    def finish(self, job: ImageJob, image: np.ndarray, records: list[dict[str, Any]]) -> int:
        """Write the image's files, then its done marker; returns the number of masks.

        The done marker keeps what the per-run files are assembled from: the image's COCO
        annotations (``coco``) and its Label Studio task (``label-studio``).

        Raises:
            RunStopped: the disk is full (or see :data:`STOP_ERRNOS`); the image is not marked
                done, so a resumed run redoes it.
            OSError: another write failure; ValueError: the image's size differs from its
                ``--coco-images`` entry (or see :func:`amg.dataset.outputs.label_map`).
        """
        o = self.options
        hw = (int(image.shape[0]), int(image.shape[1]))
        if self.coco_images is not None:
            self.coco_images.check_size(self.coco_images.entry(job.file_name), hw)
        try:
            remove_temp_files(self.paths.png_dir(job.stem))
            write_image_outputs(self.paths, job.stem, image, records, o.formats)
            if "coco" in o.formats or "yolo" in o.formats:
                link_image(job.path, self.paths.dataset_image(self.dataset_file_name(job)))
            if "yolo" in o.formats:
                write_atomic(self.paths.yolo_labels(self.dataset_file_name(job)),
                             yolo_label_text(records, hw, o.min_polygon_area))
            part: dict[str, Any] = {"height": hw[0], "width": hw[1], "masks": len(records)}
            if "coco" in o.formats:
                part["annotations"] = coco_annotations(records, o.segmentation, o.min_polygon_area)
            if "label-studio" in o.formats:
                results = label_studio_results(records, hw, o.segmentation, o.category,
                                               o.min_polygon_area)
                part["label_studio"] = label_studio_task(
                    image_url(job.file_name, o.image_root_url), results,
                    [r["predicted_iou"] for r in records], o.model_version())
            self.state.mark_done(job, part)
        except OSError as exc:
            reason = stop_reason(exc)
            if reason is None:
                raise
            raise RunStopped(f"cannot write the outputs of {job.path} in {o.output}: "
                             f"{reason}") from None
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
