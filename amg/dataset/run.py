"""Dataset runs: many images in, per-image and per-run outputs out, resumable, fault-tolerant.

A run is :func:`run_dataset` over a list of image paths with
:class:`~amg.dataset.options.RunOptions`:

1. *prepare*, writing nothing until the run can really start: check the output folder, the
   device and the model's weights (:mod:`amg.dataset.preflight`), take the run lock, compare
   the stored run parameters with these ones (refuse a resume with other parameters,
   :class:`~amg.dataset.state.RunMismatch`), find the images already finished (their done
   marker is present and still matches the source file; :mod:`amg.dataset.state`) and, if any
   remain, load the model. Only then are the parameters stored (``run.json``), ``--overwrite``
   applied and half-written temp files of a killed run removed; a start that fails leaves the
   folder as it found it;
2. *process* the rest with an engine — ``local`` (:mod:`amg.dataset.local_engine`) or ``ray``
   (:mod:`amg.dataset.ray_engine`). Each image: generate, apply the record filters, write its
   files (:mod:`amg.dataset.outputs`), then its done marker, last and atomically
   (:mod:`amg.dataset.processing`); a failing image is reported and recorded in
   ``DIR/errors.csv``, and the run goes on;
3. *finish*: assemble the per-run files — ``DIR/annotations/instances_<subset>.json`` (COCO),
   ``DIR/label-studio/tasks.json`` and ``labeling-config.xml``, ``DIR/data.yaml`` (YOLO) — from
   the done markers of every finished image, in input order, and write (or remove)
   ``DIR/errors.csv``.

Because every file is written atomically and an image only counts as finished once its marker
exists, a run killed at any moment and started again with the same arguments skips the finished
images, redoes the rest, and ends with exactly the files one uninterrupted run writes. A disk
that fills up stops the run the same way (:class:`~amg.dataset.state.RunStopped`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import remove_temp_files, write_atomic
from .coco_images import CocoImages
from .jobs import make_jobs
from .label_studio import labeling_config, local_files_url, write_label_studio_tasks
from .local_engine import run_local_jobs
from .names import image_root_folder
from .options import RunOptions
from .outputs import OutputPaths, write_coco
from .preflight import check_device, check_model, check_output_folder
from .processing import ImageProcessor, load_generator
from .progress import Progress
from .state import RunState, RunStopped
from .yolo import data_yaml as yolo_data_yaml

__all__ = ["RunSummary", "run_dataset"]


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        total: images in the run.
        done: images finished (in this run or an earlier one).
        resumed: images found finished by an earlier run and skipped.
        failed: ``(path, reason)`` of every image that failed, in input order.
        masks: masks over all finished images.
        seconds: wall time of the run.
        processed: images processed (finished or failed) by this run.
    """

    total: int
    done: int
    resumed: int
    failed: list[tuple[str, str]]
    masks: int
    seconds: float
    processed: int

    @property
    def images_per_second(self) -> float:
        """Images processed by this run per second of wall time."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def _summary_of(part: dict[str, Any]) -> dict[str, Any]:
    """What the run keeps in memory of a done marker: ``height``, ``width``, ``masks``."""
    return {"height": part["height"], "width": part["width"], "masks": part["masks"]}


def run_dataset(images: list[str | Path], options: RunOptions) -> RunSummary:
    """Segment a list of images into ``options.output``, resumably (see the module docstring).

    Args:
        images: image paths in run order (e.g. from :func:`amg.dataset.inputs.collect_images`).
        options: the run's :class:`~amg.dataset.options.RunOptions`.

    Returns:
        A :class:`RunSummary`; ``summary.failed`` lists the images that could not be done.

    Raises:
        StartError: the output folder, the device or the model is unusable (nothing written).
        RunMismatch: the output folder holds a run with other parameters (and no ``overwrite``).
        RunLocked: another run is writing to the output folder.
        ValueError: an image is not under ``options.image_root``, or not in (or not alone on
            its entry of) ``options.coco_images``.
        sam_model.CheckpointError: the model cannot be loaded.
        ImportError: ``engine="ray"`` without Ray installed.
        RunStopped: the outputs cannot be written any more (disk full...); finished images are
            kept, and the same call resumes the run.
    """
    t0 = time.perf_counter()
    jobs = make_jobs([Path(p) for p in images], options.image_root)
    check_output_folder(options.output)
    check_device(options.device, options.engine)
    fingerprint = options.fingerprint()  # as given (a default URL prefix stays unset)
    if "label-studio" in options.formats and options.image_root_url is None and jobs:
        root = image_root_folder([j.path for j in jobs], options.image_root)
        options = dataclasses.replace(options, image_root_url=local_files_url(root))
    # COCO image entry per job: the --coco-images file's, else id = position + 1
    if options.coco_images is not None:
        entries = CocoImages(options.coco_images).assign([j.file_name for j in jobs])
    else:
        entries = [{"id": j.index + 1, "file_name": j.file_name} for j in jobs]
    paths = OutputPaths(options.output, options.subset)
    state = RunState(options.output)
    created = [d for d in (state.dir, *state.dir.parents) if not d.exists()]
    state.lock()
    started = False
    try:
        if not options.overwrite:
            state.check_parameters(fingerprint)
        # index -> {"height", "width", "masks"} of finished images (annotations stay on disk)
        parts: dict[int, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            part = None if options.overwrite else state.finished(job)
            if part is not None:
                parts[job.index] = _summary_of(part)
            else:
                todo.append(job)
        processor = None
        if todo:
            check_model(options.model)
            if options.engine != "ray":
                processor = ImageProcessor(load_generator(options, options.device or "cpu"), options)
        started = True  # from here on the run writes
        if options.overwrite:
            state.reset()
        state.store_parameters(fingerprint)
        for folder in (paths.root, paths.coco.parent, paths.label_studio_tasks.parent,
                       paths.root / "labelmaps", paths.root / "overlays", state.dir,
                       state.done_dir):
            remove_temp_files(folder)
        resumed = len(parts)
        if resumed and options.progress:
            print(f"segment-everything: resuming in {options.output}: {resumed}/{len(jobs)} images "
                  f"already done")
        progress = Progress(len(todo), options, sum(p["masks"] for p in parts.values()))
        try:
            try:
                if todo:
                    if options.engine == "ray":
                        from .ray_engine import run_ray_jobs
                        run_ray_jobs(todo, options, progress)
                    else:
                        run_local_jobs(todo, options, progress, processor)
            finally:
                progress.close()
            progress.write_errors()
        except RunStopped as exc:
            done = sum(state.finished(j) is not None for j in jobs)
            raise RunStopped(f"stopped: {exc}; the {done} image(s) finished so far are kept: "
                             f"make room and run the same command again to resume") from None
        for job in todo:
            if job.index not in progress.failed:
                part = state.finished(job)
                if part is not None:
                    parts[job.index] = _summary_of(part)
        done_jobs = [j for j in jobs if j.index in parts]
        target = options.output  # the per-run file being written, for the message
        try:
            if "coco" in options.formats:
                target = paths.coco
                write_coco(paths.coco,
                           [{"id": entries[j.index]["id"],
                             "file_name": entries[j.index]["file_name"],
                             "width": parts[j.index]["width"], "height": parts[j.index]["height"]}
                            for j in done_jobs],
                           (state.stored(j, "annotations") for j in done_jobs), options.category)
            if "label-studio" in options.formats:
                target = paths.label_studio_tasks
                write_label_studio_tasks(paths.label_studio_tasks,
                                         (state.stored(j, "label_studio") for j in done_jobs))
                target = paths.label_studio_config
                write_atomic(paths.label_studio_config,
                             labeling_config(options.category, options.segmentation))
            if "yolo" in options.formats:
                target = paths.yolo_data
                write_atomic(paths.yolo_data, yolo_data_yaml(options.subset, options.category))
        except OSError as exc:
            raise RunStopped(f"stopped: cannot write {target}: {exc.strerror or exc}; the "
                             f"{len(parts)} image(s) finished are kept: make room and run the "
                             f"same command again to write it") from None
        failed = [progress.failed[i] for i in sorted(progress.failed)]
        return RunSummary(total=len(jobs), done=len(parts), resumed=resumed, failed=failed,
                          masks=sum(p["masks"] for p in parts.values()),
                          seconds=time.perf_counter() - t0, processed=len(todo))
    finally:
        state.unlock()
        if not started:
            state.discard_unstarted(created)
