"""Output writers of a dataset run: JSON records, COCO instances, Label Studio tasks, YOLO
labels, PNG masks, label maps, overlays.

Layout under the output folder ``DIR`` (``<stem>`` is the image's output name, see
:func:`amg.dataset.names.output_stems`; ``<subset>`` is ``--subset``, ``default`` unless given;
``<file_name>`` is the image's COCO ``file_name``, its path relative to the image root or the
``--coco-images`` entry's):

================  ==============================================================================
format            files
================  ==============================================================================
``json``          ``DIR/<stem>.json``: the image's mask-record list (COCO RLE ``segmentation``)
``coco``          ``DIR/annotations/instances_<subset>.json``: one COCO instances file for the
                  run, and ``DIR/images/<subset>/<file_name>`` (the images, linked): the layout
                  of CVAT's "COCO 1.0" and Datumaro's ``coco_instances``
``label-studio``  ``DIR/label-studio/tasks.json`` and ``labeling-config.xml``
                  (:mod:`amg.dataset.label_studio`)
``yolo``          ``DIR/labels/<subset>/<file_name>.txt``, ``DIR/images/<subset>/<file_name>``
                  and ``DIR/data.yaml`` (:mod:`amg.dataset.yolo`)
``png``           ``DIR/masks/<stem>/<i>.png`` (0/255 uint8, one per mask, ``i`` from 0) and
                  ``DIR/masks/<stem>/metadata.csv`` (the reference ``scripts/amg.py`` layout)
``labelmap``      ``DIR/labelmaps/<stem>.png``: 16-bit, pixel = id of the smallest mask covering it
``overlay``       ``DIR/overlays/<stem>.png``: the photo with every mask tinted and outlined
================  ==============================================================================

Ids: the records of an image are kept in one order everywhere — the order of
``DIR/<stem>.json`` — so record ``i`` (0-based) is ``masks/<stem>/<i>.png``, the row ``id = i``
of ``metadata.csv``, label ``i + 1`` in the label map, and colour ``i`` in the overlay; in the
COCO file (RLE segmentation) it is the image's ``i``-th annotation, in the Label Studio task
the result ``m<i>`` (polygons: ``m<i>-<k>``).

Images under ``DIR/images/<subset>/`` are hard links to the input files (no copy), or symbolic
links where the output is on another file system.

Every file is written with :func:`amg.io.write_atomic` (complete or absent), every link with
:func:`link_image` (replaced by rename).
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..io import open_atomic, write_atomic
from ..rle import bytes_counts, str_counts
from .polygons import DEFAULT_MIN_POLYGON_AREA, mask_to_polygons

FORMATS = ("json", "coco", "label-studio", "yolo", "png", "labelmap", "overlay")
DEFAULT_SUBSET = "default"
SEGMENTATIONS = ("rle", "polygon")
METADATA_HEADER = ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x",
                   "point_input_y", "predicted_iou", "stability_score", "crop_box_x0",
                   "crop_box_y0", "crop_box_w", "crop_box_h"]
MAX_LABEL = np.iinfo(np.uint16).max

__all__ = ["FORMATS", "SEGMENTATIONS", "DEFAULT_SUBSET", "OutputPaths", "decode_mask", "label_map",
           "mask_colors", "overlay_image", "metadata_header", "metadata_rows", "coco_annotations",
           "assemble_coco", "write_coco", "link_image", "write_image_outputs"]


class OutputPaths:
    """Where each output of a run goes (see the module docstring for the layout).

    Args:
        root: the run's output folder ``DIR``.
        subset: the subset name of the COCO and YOLO layouts.
    """

    def __init__(self, root: str | Path, subset: str = DEFAULT_SUBSET) -> None:
        self.root = Path(root)
        self.subset = subset
        self.coco = self.root / "annotations" / f"instances_{subset}.json"
        self.label_studio_tasks = self.root / "label-studio" / "tasks.json"
        self.label_studio_config = self.root / "label-studio" / "labeling-config.xml"
        self.yolo_data = self.root / "data.yaml"
        self.errors = self.root / "errors.csv"

    def dataset_image(self, file_name: str) -> Path:
        """``DIR/images/<subset>/<file_name>`` (COCO and YOLO layouts).

        Raises:
            ValueError: ``file_name`` is absolute or climbs out with ``..``.
        """
        return self.root / "images" / self.subset / _relative(file_name)

    def yolo_labels(self, file_name: str) -> Path:
        """``DIR/labels/<subset>/<file_name>`` with the extension ``.txt``.

        Raises:
            ValueError: ``file_name`` is absolute or climbs out with ``..``.
        """
        return self.root / "labels" / self.subset / _relative(file_name).with_suffix(".txt")

    def json(self, stem: str) -> Path:
        """``DIR/<stem>.json``."""
        return self.root / f"{stem}.json"

    def png_dir(self, stem: str) -> Path:
        """``DIR/masks/<stem>/`` (``0.png``, ``1.png``, ..., ``metadata.csv``)."""
        return self.root / "masks" / stem

    def labelmap(self, stem: str) -> Path:
        """``DIR/labelmaps/<stem>.png``."""
        return self.root / "labelmaps" / f"{stem}.png"

    def overlay(self, stem: str) -> Path:
        """``DIR/overlays/<stem>.png``."""
        return self.root / "overlays" / f"{stem}.png"

    def image_files(self, stem: str, formats: Iterable[str]) -> list[Path]:
        """The per-image files and folders the formats write for ``stem`` (COCO is per run)."""
        out = []
        for f in formats:
            if f == "json":
                out.append(self.json(stem))
            elif f == "png":
                out.append(self.png_dir(stem))
            elif f == "labelmap":
                out.append(self.labelmap(stem))
            elif f == "overlay":
                out.append(self.overlay(stem))
        return out


def _relative(file_name: str) -> PurePosixPath:
    """A COCO ``file_name`` as a relative path that stays inside its folder."""
    p = PurePosixPath(file_name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"file_name {file_name!r} is not a relative path inside the dataset")
    return p


def link_image(src: Path, dst: Path) -> None:
    """Put the image ``src`` at ``dst``: a hard link, or a symbolic link to ``src``'s absolute
    path where a hard link is impossible (another file system); atomically replaces ``dst``.

    Raises:
        OSError: neither link can be made.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not dst.is_symlink() and os.path.samefile(src, dst):
        return  # already this file (renaming a hard link onto its twin would do nothing)
    tmp = dst.with_name(f".{dst.name}.link.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        os.symlink(Path(src).resolve(), tmp)
    os.replace(tmp, dst)


def decode_mask(segmentation: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (``counts`` str or bytes) as an ``(H, W)`` bool array (C order), rows = y."""
    return np.ascontiguousarray(mask_utils.decode(bytes_counts(segmentation)).astype(bool))


def _paint_order(records: list[dict[str, Any]]) -> list[int]:
    """Record indexes largest area first; among equal areas the later record first, so that
    painting in this order leaves the smallest mask (ties: the earliest record) on top."""
    return sorted(range(len(records)), key=lambda i: (-records[i]["area"], -i))


def label_map(records: list[dict[str, Any]], hw: tuple[int, int]) -> np.ndarray:
    """The instance label map: each pixel holds the id of the smallest mask covering it.

    Args:
        records: mask records with COCO RLE ``segmentation`` of size ``hw`` and ``area``.
        hw: ``(H, W)`` of the image.

    Returns:
        ``(H, W)`` uint16; 0 where no mask covers the pixel, else ``i + 1`` for record ``i``
        (0-based position in ``records``); ties in area go to the earlier record.

    Raises:
        ValueError: more than 65535 records (the ids would not fit in 16 bits), or a
            segmentation whose size is not ``hw``.
    """
    if len(records) > MAX_LABEL:
        raise ValueError(f"{len(records)} masks do not fit a 16-bit label map (max {MAX_LABEL})")
    labels = np.zeros(hw, np.uint16)
    for i in _paint_order(records):
        m = decode_mask(records[i]["segmentation"])
        if m.shape != tuple(hw):
            raise ValueError(f"record {i}: segmentation size {m.shape} != image size {tuple(hw)}")
        labels[m] = i + 1
    return labels


def mask_colors(n: int) -> np.ndarray:
    """``n`` distinct, deterministic RGB colours (golden-ratio hue steps), for overlays.

    Returns:
        ``(n, 3)`` uint8, row ``i`` the colour of record ``i``; all rows distinct.
    """
    out: list[tuple[int, int, int]] = []
    seen = set()
    for i in range(n):
        h = (i * 0.6180339887498949) % 1.0
        s = (0.95, 0.7, 0.5)[(i // 5) % 3]
        v = (1.0, 0.8)[(i // 15) % 2]
        rgb = [int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v)]
        while tuple(rgb) in seen:  # only for very many masks: nudge into a free colour
            rgb[i % 3] = (rgb[i % 3] + 37) % 256
        seen.add(tuple(rgb))
        out.append(tuple(rgb))
    return np.array(out, np.uint8).reshape(n, 3)


def outline_thickness(hw: tuple[int, int]) -> int:
    """Outline width in pixels for an image of ``(H, W)``: 1 for a short side under 800 px, one
    more per 800 px."""
    return max(1, min(hw) // 800 + 1)


def overlay_image(image: np.ndarray, records: list[dict[str, Any]],
                  labels: np.ndarray | None = None) -> np.ndarray:
    """The photo with every mask tinted in its own colour and outlined.

    Each pixel covered by a mask is blended once, half and half, with the colour of the
    smallest mask covering it (the label map's mask): ``(photo + colour + 1) // 2`` per channel;
    uncovered pixels keep the photo's value. Then every mask's outline (its boundary pixels,
    holes included, :func:`outline_thickness` wide) is drawn in its colour, largest mask first,
    so smaller masks' outlines lie on top. Colours: :func:`mask_colors`, record ``i`` -> row ``i``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        records: mask records with COCO RLE ``segmentation`` of size ``(H, W)``.
        labels: the records' :func:`label_map` if already computed.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: ``image`` is not ``(H, W, 3)`` uint8 (or see :func:`label_map`).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    hw = image.shape[:2]
    if labels is None:
        labels = label_map(records, hw)
    colors = mask_colors(len(records))
    lut = np.zeros((len(records) + 1, 3), np.uint16)  # row 0: no mask
    lut[1:] = colors
    out = image.copy()
    for y in range(0, hw[0], 256):  # in bands of rows: a few bytes per pixel of a band at most
        lab = labels[y:y + 256]
        covered = lab > 0
        if covered.any():
            photo = out[y:y + 256]
            photo[covered] = (photo[covered].astype(np.uint16) + lut[lab[covered]] + 1) >> 1
    thickness = outline_thickness(hw)
    for i in _paint_order(records):
        seg = records[i]["segmentation"]
        m = decode_mask(seg)
        # trace on the mask's box only (COCO box: x, y, columns, rows), shifted back
        x, y, w, h = (int(v) for v in mask_utils.toBbox(bytes_counts(seg)))
        crop = np.ascontiguousarray(m[y:y + h, x:x + w], dtype=np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE, offset=(x, y))
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), thickness)
    return out


def metadata_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """``metadata.csv`` rows of the reference ``scripts/amg.py`` (header :data:`METADATA_HEADER`).

    Row ``i``: ``i``, area, bbox XYWH (the records' convention), the prompt point xy, predicted
    IoU, stability score, crop box XYWH — values written with ``str()``; then ``reserve``
    (``True``/``False``) when the records have that key (see :func:`metadata_header`).
    """
    rows = []
    for i, r in enumerate(records):
        extra = (r["reserve"],) if "reserve" in r else ()
        rows.append([str(v) for v in (i, r["area"], *r["bbox"], *r["point_coords"][0],
                                      r["predicted_iou"], r["stability_score"], *r["crop_box"],
                                      *extra)])
    return rows


def metadata_header(records: list[dict[str, Any]]) -> list[str]:
    """:data:`METADATA_HEADER`, plus a ``reserve`` column when the records carry the
    ``reserve`` key (a generator with reserve filters, e.g. the quality preset)."""
    return METADATA_HEADER + ["reserve"] if records and "reserve" in records[0] else METADATA_HEADER


def _png_bytes(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cannot encode a {array.shape} {array.dtype} array as PNG")
    return buf.tobytes()


def write_png_masks(folder: Path, records: list[dict[str, Any]]) -> None:
    """``folder/<i>.png`` (uint8, 255 = mask) per record and ``folder/metadata.csv``.

    Numbered PNGs left from an earlier run with more masks are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records):
        write_atomic(folder / f"{i}.png", _png_bytes(decode_mask(r["segmentation"]).astype(np.uint8) * 255))
    for f in folder.glob("*.png"):
        if f.stem.isdigit() and int(f.stem) >= len(records):
            f.unlink()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(metadata_header(records))
    writer.writerows(metadata_rows(records))
    write_atomic(folder / "metadata.csv", buf.getvalue())


def coco_annotations(records: list[dict[str, Any]], segmentation: str = "rle",
                     min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA) -> list[dict[str, Any]]:
    """The COCO annotations of one image, without ``id``, ``image_id`` and ``category_id``.

    Args:
        records: mask records with COCO RLE ``segmentation``.
        segmentation: ``"rle"`` (COCO RLE dict, ``counts`` str) or ``"polygon"`` (COCO polygon
            lists, holes bridged, see :mod:`amg.dataset.polygons`; a mask with no polygon left above
            ``min_polygon_area`` gets no annotation).
        min_polygon_area: the polygon tolerance, px² (see :func:`amg.dataset.polygons.mask_to_polygons`).

    Returns:
        One dict per annotation: ``segmentation``; ``area`` (pixels of the segmentation as
        pycocotools decodes it); ``bbox`` XYWH in COCO's convention (``w`` = number of columns,
        so one more than the records' ``bbox`` width, ``pycocotools.mask.toBbox``); ``iscrowd``
        0; ``score`` (the predicted IoU); ``stability_score``; ``point_coords`` and ``crop_box``
        (XYWH) as in the records; ``reserve`` when the records have it (reserve filters); and
        ``attributes``: ``{"predicted_iou", "stability_score"}`` (and ``"reserve"``), the
        per-annotation attributes that CVAT and Datumaro read from COCO files.

    Raises:
        ValueError: unknown ``segmentation``.
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    anns = []
    for r in records:
        rle = bytes_counts(r["segmentation"])
        h, w = rle["size"]
        if segmentation == "polygon":
            polygons = mask_to_polygons(mask_utils.decode(rle), min_polygon_area)
            if not polygons:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
            out_seg: Any = polygons
        else:
            out_seg = str_counts(rle)
        anns.append({
            "segmentation": out_seg,
            "area": int(mask_utils.area(rle)),
            "bbox": [int(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
            "score": r["predicted_iou"],
            "stability_score": r["stability_score"],
            "point_coords": r["point_coords"],
            "crop_box": r["crop_box"],
            **({"reserve": r["reserve"]} if "reserve" in r else {}),
            "attributes": {"predicted_iou": r["predicted_iou"], "stability_score": r["stability_score"],
                           **({"reserve": r["reserve"]} if "reserve" in r else {})},
        })
    return anns


COCO_INFO = {"description": "automatic masks by segment-everything", "version": "1.0"}


def assemble_coco(images: list[dict[str, Any]], annotations: Iterable[list[dict[str, Any]]],
                  category: str = "object") -> dict[str, Any]:
    """One COCO instances dict from per-image parts (in memory; see :func:`write_coco`).

    Args:
        images: per image ``{"id", "file_name", "width", "height"}``, in the order to write.
        annotations: per image, its :func:`coco_annotations` (aligned with ``images``).
        category: the name of the single category (id 1).

    Returns:
        ``{"info", "licenses", "images", "annotations", "categories"}``; annotation ids run
        from 1 in image order, then the images' annotation order.
    """
    out_anns = []
    for img, anns in zip(images, annotations, strict=True):
        for a in anns:
            out_anns.append({"id": len(out_anns) + 1, "image_id": img["id"], "category_id": 1, **a})
    return {
        "info": COCO_INFO,
        "licenses": [],
        "images": [{"id": i["id"], "file_name": i["file_name"], "width": i["width"],
                    "height": i["height"]} for i in images],
        "annotations": out_anns,
        "categories": [{"id": 1, "name": category, "supercategory": category}],
    }


def coco_json(coco: dict[str, Any]) -> str:
    """The COCO dict as compact JSON text (deterministic: same dict, same bytes)."""
    return json.dumps(coco, separators=(",", ":"))


def write_coco(path: Path, images: list[dict[str, Any]],
               annotations: Iterable[list[dict[str, Any]]], category: str = "object") -> int:
    """Stream a COCO instances file to ``path``, one image's annotations at a time.

    Writes exactly ``coco_json(assemble_coco(images, annotations, category))`` without holding
    every annotation in memory; atomically (:func:`amg.io.open_atomic`).

    Args:
        images, annotations, category: as for :func:`assemble_coco`; ``annotations`` may be a
            generator (e.g. reading each image's part from disk).

    Returns:
        The number of annotations written.
    """
    def dumps(x: Any) -> str:
        return json.dumps(x, separators=(",", ":"))

    head = assemble_coco(images, [[] for _ in images], category)
    n = 0
    with open_atomic(path) as f:
        f.write('{"info":' + dumps(head["info"]) + ',"licenses":[],"images":'
                + dumps(head["images"]) + ',"annotations":[')
        for img, anns in zip(images, annotations, strict=True):
            for a in anns:
                n += 1
                f.write(("," if n > 1 else "")
                        + dumps({"id": n, "image_id": img["id"], "category_id": 1, **a}))
        f.write('],"categories":' + dumps(head["categories"]) + "}")
    return n


def write_image_outputs(paths: OutputPaths, stem: str, image: np.ndarray,
                        records: list[dict[str, Any]], formats: Iterable[str]) -> None:
    """Write one image's own files of the formats ``json``, ``png``, ``labelmap`` and
    ``overlay`` (the others are written per run, or need the image's source path and file name:
    :class:`amg.dataset.processing.ImageProcessor`); other format names are accepted and skipped.

    Args:
        paths: the run's :class:`OutputPaths`.
        stem: the image's output name.
        image: ``(H, W, 3)`` uint8 RGB (for the overlay).
        records: its mask records (COCO RLE ``segmentation``), in output order.
        formats: names from :data:`FORMATS`.

    Raises:
        ValueError: an unknown format (or see :func:`label_map`).
        OSError: a file cannot be written.
    """
    formats = list(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; known: {list(FORMATS)}")
    labels = None
    if "labelmap" in formats or "overlay" in formats:
        labels = label_map(records, image.shape[:2])
    if "json" in formats:
        write_atomic(paths.json(stem), json.dumps(records))
    if "png" in formats:
        write_png_masks(paths.png_dir(stem), records)
    if "labelmap" in formats:
        write_atomic(paths.labelmap(stem), _png_bytes(labels))
    if "overlay" in formats:
        rgb = overlay_image(image, records, labels)
        write_atomic(paths.overlay(stem), _png_bytes(np.ascontiguousarray(rgb[..., ::-1])))
