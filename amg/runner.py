"""Dataset runs: many images in, per-image and per-run outputs out, resumable, fault-tolerant.

A run is :func:`run_dataset` over a list of image paths with :class:`RunOptions`:

1. *prepare*: take the run lock, compare the stored run parameters with these ones (refuse a
   resume with other parameters, :class:`RunMismatch`), remove half-written temp files left by
   a killed run, and find the images already finished (their done marker is present and still
   matches the source file);
2. *process* the rest with an engine — ``local`` (this process: images decoded ahead on
   ``workers`` threads, the model on the main thread, outputs written behind on the same
   threads) or ``ray`` (:mod:`amg.ray_engine`). Each image: generate, apply the record filters,
   write its files (:mod:`amg.outputs`), then its done marker, last and atomically; a failing
   image is reported and recorded in ``DIR/errors.csv``, and the run goes on;
3. *finish*: assemble ``DIR/coco/instances.json`` from the done markers of every finished image,
   in input order, and write (or remove) ``DIR/errors.csv``.

Because every file is written atomically and an image only counts as finished once its marker
exists, a run killed at any moment and started again with the same arguments skips the finished
images, redoes the rest, and ends with exactly the files one uninterrupted run writes.

Run state lives in ``DIR/.segment-everything/``: ``run.json`` (the parameters that shape the
outputs), ``done/<stem>.json`` (one marker per finished image: source path, size and mtime,
mask count, its COCO annotations) and ``lock``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from .config import AMGConfig
from .inputs import coco_file_names
from .io import ImageReadError, load_image, output_stems, write_atomic
from .outputs import (FORMATS, SEGMENTATIONS, OutputPaths, coco_annotations, write_coco,
                      write_image_outputs)
from .polygons import DEFAULT_MIN_POLYGON_AREA
from .record_filters import apply_record_filters

STATE_DIR = ".segment-everything"
ENGINES = ("local", "ray")
# AMGConfig fields that do not change the masks (decoder_chunk_size: in float32; in bfloat16 at
# most by rounding): left out of the resume check.
NON_OUTPUT_PARAMETERS = ("points_per_batch", "decoder_chunk_size", "output_mode")

__all__ = ["RunOptions", "RunSummary", "RunMismatch", "RunLocked", "ImageJob", "run_dataset",
           "ImageProcessor", "STATE_DIR"]


class RunMismatch(ValueError):
    """The output folder holds a run started with other parameters; the message lists them."""


class RunLocked(RuntimeError):
    """Another run is writing to the same output folder."""


@dataclass
class RunOptions:
    """Everything a dataset run needs besides its image list.

    Attributes:
        output: the output folder ``DIR``.
        config: the generation parameters (``output_mode`` is forced to ``coco_rle``).
        model: checkpoint name (``mobile_sam``, ``vit_b``...) or path, for ``sam_model.load_model``.
        device: torch device of the model; ``None``: ``cpu`` (local engine), or ``cuda`` when
            the Ray cluster has GPUs (ray engine).
        formats: output formats, a subset of :data:`amg.outputs.FORMATS`.
        segmentation: COCO segmentation kind, ``rle`` or ``polygon`` (needs ``coco``).
        min_polygon_area: polygon tolerance in px² (see :mod:`amg.polygons`).
        category: the COCO category name.
        image_root: folder the COCO ``file_name`` is relative to (``None``: the deepest folder
            holding every image).
        min_area, max_area: keep masks with ``min_area <= area <= max_area`` pixels (``None``:
            no bound).
        mask_nms_thresh: mask-IoU NMS threshold in (0, 1] (``None``: off).
        overwrite: forget finished images and earlier parameters, redo everything.
        workers: threads decoding images ahead and writing outputs behind (local engine).
        threads: torch intra-op threads for the model (``None``: torch's default locally, the
            actor's CPU count under Ray). Results can differ in the last float bits between
            thread counts; give the same value to compare runs bit for bit.
        engine: ``local`` or ``ray``.
        ray_address: Ray cluster address (``None``: ``RAY_ADDRESS`` if set, else a local one).
        ray_actors: model replicas under Ray (``None``: one per GPU, or one per CPU but one).
        progress: show a tqdm progress bar (on stderr).
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

    def __post_init__(self) -> None:
        self.output = Path(self.output)
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
        if self.segmentation == "polygon" and "coco" not in self.formats:
            raise ValueError("--segmentation polygon applies to the COCO output: add --format coco")
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
        if self.ray_actors is not None and (not isinstance(self.ray_actors, int) or self.ray_actors < 1):
            raise ValueError(f"--ray-actors must be an integer >= 1, got {self.ray_actors!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The parameters that shape the outputs, as JSON-ready data (stored in ``run.json``).

        Left out, so they may change between a run and its resume: ``points_per_batch`` and
        ``decoder_chunk_size`` (do not change the masks), the engine, device, workers, threads
        and Ray settings."""
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
            "min_polygon_area": self.min_polygon_area if self.segmentation == "polygon" else None,
            "category": self.category,
            "image_root": None if self.image_root is None else str(Path(self.image_root).resolve()),
            "min_area": self.min_area, "max_area": self.max_area,
            "mask_nms_thresh": self.mask_nms_thresh,
        }


@dataclass(frozen=True)
class ImageJob:
    """One image of a run.

    Attributes:
        index: position in the run's image list (0-based); the COCO image id is ``index + 1``.
        path: the image file.
        stem: its output name (:func:`amg.io.output_stems`).
        file_name: its COCO ``file_name``.
    """

    index: int
    path: Path
    stem: str
    file_name: str


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


class RunState:
    """The run's state folder ``DIR/.segment-everything`` (parameters, done markers, lock)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / STATE_DIR
        self.done_dir = self.dir / "done"
        self._lock_file = None

    def lock(self) -> None:
        """Take the run lock (an advisory ``flock``; released when the process ends).

        Raises:
            RunLocked: another process holds it.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not on POSIX: no locking
            return
        f = open(self.dir / "lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RunLocked(f"another segment-everything run is writing to {self.dir.parent}") from None
        self._lock_file = f

    def unlock(self) -> None:
        """Release the run lock."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def reset(self) -> None:
        """Forget the earlier run: parameters and done markers (``--overwrite``)."""
        (self.dir / "run.json").unlink(missing_ok=True)
        if self.done_dir.exists():
            shutil.rmtree(self.done_dir)

    def check_parameters(self, fingerprint: dict[str, Any]) -> None:
        """Store the run's parameters, or compare them with the stored ones.

        Raises:
            RunMismatch: the folder holds a run with other parameters (each difference named).
        """
        path = self.dir / "run.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored != _jsonable(fingerprint):
                diffs = _differences(stored or {}, _jsonable(fingerprint))
                raise RunMismatch(
                    f"{self.dir.parent} holds a run started with other parameters ({diffs}); "
                    f"run again with the same parameters to resume it, or add --overwrite to "
                    f"start over")
            return
        write_atomic(path, json.dumps(_jsonable(fingerprint), indent=1, sort_keys=True))

    def marker(self, stem: str) -> Path:
        """The done marker of an image."""
        return self.done_dir / f"{stem}.json"

    def finished(self, job: ImageJob) -> dict[str, Any] | None:
        """The done marker's content if the image is finished and its source is unchanged."""
        path = self.marker(job.stem)
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if part.get("source") != _source_signature(job.path):
            return None
        return part

    def annotations(self, job: ImageJob) -> list[dict[str, Any]]:
        """The COCO annotations stored in a finished image's done marker.

        Raises:
            RuntimeError: the marker vanished or has no annotations (it was written by a run
                without the ``coco`` format, which the parameter check rules out).
        """
        part = self.finished(job)
        if part is None or "annotations" not in part:
            raise RuntimeError(f"{self.marker(job.stem)}: done marker missing or without COCO "
                               "annotations; rerun with --overwrite")
        return part["annotations"]

    def mark_done(self, job: ImageJob, part: dict[str, Any]) -> None:
        """Write the image's done marker (atomically, after all its outputs)."""
        write_atomic(self.marker(job.stem),
                     json.dumps({"source": _source_signature(job.path), **part}, separators=(",", ":")))


def _summary_of(part: dict[str, Any]) -> dict[str, Any]:
    return {"height": part["height"], "width": part["width"], "masks": part["masks"]}


def _source_signature(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(path.resolve())}


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _differences(a, b, prefix + k + ".")
            if sub:
                parts.append(sub)
        elif a != b:
            parts.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return "; ".join(parts)


class ImageProcessor:
    """Turns one decoded image into its outputs and done marker (shared by both engines).

    Args:
        generator: anything with ``generate((H, W, 3) uint8 RGB) -> list of records`` whose
            ``segmentation`` is COCO RLE (a :class:`amg.MaskGenerator` with
            ``output_mode="coco_rle"``).
        options: the run's :class:`RunOptions`.
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
            OSError: a file cannot be written; ValueError: see :func:`amg.outputs.label_map`.
        """
        o = self.options
        _remove_temp_files(self.paths.png_dir(job.stem))
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


def _remove_temp_files(folder: Path) -> None:
    """Delete the hidden ``.<name>.part`` files :func:`amg.io.write_atomic` leaves when killed."""
    if folder.is_dir():
        for f in folder.glob(".*.part"):
            f.unlink(missing_ok=True)


def failure_reason(path: Path, exc: BaseException) -> str:
    """An exception as a one-line reason, without the leading ``"<path>: "`` it may carry."""
    msg = str(exc)
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if not isinstance(exc, (ImageReadError, ValueError)):
        msg = f"{type(exc).__name__}: {msg}"
    return msg


class Progress:
    """Results as they come: progress bar, error list (kept in ``DIR/errors.csv``), counts."""

    def __init__(self, todo: int, options: RunOptions, resumed_masks: int) -> None:
        self.options = options
        self.paths = OutputPaths(options.output)
        self.masks = resumed_masks
        self.done_now = 0
        self.failed: dict[int, tuple[str, str]] = {}
        self.bar = tqdm(total=todo, unit="img", desc="segmenting", disable=not options.progress,
                        dynamic_ncols=True, file=sys.stderr)
        self.bar.set_postfix(masks=self.masks)

    def note(self, job: ImageJob, note: str) -> None:
        """A conversion note from decoding (e.g. ``converted from I;16``)."""
        tqdm.write(f"{job.path}: {note}")

    def ok(self, job: ImageJob, n_masks: int) -> None:
        """An image finished with ``n_masks`` masks."""
        self.done_now += 1
        self.masks += n_masks
        self.bar.update(1)
        self.bar.set_postfix(masks=self.masks)

    def fail(self, job: ImageJob, reason: str) -> None:
        """An image failed: report it and record it in ``DIR/errors.csv`` at once."""
        self.failed[job.index] = (str(job.path), reason)
        tqdm.write(f"error: {job.path}: {reason}", file=sys.stderr)
        self.bar.update(1)
        self.write_errors()

    def write_errors(self) -> None:
        """``DIR/errors.csv`` (``path,reason``, input order), or no such file when none failed."""
        if not self.failed:
            self.paths.errors.unlink(missing_ok=True)
            return
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(self.failed[i] for i in sorted(self.failed))
        write_atomic(self.paths.errors, buf.getvalue())

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


def make_jobs(images: list[Path], image_root: Path | None = None) -> list[ImageJob]:
    """The run's :class:`ImageJob` list (output names and COCO file names fixed here).

    Raises:
        ValueError: an image is not under ``image_root``.
    """
    images = [Path(p) for p in images]
    return [ImageJob(i, p, s, f) for i, (p, s, f) in
            enumerate(zip(images, output_stems(images), coco_file_names(images, image_root)))]


def run_dataset(images: list[str | Path], options: RunOptions) -> RunSummary:
    """Segment a list of images into ``options.output``, resumably (see the module docstring).

    Args:
        images: image paths in run order (e.g. from :func:`amg.inputs.collect_images`).
        options: the run's :class:`RunOptions`.

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
            _remove_temp_files(folder)
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


def load_generator(options: RunOptions, device: str) -> Any:
    """The model and :class:`amg.MaskGenerator` of a run (``output_mode="coco_rle"``).

    Raises:
        sam_model.CheckpointError: the model cannot be loaded.
    """
    from sam_model import load_model  # heavy imports only when a model is needed

    from .generator import MaskGenerator

    return MaskGenerator(load_model(options.model, device=device), options.config)


class _TorchThreads:
    """Set torch's intra-op thread count for a block (no-op for ``None``), then restore it."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before: int | None = None

    def __enter__(self) -> None:
        if self.threads is not None:
            import torch
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: Any) -> None:
        if self.before is not None:
            import torch
            torch.set_num_threads(self.before)


def _prefetch(jobs: list[ImageJob], pool: ThreadPoolExecutor, ahead: int
              ) -> Iterator[tuple[ImageJob, Future]]:
    """``(job, future of load_image(job.path))`` in job order, at most ``ahead`` decoding."""
    queue: deque[tuple[ImageJob, Future]] = deque()
    it = iter(jobs)
    for job in it:
        queue.append((job, pool.submit(load_image, job.path)))
        if len(queue) >= ahead:
            break
    while queue:
        yield queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(load_image, nxt.path)))


def run_local_jobs(jobs: list[ImageJob], options: RunOptions, progress: Progress) -> None:
    """The local engine: decode ahead on ``options.workers`` threads (bounded, in order), run
    the model on this thread, write outputs behind on the same threads (bounded).

    The model is loaded when the first image decodes, so a resume whose remaining images are
    all unreadable does not load it.

    Raises:
        sam_model.CheckpointError: the model cannot be loaded.
    """
    device = options.device or "cpu"
    with _TorchThreads(options.threads):
        processor: ImageProcessor | None = None  # the model loads with the first good image
        writes: deque[tuple[ImageJob, Future]] = deque()

        def collect(job: ImageJob, fut: Future) -> None:
            try:
                progress.ok(job, fut.result())
            except Exception as exc:  # one image's failure never stops the run
                progress.fail(job, failure_reason(job.path, exc))

        with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="amg-io") as pool:
            for job, decoded in _prefetch(jobs, pool, ahead=2 * options.workers):
                try:
                    image, note = decoded.result()
                except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
                    progress.fail(job, failure_reason(job.path, exc))
                    continue
                if note:
                    progress.note(job, note)
                if processor is None:
                    processor = ImageProcessor(load_generator(options, device), options)
                try:
                    records = processor.generate(image)
                except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
                    progress.fail(job, failure_reason(job.path, exc))
                    continue
                writes.append((job, pool.submit(processor.finish, job, image, records)))
                while len(writes) > options.workers:
                    collect(*writes.popleft())
            while writes:
                collect(*writes.popleft())
