"""The Ray Data engine: the same dataset run, with the model replicated over a Ray cluster.

Pipeline (``ray.data``): the pending images as rows ``{index, path, stem, file_name}`` ->
``map(decode)``: Ray tasks read and decode each image with :func:`amg.io.load_image` (a bad
image becomes a row carrying its error, never an exception) -> ``map_batches(SegmentActor)``:
an actor pool, one model per GPU (``num_gpus=1`` each), or one per CPU slot when the cluster has
no GPU (``num_cpus=1`` each, one CPU left to decoding), each actor generating, filtering and
writing the image's files and done marker exactly as the local engine does
(:class:`amg.dataset.processing.ImageProcessor`) -> small result rows ``{index, masks, error, note}``
streamed back to the driver, which keeps the progress bar and the error list.

The per-image done markers are the shards: the driver merges them into the one COCO file at the
end (:func:`amg.dataset.run.run_dataset`), so the resume guarantees and the outputs are the local
engine's, byte for byte when both use the same torch thread count (``threads``).

Cluster: ``ray_address`` (or the ``RAY_ADDRESS`` environment variable) connects to an existing
cluster, e.g. ``ray://head:10001`` or ``auto`` on a cluster node; otherwise ``ray.init`` starts a
local one. On a multi-node cluster every node needs this package installed (and the weights
reachable: the checkpoint cache, or a checkpoint path on shared storage), and the input and
output folders must be the same shared filesystem paths on every node.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io import DEFAULT_MAX_PIXELS, ImageReadError
from .jobs import ImageJob
from .options import RunOptions
from .processing import ImageProcessor, decode_image, failure_reason, load_generator
from .progress import Progress
from .state import RunStopped
from .threads import TorchThreads

__all__ = ["run_ray_jobs", "SegmentActor", "decode_row", "plan_actors"]

EMPTY_IMAGE = np.zeros((0, 0, 3), np.uint8)


def decode_row(row: dict[str, Any], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Ray Data ``map`` step: decode ``row["path"]`` (:func:`amg.dataset.processing.decode_image`).

    Returns:
        The row plus ``image`` ((H, W, 3) uint8 RGB, or (0, 0, 3) on failure), ``note`` (a
        conversion note or ``""``) and ``error`` (the failure reason or ``""``).
    """
    path = Path(row["path"])
    try:
        image, note = decode_image(path, max_pixels)
        error = ""
    except ImageReadError as exc:
        image, note, error = EMPTY_IMAGE, None, failure_reason(path, exc)
    return {**row, "image": image, "note": note or "", "error": error}


class SegmentActor:
    """Ray Data actor: one model replica that turns decoded rows into outputs on disk.

    Args:
        options: the run's :class:`amg.dataset.options.RunOptions`.
        device: torch device of this replica (``cuda`` gets the actor's GPU).
        threads: torch intra-op threads (``None``: torch's default).
    """

    def __init__(self, options: RunOptions, device: str, threads: int | None) -> None:
        self._threads = TorchThreads(threads)
        self._threads.__enter__()  # for the actor's life
        self.processor = ImageProcessor(load_generator(options, device), options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Process a batch of decoded rows.

        Returns:
            ``{"index": int64, "masks": int64 (-1 on failure), "error": str, "note": str}``
            arrays, one entry per row.
        """
        out: dict[str, list] = {"index": [], "masks": [], "error": [], "note": []}
        for i in range(len(batch["index"])):
            job = ImageJob(int(batch["index"][i]), Path(str(batch["path"][i])),
                           str(batch["stem"][i]), str(batch["file_name"][i]))
            error, masks = str(batch["error"][i]), -1
            if not error:
                try:
                    masks = self.processor.process(job, np.ascontiguousarray(batch["image"][i]))
                except Exception as exc:  # noqa: BLE001 - one image's failure is reported
                    error = failure_reason(job.path, exc)
            out["index"].append(job.index)
            out["masks"].append(masks)
            out["error"].append(error)
            out["note"].append(str(batch["note"][i]))
        return {"index": np.array(out["index"], np.int64), "masks": np.array(out["masks"], np.int64),
                "error": np.array(out["error"], dtype=object),
                "note": np.array(out["note"], dtype=object)}


def plan_actors(resources: dict[str, float], device: str | None, actors: int | None,
                threads: int | None) -> dict[str, Any]:
    """How to place the model replicas on a cluster.

    Args:
        resources: ``ray.cluster_resources()`` (``CPU``, ``GPU`` counts).
        device: the requested device (``None``: ``cuda`` if the cluster has a GPU, else ``cpu``).
        actors: the requested number of replicas (``None``: automatic).
        threads: the requested torch threads per replica (``None``: automatic).

    Returns:
        ``{"device", "actors", "num_gpus", "num_cpus", "threads"}``: one replica per GPU
        (``num_gpus=1``), or one per CPU slot but one (``num_cpus=1``, 1 torch thread) — the
        spare CPU decodes images.

    Raises:
        ValueError: a CUDA device was asked for but the cluster has no GPU.
    """
    n_gpus = int(resources.get("GPU", 0))
    n_cpus = int(resources.get("CPU", 1))
    device = device or ("cuda" if n_gpus else "cpu")
    if device.startswith("cuda"):
        if n_gpus < 1:
            raise ValueError(f"--device {device}: the Ray cluster has no GPU ({resources})")
        return {"device": device, "actors": actors or n_gpus, "num_gpus": 1, "num_cpus": 1,
                "threads": threads}
    return {"device": device, "actors": actors or max(1, n_cpus - 1), "num_gpus": 0,
            "num_cpus": 1, "threads": threads or 1}


def run_ray_jobs(jobs: list[ImageJob], options: RunOptions, progress: Progress) -> None:
    """Process ``jobs`` on a Ray cluster (started locally unless ``options.ray_address`` or
    ``RAY_ADDRESS`` names one); results are reported to ``progress`` as they arrive.

    Raises:
        ImportError: Ray Data is not installed (``pip install "segment-everything[ray]"``).
        ValueError: see :func:`plan_actors`.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError('the ray engine needs Ray Data: pip install "segment-everything[ray]"'
                          f" ({exc})") from None
    started = False
    if not ray.is_initialized():
        address = options.ray_address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"logging_level": "WARNING"}
        if address is None:  # a new local cluster: no dashboard needed
            kwargs["include_dashboard"] = False
        ray.init(address=address, **kwargs)
        started = True
    # Workers may run elsewhere or in another folder: absolute paths only.
    model = str(Path(options.model).resolve()) if Path(options.model).exists() else options.model
    options = dataclasses.replace(options, output=options.output.resolve(), model=model)
    try:
        plan = plan_actors(ray.cluster_resources(), options.device, options.ray_actors,
                           options.threads)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        rows = [{"index": j.index, "path": str(j.path.resolve()), "stem": j.stem,
                 "file_name": j.file_name} for j in jobs]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1024))
        # A fractional CPU keeps decoding a separate (unfused) step beside the model actors.
        ds = ds.map(decode_row, num_cpus=0.5, fn_kwargs={"max_pixels": options.max_pixels})
        ds = ds.map_batches(
            SegmentActor, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"options": options, "device": plan["device"],
                                   "threads": plan["threads"]},
            compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
            num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"])
        by_index = {j.index: j for j in jobs}
        for row in ds.iter_rows():
            job = by_index[int(row["index"])]
            if row["note"]:
                progress.note(job, str(row["note"]))
            if str(row["error"]).startswith("RunStopped: "):  # disk full: stop, as locally
                raise RunStopped(str(row["error"])[len("RunStopped: "):])
            if row["error"]:
                progress.fail(job, str(row["error"]))
            else:
                progress.ok(job, int(row["masks"]))
    finally:
        if started:
            ray.shutdown()
