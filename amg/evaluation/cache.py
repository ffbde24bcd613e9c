"""A proposal source run over a dataset's images, with a per-image cache.

Each image's proposals are stored at once as ``<cache>/<source dir>/<image_id>.json`` (with the
image file's sha256, checked on reuse), so reruns and interrupted runs only compute what is
missing; the source folder's ``meta.json`` records the source's full key
(:meth:`amg.evaluation.sources.ProposalSource.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..io import load_image, write_atomic
from .errors import EvaluationError
from .ground_truth import Dataset
from .proposals import compact_records
from .sources import ProposalSource, json_default

__all__ = ["ImageResult", "generate_proposals"]


def _file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class ImageResult:
    """Proposals of one image from one source.

    Attributes:
        image_id: COCO image id.
        seconds: wall seconds of the ``generate`` call alone (image decoding excluded).
        masks: list of ``{"segmentation": COCO RLE (str counts), "predicted_iou": float,
            "stability_score": float}``, generator order.
        cached: True when read from the cache.
    """

    image_id: int
    seconds: float
    masks: list[dict[str, Any]]
    cached: bool = False


def generate_proposals(source: ProposalSource, dataset: Dataset, cache: str | Path | None = None,
                       progress: bool = True) -> list[ImageResult]:
    """Run a source's generator over the dataset's images, reusing and filling the cache.

    Each image is decoded with :func:`amg.io.load_image` (must match the annotation's
    height/width), generated, and stored at once as ``<cache>/<source dir>/<image_id>.json``
    (with the image file's sha256, checked on reuse), so an interrupted run resumes where it
    stopped. The source's ``meta.json`` records its full key.

    Args:
        source: the generator to run.
        dataset: images to run on (:func:`amg.evaluation.ground_truth.load_dataset`).
        cache: cache root folder, or None for no cache.
        progress: show a tqdm bar over the images.

    Returns:
        one :class:`ImageResult` per ``dataset.image_ids`` entry, in order.

    Raises:
        amg.io.ImageReadError: an unreadable image (names the file).
        EvaluationError: image size differs from its annotation, or bad records.
    """
    folder = None
    if cache is not None:
        folder = source.cache_dir(cache)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.exists():
            write_atomic(meta, json.dumps({"name": source.name, "key": source.key,
                                           "key_hash": source.key_hash}, indent=1,
                                          default=json_default))
    results = []
    bar = tqdm(dataset.image_ids, desc=source.name, unit="img", disable=not progress, dynamic_ncols=True)
    for image_id in bar:
        info = dataset.image_info(image_id)
        path = dataset.image_path(image_id)
        sha = _file_sha256(path) if path.is_file() else None
        entry = folder / f"{image_id}.json" if folder else None
        res = _read_cached(entry, image_id, sha) if entry else None
        if res is None:
            image, _ = load_image(path)
            h, w = int(info["height"]), int(info["width"])
            if image.shape[:2] != (h, w):
                raise EvaluationError(f"{path}: decoded size {image.shape[:2]} != annotation size {(h, w)}")
            gen = source.generator()
            t0 = time.perf_counter()
            records = gen.generate(image)
            seconds = time.perf_counter() - t0
            masks = compact_records(records, image_id, h, w)
            res = ImageResult(image_id=int(image_id), seconds=seconds, masks=masks)
            if entry:
                write_atomic(entry, json.dumps({
                    "image_id": int(image_id), "file_name": info["file_name"], "image_sha256": sha,
                    "seconds": seconds, "threads": _torch_threads(), "host": platform.node(),
                    "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "masks": masks}))
        results.append(res)
        bar.set_postfix(masks=len(res.masks), s=f"{res.seconds:.1f}", cached=res.cached)
    return results


def _torch_threads() -> int | None:
    """torch's intra-op thread count if torch is loaded (never imports it), else None."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _read_cached(entry: Path, image_id: int, sha: str | None) -> ImageResult | None:
    """A cached image result, or None when absent, unreadable or for other image bytes."""
    if not entry.is_file():
        return None
    try:
        data = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    if data.get("image_id") != int(image_id) or data.get("image_sha256") != sha:
        return None
    return ImageResult(image_id=int(image_id), seconds=float(data["seconds"]), masks=data["masks"],
                       cached=True)
