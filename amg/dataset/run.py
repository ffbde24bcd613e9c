"""Dataset runs: many images in, per-image and per-run outputs out, resumable, fault-tolerant.

A run is :func:`run_dataset` over a list of image paths with
:class:`~amg.dataset.options.RunOptions`:

1. *prepare*: take the run lock, compare the stored run parameters with these ones (refuse a
   resume with other parameters, :class:`~amg.dataset.state.RunMismatch`), remove half-written
   temp files left by a killed run, and find the images already finished (their done marker is
   present and still matches the source file; :mod:`amg.dataset.state`);
2. *process* the rest with an engine — ``local`` (:mod:`amg.dataset.local_engine`) or ``ray``
   (:mod:`amg.dataset.ray_engine`). Each image: generate, apply the record filters, write its
   files (:mod:`amg.dataset.outputs`), then its done marker, last and atomically
   (:mod:`amg.dataset.processing`); a failing image is reported and recorded in
   ``DIR/errors.csv``, and the run goes on;
3. *finish*: assemble ``DIR/coco/instances.json`` from the done markers of every finished image,
   in input order, and write (or remove) ``DIR/errors.csv``.

Because every file is written atomically and an image only counts as finished once its marker
exists, a run killed at any moment and started again with the same arguments skips the finished
images, redoes the rest, and ends with exactly the files one uninterrupted run writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import remove_temp_files
from .jobs import make_jobs
from .local_engine import run_local_jobs
from .options import RunOptions
from .outputs import OutputPaths, write_coco
from .progress import Progress
from .state import RunState

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
        RunMismatch: the output folder holds a run with other parameters (and no ``overwrite``).
        RunLocked: another run is writing to the output folder.
        ValueError: an image is not under ``options.image_root``.
        sam_model.CheckpointError: the model cannot be loaded.
        ImportError: ``engine="ray"`` without Ray installed.
    """
    t0 = time.perf_counter()
    jobs = make_jobs([Path(p) for p in images], options.image_root)
    paths = OutputPaths(options.output)
    state = RunState(options.output)
    state.lock()
    try:
        if options.overwrite:
            state.reset()
        state.check_parameters(options.fingerprint())
        for folder in (paths.root, paths.coco.parent, paths.root / "labelmaps",
                       paths.root / "overlays", state.dir, state.done_dir):
            remove_temp_files(folder)
        # index -> {"height", "width", "masks"} of finished images (annotations stay on disk)
        parts: dict[int, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            part = state.finished(job)
            if part is not None:
                parts[job.index] = _summary_of(part)
            else:
                todo.append(job)
        resumed = len(parts)
        if resumed and options.progress:
            print(f"segment-everything: resuming in {options.output}: {resumed}/{len(jobs)} images "
                  f"already done")
        progress = Progress(len(todo), options, sum(p["masks"] for p in parts.values()))
        try:
            if todo:
                if options.engine == "ray":
                    from .ray_engine import run_ray_jobs
                    run_ray_jobs(todo, options, progress)
                else:
                    run_local_jobs(todo, options, progress)
        finally:
            progress.close()
        progress.write_errors()
        for job in todo:
            if job.index not in progress.failed:
                part = state.finished(job)
                if part is not None:
                    parts[job.index] = _summary_of(part)
        if "coco" in options.formats:
            done_jobs = [j for j in jobs if j.index in parts]
            write_coco(paths.coco,
                       [{"id": j.index + 1, "file_name": j.file_name,
                         "width": parts[j.index]["width"], "height": parts[j.index]["height"]}
                        for j in done_jobs],
                       (state.annotations(j) for j in done_jobs), options.category)
        failed = [progress.failed[i] for i in sorted(progress.failed)]
        return RunSummary(total=len(jobs), done=len(parts), resumed=resumed, failed=failed,
                          masks=sum(p["masks"] for p in parts.values()),
                          seconds=time.perf_counter() - t0, processed=len(todo))
    finally:
        state.unlock()
