"""The settings of a dataset run: :class:`RunOptions`, validated, and the part that shapes the
outputs (:meth:`RunOptions.fingerprint`, stored for the resume check)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AMGConfig
from ..io import DEFAULT_MAX_PIXELS
from .outputs import DEFAULT_SUBSET, FORMATS, SEGMENTATIONS
from .polygons import DEFAULT_MIN_POLYGON_AREA

__all__ = ["RunOptions", "ENGINES", "NON_OUTPUT_PARAMETERS"]

ENGINES = ("local", "ray")
# AMGConfig fields that do not change the masks (decoder_chunk_size: in float32; in bfloat16 at
# most by rounding): left out of the resume check.
NON_OUTPUT_PARAMETERS = ("points_per_batch", "decoder_chunk_size", "output_mode")


@dataclass
class RunOptions:
    """Everything a dataset run needs besides its image list.

    Attributes:
        output: the output folder ``DIR``.
        config: the generation parameters (``output_mode`` is forced to ``coco_rle``).
        model: checkpoint name (``mobile_sam``, ``vit_b``...) or path, for ``sam_model.load_model``.
        device: torch device of the model; ``None``: ``cpu`` (local engine), or ``cuda`` when
            the Ray cluster has GPUs (ray engine).
        formats: output formats, a subset of :data:`amg.dataset.outputs.FORMATS`.
        segmentation: COCO and Label Studio segmentation kind, ``rle`` or ``polygon`` (needs
            ``coco`` or ``label-studio``; YOLO labels are always polygons).
        min_polygon_area: polygon tolerance in px² (see :mod:`amg.dataset.polygons`).
        category: the COCO category name.
        image_root: folder the COCO ``file_name`` is relative to (``None``: the deepest folder
            holding every image).
        subset: subset name of the COCO and YOLO layouts (``annotations/instances_<subset>.json``,
            ``images/<subset>/``, ``labels/<subset>/``).
        coco_images: an existing COCO file whose image ids and file names the COCO and YOLO
            outputs take (:class:`amg.dataset.coco_images.CocoImages`; ``None``: ids from 1 in
            input order, file names relative to ``image_root``).
        image_root_url: URL prefix of the Label Studio tasks' images
            (:func:`amg.dataset.label_studio.image_url`; ``None``: Label Studio's local-files
            serving, :func:`amg.dataset.label_studio.local_files_url` of the image root).
        min_area, max_area: keep masks with ``min_area <= area <= max_area`` pixels (``None``:
            no bound).
        mask_nms_thresh: mask-IoU NMS threshold in (0, 1] (``None``: off).
        overwrite: forget finished images and earlier parameters, redo everything.
        workers: threads decoding images ahead and writing outputs behind (local engine).
        threads: torch intra-op threads for the model, also the batches decoded at once
            (``None``: :func:`amg.dataset.threads.available_cpus` locally, 1 per Ray actor). Results can differ in the last float bits between
            thread counts; give the same value to compare runs bit for bit.
        engine: ``local`` or ``ray``.
        ray_address: Ray cluster address (``None``: ``RAY_ADDRESS`` if set, else a local one).
        ray_actors: model replicas under Ray (``None``: one per GPU, or one per CPU but one).
        progress: show a tqdm progress bar (on stderr).
        max_pixels: images with more pixels are refused (listed in ``errors.csv``) before they
            are decoded (``None``: no limit); the default keeps a run within 2 GB of memory.
    """

    output: Path
    config: AMGConfig = field(default_factory=AMGConfig)
    model: str = "mobile_sam"
    device: str | None = None
    formats: tuple[str, ...] = ("json",)
    segmentation: str = "rle"
    min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA
    category: str = "object"
    image_root: Path | None = None
    subset: str = DEFAULT_SUBSET
    coco_images: Path | None = None
    image_root_url: str | None = None
    min_area: int | None = None
    max_area: int | None = None
    mask_nms_thresh: float | None = None
    overwrite: bool = False
    workers: int = 2
    threads: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    progress: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.coco_images is not None:
            self.coco_images = Path(self.coco_images).resolve()  # workers may run elsewhere
        self.formats = tuple(dict.fromkeys(self.formats))  # de-duplicated, order kept
        self.config = self.config.replace(output_mode="coco_rle")
        self.validate()

    def validate(self) -> None:
        """Check the options.

        Raises:
            ValueError: naming the option (as its command-line flag) and the accepted values.
        """
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"--format: unknown or no format {unknown}; choose from {list(FORMATS)}")
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"--segmentation must be one of {list(SEGMENTATIONS)}, got {self.segmentation!r}")
        if self.segmentation == "polygon" and not {"coco", "label-studio"} & set(self.formats):
            raise ValueError("--segmentation polygon applies to the COCO and Label Studio outputs: "
                             "add --format coco or --format label-studio")
        if not self.subset or "/" in self.subset or "\\" in self.subset or self.subset in (".", ".."):
            raise ValueError(f"--subset must be a plain folder name, got {self.subset!r}")
        if self.coco_images is not None:
            if not {"coco", "yolo"} & set(self.formats):
                raise ValueError("--coco-images applies to the COCO and YOLO outputs: add --format coco")
            if not Path(self.coco_images).is_file():
                raise ValueError(f"--coco-images {self.coco_images}: no such file")
        if self.min_polygon_area < 0:
            raise ValueError(f"min_polygon_area must be >= 0, got {self.min_polygon_area}")
        for name in ("min_area", "max_area"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}")
        if self.min_area is not None and self.max_area is not None and self.min_area > self.max_area:
            raise ValueError(f"--min-area ({self.min_area}) must be <= --max-area ({self.max_area})")
        if self.mask_nms_thresh is not None and not 0.0 < self.mask_nms_thresh <= 1.0:
            raise ValueError(f"--mask-nms-thresh must be in (0, 1], got {self.mask_nms_thresh!r}")
        if not self.category:
            raise ValueError("--category must not be empty")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"--workers must be an integer >= 1, got {self.workers!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"--threads must be an integer >= 1, got {self.threads!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int)
                                            or isinstance(self.max_pixels, bool)
                                            or self.max_pixels < 1):
            raise ValueError(f"--max-pixels must be an integer >= 1, got {self.max_pixels!r}")
        if self.device is not None and (not isinstance(self.device, str) or not self.device.strip()):
            raise ValueError(f"--device must be a torch device name such as cpu or cuda, got "
                             f"{self.device!r}")
        if self.ray_actors is not None and (not isinstance(self.ray_actors, int) or self.ray_actors < 1):
            raise ValueError(f"--ray-actors must be an integer >= 1, got {self.ray_actors!r}")

    def model_version(self) -> str:
        """The ``model_version`` of the Label Studio predictions: ``segment-everything/<model>``
        (a checkpoint file by its stem)."""
        name = Path(self.model).stem if Path(self.model).suffix else self.model
        return f"segment-everything/{name}"

    def fingerprint(self) -> dict[str, Any]:
        """The parameters that shape the outputs, as JSON-ready data (stored in ``run.json``).

        Left out, so they may change between a run and its resume: ``points_per_batch`` and
        ``decoder_chunk_size`` (do not change the masks), the engine, device, workers, threads
        and Ray settings. The subset, ``--coco-images`` and the image URL prefix appear only
        when set to other than their defaults (so earlier runs' stored parameters still match)."""
        cfg = {k: v for k, v in dataclasses.asdict(self.config).items()
               if k not in NON_OUTPUT_PARAMETERS}
        if cfg.get("point_grids") is not None:
            cfg["point_grids"] = [np.asarray(g).tolist() for g in cfg["point_grids"]]
        model = self.model
        if Path(model).exists():
            model = str(Path(model).resolve())
        return {
            "model": model, "config": cfg, "formats": sorted(self.formats),
            "segmentation": self.segmentation,
            "min_polygon_area": (self.min_polygon_area
                                 if self.segmentation == "polygon" or "yolo" in self.formats else None),
            "category": self.category,
            "image_root": None if self.image_root is None else str(Path(self.image_root).resolve()),
            "min_area": self.min_area, "max_area": self.max_area,
            "mask_nms_thresh": self.mask_nms_thresh,
            **({"subset": self.subset} if self.subset != DEFAULT_SUBSET else {}),
            **({"coco_images": str(Path(self.coco_images).resolve())} if self.coco_images else {}),
            **({"image_root_url": self.image_root_url}
               if self.image_root_url is not None and "label-studio" in self.formats else {}),
        }
