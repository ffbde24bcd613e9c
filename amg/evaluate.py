"""Quality evaluation of automatic masks as class-agnostic object proposals.

The metric is the SAM paper's object-proposal recall (§7.3, Appendix D.3): every generated mask
is a proposal scored by ``mean(predicted_iou, stability_score)``; ground truth is made
class-agnostic (every annotation in one category, every proposal in category 1); pycocotools
``COCOeval(gt, dt, "segm")`` runs with ``params.useCats = 0``; crowd annotations are ignored
regions, exactly as pycocotools treats ``iscrowd``. Reported: average recall (AR, the mean of the
recall over the IoU thresholds 0.50:0.05:0.95) with at most 10, 100 and 1000 proposals per
image, and AR@1000 for small (< 32² px), medium and large ground-truth objects.

One evaluation with ``params.maxDets = RECALL_MAX_DETS`` (a superset of ``[10, 100, 1000]``
ending in 1000) gives every number at once: pycocotools matches the top ``maxDets[-1]``
proposals of each image once and ``accumulate`` then truncates each image's score-sorted
proposals to each ``maxDets`` entry, so the values at 10/100/1000 are those of
``maxDets = [10, 100, 1000]`` (tested). The numbers are read from ``COCOeval.eval['recall']``
by the areaRng and maxDets indexes, not from ``summarize()``, whose indexes are hard-coded.

Pieces, all usable alone:

- :func:`load_dataset` / :func:`class_agnostic_coco`: the ground truth and the image subset;
- :func:`records_to_proposals`: mask records (ours or the reference's) to COCO results;
- :func:`evaluate_proposals` and :func:`average_recall`: the pycocotools evaluation;
- :class:`ProposalSource`, :func:`our_source`, :func:`generate_proposals`: run a generator
  over the images with a per-image cache keyed by the generator's identity (kind, parameters,
  code, weights), so reruns and partial reruns are cheap;
- :func:`evaluate_sources`, :func:`format_markdown`, :func:`write_plots`: the report.

The product never imports the reference implementations; ``tools/evaluate.py`` plugs the
reference generator in as a :class:`ProposalSource`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "coco_tiny"

#: Proposal budgets at which recall is computed (one pycocotools evaluation; ends in 1000).
RECALL_MAX_DETS = (1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 200, 300, 500, 700, 1000)
#: Budgets of the report's AR columns.
REPORT_MAX_DETS = (10, 100, 1000)
#: pycocotools' area-range labels, in the order of ``COCOeval.params.areaRng``.
AREA_LABELS = ("all", "small", "medium", "large")
#: The one category of class-agnostic evaluation.
OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}

# Files of the product that do not influence the masks (left out of the code fingerprint).
_NON_GENERATION_FILES = {"amg/evaluate.py", "amg/cli.py"}


class EvaluationError(ValueError):
    """Bad evaluation input (dataset file, image ids, records, cache); the message names it."""


# ============================================================================ ground truth
@dataclass
class Dataset:
    """Class-agnostic ground truth and the images to evaluate.

    Attributes:
        coco: the class-agnostic ground truth (``pycocotools.coco.COCO``; every annotation in
            category 1, ``iscrowd`` kept).
        images_dir: folder holding the images' ``file_name`` paths.
        image_ids: the evaluated subset, in evaluation order (ascending unless given).
        annotations: the annotation file it came from (``None`` for in-memory datasets).
    """

    coco: COCO
    images_dir: Path
    image_ids: list[int]
    annotations: Path | None = None

    def image_info(self, image_id: int) -> dict[str, Any]:
        """The COCO ``images`` entry (``file_name``, ``height``, ``width``) of an image."""
        return self.coco.imgs[image_id]

    def image_path(self, image_id: int) -> Path:
        """Path of an image file: ``images_dir / file_name``."""
        return self.images_dir / self.image_info(image_id)["file_name"]

    def summary(self) -> dict[str, Any]:
        """JSON-able description: files, image ids, instance counts by size (non-crowd) and crowd."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.image_ids))
        sizes = {"small": 0, "medium": 0, "large": 0}
        for a in anns:
            if not a.get("iscrowd", 0):
                sizes[_size_label(a["area"])] += 1
        return {
            "annotations": str(self.annotations) if self.annotations else None,
            "images_dir": str(self.images_dir),
            "image_ids": list(self.image_ids),
            "images": len(self.image_ids),
            "instances": sum(sizes.values()),
            "instances_by_size": sizes,
            "crowd": sum(1 for a in anns if a.get("iscrowd", 0)),
        }


def _size_label(area: float) -> str:
    """pycocotools' size bins: small < 32², medium < 96², large otherwise (pixels)."""
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def class_agnostic_coco(dataset: dict[str, Any], source: str = "dataset") -> COCO:
    """A COCO ground truth with every annotation mapped to the single category 1.

    Args:
        dataset: a COCO instances dict (``images``, ``annotations``; ``categories`` optional);
            not modified. Annotations keep ``segmentation`` (polygons or RLE), ``area`` and
            ``iscrowd`` (missing ``iscrowd`` is read as 0).
        source: name used in error messages (e.g. the file path).

    Returns:
        an indexed ``pycocotools.coco.COCO``.

    Raises:
        EvaluationError: missing ``images``/``annotations`` keys or annotation fields.
    """
    if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
        raise EvaluationError(f"{source}: not a COCO instances file (needs 'images' and 'annotations')")
    data = copy.deepcopy({k: dataset[k] for k in ("images", "annotations")})
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "segmentation", "area") if k not in ann]
        if missing:
            raise EvaluationError(f"{source}: annotation #{i} (id {ann.get('id')}) lacks {missing}")
        ann["category_id"] = OBJECT_CATEGORY["id"]
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
    data["categories"] = [dict(OBJECT_CATEGORY)]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_dataset(annotations: str | Path, images_dir: str | Path | None = None,
                 limit: int | None = None, image_ids: Sequence[int] | None = None) -> Dataset:
    """Load a COCO instances file as class-agnostic ground truth and choose the images.

    Args:
        annotations: COCO instances JSON (e.g. ``coco_tiny/annotations/instances_val2017.json``).
        images_dir: folder of the images; default: ``val2017`` beside the ``annotations``
            folder if it exists, else the annotation file's folder.
        limit: keep the first ``limit`` images (after ``image_ids`` selection, ascending id
            order when ``image_ids`` is not given) — a deterministic subset.
        image_ids: evaluate exactly these image ids, in this order.

    Returns:
        a :class:`Dataset`.

    Raises:
        EvaluationError: unreadable/invalid file, unknown image ids, ``limit`` < 1, missing
            images folder.
    """
    annotations = Path(annotations)
    try:
        raw = json.loads(annotations.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{annotations}: cannot read the annotations ({exc})") from exc
    coco = class_agnostic_coco(raw, source=str(annotations))
    if images_dir is None:
        cand = annotations.parent.parent / "val2017"
        images_dir = cand if cand.is_dir() else annotations.parent
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise EvaluationError(f"images folder not found: {images_dir}")
    if image_ids is not None:
        ids = [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in coco.imgs]
        if unknown:
            raise EvaluationError(f"{annotations}: unknown image id(s) {unknown}")
        if len(set(ids)) != len(ids):
            raise EvaluationError(f"image_ids: duplicate ids in {ids}")
    else:
        ids = sorted(coco.getImgIds())
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"limit must be >= 1, got {limit}")
        ids = ids[:limit]
    return Dataset(coco=coco, images_dir=images_dir, image_ids=ids, annotations=annotations)


# ============================================================================ proposals
def proposal_score(record: dict[str, Any]) -> float:
    """A mask's proposal score: ``(predicted_iou + stability_score) / 2`` (SAM paper D.3).

    Raises:
        EvaluationError: a key is missing.
    """
    try:
        return 0.5 * (float(record["predicted_iou"]) + float(record["stability_score"]))
    except KeyError as exc:
        raise EvaluationError(f"mask record lacks {exc.args[0]!r} (needed for the proposal score)") from exc


def to_coco_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Any record ``segmentation`` as a compressed COCO RLE with ``counts`` as str.

    Args:
        segmentation: (H, W) bool/uint8 array (``binary_mask``), an uncompressed RLE
            ``{"size": [H, W], "counts": [int, ...]}`` (column-major, zeros first) or a COCO
            RLE (``counts`` str or bytes).
        height, width: the image size in pixels the mask must have.

    Returns:
        ``{"size": [H, W], "counts": str}``.

    Raises:
        EvaluationError: unknown format or a size other than (height, width).
    """
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise EvaluationError(f"mask shape {segmentation.shape} != image size {(height, width)}")
        rle = mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise EvaluationError(f"mask RLE size {segmentation['size']} != image size {[height, width]}")
        counts = segmentation["counts"]
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list) else dict(segmentation)
    else:
        raise EvaluationError(f"unknown segmentation format {type(segmentation).__name__}")
    counts = rle["counts"]
    return {"size": [int(height), int(width)],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def records_to_proposals(records: Iterable[dict[str, Any]], image_id: int, height: int,
                         width: int) -> list[dict[str, Any]]:
    """Mask records (``MaskGenerator.generate`` or the reference's) to COCO result dicts.

    Args:
        records: dicts with ``segmentation`` (any output mode, see :func:`to_coco_rle`),
            ``predicted_iou`` and ``stability_score``.
        image_id: the COCO image id.
        height, width: image size in pixels.

    Returns:
        one dict per record: ``image_id``, ``category_id`` 1, ``segmentation`` (COCO RLE,
        str counts), ``score`` = :func:`proposal_score`; order kept.

    Raises:
        EvaluationError: a record lacks a key or has a mask of another size (names the image).
    """
    out = []
    for i, r in enumerate(records):
        try:
            seg = to_coco_rle(r["segmentation"], height, width)
            score = proposal_score(r)
        except KeyError as exc:
            raise EvaluationError(f"image {image_id}, mask #{i}: record lacks {exc.args[0]!r}") from exc
        except EvaluationError as exc:
            raise EvaluationError(f"image {image_id}, mask #{i}: {exc}") from exc
        out.append({"image_id": int(image_id), "category_id": OBJECT_CATEGORY["id"],
                    "segmentation": seg, "score": score})
    return out


# ============================================================================ metric
def evaluate_proposals(gt: COCO, proposals: Sequence[dict[str, Any]], image_ids: Sequence[int],
                       max_dets: Sequence[int] = RECALL_MAX_DETS) -> COCOeval:
    """Class-agnostic segmentation recall of proposals with pycocotools.

    Args:
        gt: class-agnostic ground truth (:func:`class_agnostic_coco`).
        proposals: COCO result dicts (``image_id``, ``segmentation`` COCO RLE, ``score``);
            ``category_id`` is ignored (``useCats = 0``). May be empty.
        image_ids: the images evaluated; ground truth of other images is not counted, and an
            image here without proposals counts all its objects as missed.
        max_dets: increasing proposal budgets per image; the largest one caps the matching.

    Returns:
        the accumulated ``COCOeval`` (``eval['recall']``: (T=10 IoU thresholds, K=1, A=4 area
        ranges, M=len(max_dets)), -1 where there is no ground truth). pycocotools' printing is
        suppressed.

    Raises:
        EvaluationError: proposals for images outside ``image_ids`` or unknown to ``gt``, or
            ``max_dets`` not increasing.
    """
    ids = [int(i) for i in image_ids]
    unknown = sorted({int(i) for i in ids} - set(gt.imgs))
    if unknown:
        raise EvaluationError(f"image ids not in the ground truth: {unknown}")
    stray = sorted({int(p["image_id"]) for p in proposals} - set(ids))
    if stray:
        raise EvaluationError(f"proposals for image ids outside the evaluated set: {stray}")
    md = [int(m) for m in max_dets]
    if not md or any(b <= a for a, b in zip(md, md[1:])) or md[0] < 1:
        raise EvaluationError(f"max_dets must be increasing positive integers, got {list(max_dets)}")

    dt = COCO()
    anns = []
    for i, p in enumerate(proposals, start=1):
        seg = p["segmentation"]
        anns.append({"id": i, "image_id": int(p["image_id"]), "category_id": OBJECT_CATEGORY["id"],
                     "segmentation": seg, "score": float(p["score"]), "iscrowd": 0,
                     "area": float(mask_utils.area(seg)),
                     "bbox": mask_utils.toBbox(seg).tolist()})
    dt.dataset = {"images": [gt.imgs[i] for i in ids], "annotations": anns,
                  "categories": [dict(OBJECT_CATEGORY)]}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = ids
        ev.params.catIds = [OBJECT_CATEGORY["id"]]
        ev.params.useCats = 0
        ev.params.maxDets = md
        ev.evaluate()
        ev.accumulate()
    return ev


def average_recall(ev: COCOeval, max_dets: int = 1000, area: str = "all") -> float:
    """AR: recall averaged over the IoU thresholds, read from ``ev.eval['recall']``.

    Args:
        ev: an accumulated :class:`COCOeval` (:func:`evaluate_proposals`).
        max_dets: a budget present in ``ev.params.maxDets``.
        area: ``all``, ``small``, ``medium`` or ``large`` (an ``areaRngLbl`` of ``ev``).

    Returns:
        the mean over IoU thresholds of the recall, entries of -1 (no ground truth) ignored;
        NaN when there is no ground truth at all in that area range.

    Raises:
        EvaluationError: ``max_dets`` or ``area`` not among the evaluation's indexes.
    """
    p = ev.params
    if max_dets not in p.maxDets:
        raise EvaluationError(f"max_dets {max_dets} not evaluated (maxDets = {list(p.maxDets)})")
    if area not in p.areaRngLbl:
        raise EvaluationError(f"area {area!r} not evaluated (areaRngLbl = {list(p.areaRngLbl)})")
    r = ev.eval["recall"][:, :, p.areaRngLbl.index(area), list(p.maxDets).index(max_dets)]
    r = r[r > -1]
    return float(r.mean()) if r.size else float("nan")


def recall_summary(ev: COCOeval) -> dict[str, Any]:
    """The report's numbers from one evaluation.

    Returns:
        ``{"AR@10", "AR@100", "AR@1000"}`` (all sizes, present budgets of REPORT_MAX_DETS),
        ``AR_small@1000``, ``AR_medium@1000``, ``AR_large@1000`` (at the largest budget) and
        ``recall_curve``: ``{"max_dets": [...], "AR": [...]}`` over every evaluated budget.
        Values are floats in [0, 1] or NaN.
    """
    md = list(ev.params.maxDets)
    out: dict[str, Any] = {f"AR@{m}": average_recall(ev, m) for m in REPORT_MAX_DETS if m in md}
    for area in AREA_LABELS[1:]:
        out[f"AR_{area}@{md[-1]}"] = average_recall(ev, md[-1], area)
    out["recall_curve"] = {"max_dets": md, "AR": [average_recall(ev, m) for m in md]}
    return out


# ============================================================================ generation + cache
@dataclass
class ProposalSource:
    """A named mask generator with a stable identity for caching.

    Attributes:
        name: row label in the report (e.g. ``default``, ``reference:default``).
        key: JSON-able identity of everything that changes the masks (kind, parameters, code
            fingerprint or package version, weights); its hash names the cache folder.
        make_generator: builds the generator (an object with ``generate(image) -> records``,
            image (H, W, 3) uint8 RGB); called only when some image is not cached.
    """

    name: str
    key: dict[str, Any]
    make_generator: Callable[[], Any]
    _generator: Any = field(default=None, repr=False)

    @property
    def key_hash(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of ``key``."""
        blob = json.dumps(self.key, sort_keys=True, default=_json_default).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_dir(self, root: str | Path) -> Path:
        """This source's cache folder under ``root``: ``<slug of name>-<key_hash>``."""
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", self.name).strip("_")[:80] or "row"
        return Path(root) / f"{slug}-{self.key_hash}"

    def generator(self) -> Any:
        """The generator, built on first use."""
        if self._generator is None:
            self._generator = self.make_generator()
        return self._generator


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def code_fingerprint() -> dict[str, Any]:
    """Identity of the mask-generation code: sha256 over ``sam_model/**/*.py`` and
    ``amg/**/*.py`` (paths and contents; ``amg/evaluate.py`` and ``amg/cli.py`` left out), with
    the torch and numpy versions. Any edit of the product code changes it (cache miss)."""
    import torch
    h = hashlib.sha256()
    for pkg in ("sam_model", "amg"):
        for f in sorted((REPO_ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(REPO_ROOT).as_posix()
            if rel in _NON_GENERATION_FILES:
                continue
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return {"sources_sha256": h.hexdigest()[:16], "torch": torch.__version__, "numpy": np.__version__}


def our_source(preset: str = "default", overrides: dict[str, Any] | None = None,
               model: Any = "mobile_sam", device: str = "cpu", name: str | None = None) -> ProposalSource:
    """Our :class:`MaskGenerator` with a preset (+ overrides) as a :class:`ProposalSource`.

    Args:
        preset: preset name (``default``, ``crops``, ...) or YAML path.
        overrides: :class:`AMGConfig` fields to change (``output_mode`` is forced to
            ``coco_rle``).
        model: :func:`sam_model.load_model` name or checkpoint path (loaded on first use), or
            a loaded :class:`sam_model.Sam` (used as is; identified by a hash of its weights,
            and ``device`` is then taken from it).
        device: torch device string for a model given by name or path.
        name: row label; default ``preset`` plus ``[k=v,...]`` for the overrides.

    Raises:
        ConfigError: unknown preset, parameter or value (raised here, before any work).
    """
    from sam_model import load_model

    from .config import AMGConfig
    from .generator import MaskGenerator  # imported before the code is fingerprinted
    overrides = dict(overrides or {})
    cfg = AMGConfig.from_preset(preset, **overrides).replace(output_mode="coco_rle")
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output_mode"}
    loaded = not isinstance(model, (str, Path))
    if loaded:
        device = str(next(model.parameters()).device)
    key = {"kind": "ours", "model": _loaded_model_identity(model) if loaded else _model_identity(str(model)),
           "device": device, "params": params, "code": code_fingerprint()}

    def make() -> Any:
        return MaskGenerator(model if loaded else load_model(model, device=device), cfg)

    label = name or (preset + (f"[{','.join(f'{k}={v}' for k, v in overrides.items())}]" if overrides else ""))
    return ProposalSource(name=label, key=key, make_generator=make)


def _model_identity(model: str) -> dict[str, Any]:
    """A model name with its registered checkpoint sha256, or a file path with its size."""
    from sam_model import checkpoints
    if model in checkpoints.KNOWN_CHECKPOINTS:
        return {"name": model, "sha256": checkpoints.KNOWN_CHECKPOINTS[model].sha256}
    p = Path(model)
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime)}
    return {"name": model}


def _loaded_model_identity(model: Any) -> dict[str, Any]:
    """A loaded model's class and the sha256 (16 hex digits) of its state dict (names, dtypes,
    shapes, bytes)."""
    import torch
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"class": type(model).__name__, "state_dict_sha256": h.hexdigest()[:16]}


def _file_sha256(path: Path) -> str:
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
        dataset: images to run on (:func:`load_dataset`).
        cache: cache root folder, or None for no cache.
        progress: show a tqdm bar over the images.

    Returns:
        one :class:`ImageResult` per ``dataset.image_ids`` entry, in order.

    Raises:
        amg.io.ImageReadError: an unreadable image (names the file).
        EvaluationError: image size differs from its annotation, or bad records.
    """
    from tqdm import tqdm

    from .io import load_image

    folder = None
    if cache is not None:
        folder = source.cache_dir(cache)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.exists():
            _atomic_write(meta, json.dumps({"name": source.name, "key": source.key,
                                            "key_hash": source.key_hash}, indent=1,
                                           default=_json_default))
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
            masks = _compact_records(records, image_id, h, w)
            res = ImageResult(image_id=int(image_id), seconds=seconds, masks=masks)
            if entry:
                _atomic_write(entry, json.dumps({
                    "image_id": int(image_id), "file_name": info["file_name"], "image_sha256": sha,
                    "seconds": seconds, "threads": _torch_threads(), "host": platform.node(),
                    "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "masks": masks}))
        results.append(res)
        bar.set_postfix(masks=len(res.masks), s=f"{res.seconds:.1f}", cached=res.cached)
    return results


def _compact_records(records: Sequence[dict[str, Any]], image_id: int, h: int, w: int) -> list[dict[str, Any]]:
    """What the cache keeps of each record: COCO RLE (str counts) and the two scores."""
    out = []
    for i, r in enumerate(records):
        try:
            out.append({"segmentation": to_coco_rle(r["segmentation"], h, w),
                        "predicted_iou": float(r["predicted_iou"]),
                        "stability_score": float(r["stability_score"])})
        except KeyError as exc:
            raise EvaluationError(f"image {image_id}, mask #{i}: record lacks {exc.args[0]!r}") from exc
        except EvaluationError as exc:
            raise EvaluationError(f"image {image_id}, mask #{i}: {exc}") from exc
    return out


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ============================================================================ report
def evaluate_results(dataset: Dataset, results: Sequence[ImageResult]) -> dict[str, Any]:
    """Metric and cost numbers of one source's results on the dataset.

    Returns:
        :func:`recall_summary`'s keys plus ``images``, ``masks_per_image`` (mean number of
        masks, not capped), ``seconds_per_image`` (mean generation seconds, cached ones
        included as measured then), ``per_image`` ([{image_id, masks, seconds, cached}]).
    """
    proposals = []
    for res in results:
        info = dataset.image_info(res.image_id)
        proposals += records_to_proposals(res.masks, res.image_id, int(info["height"]), int(info["width"]))
    ev = evaluate_proposals(dataset.coco, proposals, [r.image_id for r in results])
    n = max(len(results), 1)
    return {
        "images": len(results),
        "masks_per_image": sum(len(r.masks) for r in results) / n,
        "seconds_per_image": sum(r.seconds for r in results) / n,
        **recall_summary(ev),
        "per_image": [{"image_id": r.image_id, "masks": len(r.masks), "seconds": round(r.seconds, 3),
                       "cached": r.cached} for r in results],
    }


def evaluate_sources(sources: Sequence[ProposalSource], dataset: Dataset,
                     cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate several sources on the same images.

    Returns:
        ``{"dataset": Dataset.summary(), "metric": {...}, "rows": [...]}``; each row has
        ``name``, ``key`` (the source key), ``key_hash`` and :func:`evaluate_results`' keys.
        Rows are computed one after another; each is generated (or read from cache) fully
        before it is evaluated.
    """
    rows = []
    for src in sources:
        results = generate_proposals(src, dataset, cache=cache, progress=progress)
        rows.append({"name": src.name, "key_hash": src.key_hash, "key": src.key,
                     **evaluate_results(dataset, results)})
    return {
        "dataset": dataset.summary(),
        "metric": {"score": "mean(predicted_iou, stability_score)", "iou_type": "segm",
                   "use_cats": 0, "iou_thresholds": "0.50:0.05:0.95", "crowd": "ignored",
                   "max_dets": list(RECALL_MAX_DETS)},
        "rows": rows,
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of a report (:func:`evaluate_sources`): one line per row with AR@10,
    AR@100, AR@1000, AR@1000 for small/medium/large objects, masks/image and s/image."""
    ds = report["dataset"]
    ids = ds["image_ids"]
    shown = ", ".join(map(str, ids[:12])) + (", …" if len(ids) > 12 else "")
    lines = [
        f"Images: {ds['images']} ({shown}); instances: {ds['instances']} "
        f"(small {ds['instances_by_size']['small']}, medium {ds['instances_by_size']['medium']}, "
        f"large {ds['instances_by_size']['large']}), crowd ignored: {ds['crowd']}.",
        "",
        "| row | AR@10 | AR@100 | AR@1000 | AR small | AR medium | AR large | masks/img | s/img |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append("| " + " | ".join([
            r["name"], _fmt(r.get("AR@10")), _fmt(r.get("AR@100")), _fmt(r.get("AR@1000")),
            _fmt(r.get("AR_small@1000")), _fmt(r.get("AR_medium@1000")), _fmt(r.get("AR_large@1000")),
            _fmt(r["masks_per_image"], 1), _fmt(r["seconds_per_image"], 1)]) + " |")
    lines.append("")
    lines.append("AR: recall averaged over mask IoU 0.50:0.05:0.95 (class-agnostic, pycocotools "
                 "segm); small/medium/large at 1000 proposals. s/img: generation only.")
    return "\n".join(lines) + "\n"


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Two PNG plots of a report, one line (or bar group) per row, matplotlib Agg, no pyplot.

    - ``recall_vs_proposals.png``: AR (IoU 0.50:0.95) against proposals per image, log x axis;
    - ``recall_by_size.png``: AR@1000 for small/medium/large objects, grouped bars.

    Returns:
        the written paths.

    Raises:
        EvaluationError: matplotlib is not installed (``pip install -e .[eval]``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EvaluationError("--plots needs matplotlib: pip install -e '.[eval]'") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    n_img = report["dataset"]["images"]

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        curve = r["recall_curve"]  # line styles differ so that identical rows stay visible
        ax.plot(curve["max_dets"], curve["AR"], marker="o", markersize=3, label=r["name"],
                linestyle=("-", "--", ":", "-.")[i % 4])
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("AR (mask IoU 0.50:0.95)")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Class-agnostic mask recall, {n_img} images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = out_dir / "recall_vs_proposals.png"
    fig.savefig(p1)

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = AREA_LABELS[1:]
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        key = f"{r['recall_curve']['max_dets'][-1]}"
        vals = [r.get(f"AR_{s}@{key}", float("nan")) for s in sizes]
        xs = np.arange(len(sizes)) + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(xs, np.nan_to_num(vals), width=width, label=r["name"])
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in vals], fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(sizes)), [f"{s}\n({report['dataset']['instances_by_size'][s]} objects)"
                                           for s in sizes])
    ax.set_ylabel("AR@1000 (mask IoU 0.50:0.95)")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"Recall by object size, {n_img} images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = out_dir / "recall_by_size.png"
    fig.savefig(p2)
    return [p1, p2]
