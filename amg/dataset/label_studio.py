"""Label Studio pre-labels: a tasks file with one task per image, its masks as predictions,
and the labelling config that matches it.

Layout (under the run's output folder ``DIR``): ``DIR/label-studio/tasks.json`` (a JSON list of
tasks, Label Studio's import format) and ``DIR/label-studio/labeling-config.xml``.

A task is ``{"data": {"image": URL}, "predictions": [prediction]}`` with one prediction per
image: ``{"model_version", "score", "result": [result, ...]}``. The prediction's ``score`` is the
mean predicted IoU of its masks (0 without masks); each result is one region:

- ``--segmentation rle`` (default): one ``brushlabels`` result per mask, ``value`` =
  ``{"format": "rle", "rle": [byte, ...], "brushlabels": [category]}``, the mask as Label
  Studio's brush RLE (:func:`mask_to_brush_rle`), pixel-exact.
- ``--segmentation polygon``: one ``polygonlabels`` result per polygon of the mask (a mask of
  several fragments gives several results, none dropped), ``value`` = ``{"points": [[x, y],
  ...], "closed": true, "polygonlabels": [category]}`` with x, y in percent of the image width
  and height (Label Studio's unit); the polygons are :func:`amg.dataset.polygons.mask_to_polygons`'
  (holes bridged, vertices on quarter pixels, so they rasterise back to the mask by parity).

Every result carries ``id`` (``"m<i>"`` for record ``i``, ``"m<i>-<k>"`` for polygon ``k`` of
it), ``from_name`` ``"label"``, ``to_name`` ``"image"``, ``original_width``,
``original_height``, ``image_rotation`` 0 and its mask's ``score`` (the predicted IoU).

Brush RLE (the format of Label Studio's brush tool, the ``rle-pack`` codec of thi.ng/umbrella
that Label Studio's front end decodes): the mask is read as the image's RGBA bytes in row-major
order (``H * W * 4`` values, every channel 255 inside the mask, 0 outside; Label Studio reads
the alpha channel) and written as a big-endian bit stream: a 32-bit value count, the word size
minus one (5 bits; 8-bit words), four run-length field widths minus one (4 bits each; widths
3, 4, 8, 16), then chunks. A chunk is a repeat flag (1 bit), a width index ``k`` (2 bits), the
run length minus one (``widths[k]`` bits), then one word (a repeat run) or ``length`` words (a
literal run). The stream ends with 1 to 8 zero bits, up to a whole byte. This is the encoding
of ``label_studio_converter.brush.encode_rle`` chunk for chunk (runs of one value as literal
runs of length 1, other runs with the narrowest width that holds them, runs over 65536 in
pieces of 65536), so the bytes are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
from pycocotools import mask as mask_utils

from ..io import open_atomic
from ..rle import bytes_counts
from .polygons import DEFAULT_MIN_POLYGON_AREA, mask_to_polygons

__all__ = ["LOCAL_FILES_URL", "local_files_url", "FROM_NAME", "TO_NAME", "brush_rle_encode", "mask_to_brush_rle",
           "image_url", "label_studio_results", "label_studio_task", "labeling_config",
           "write_label_studio_tasks"]

LOCAL_FILES_URL = "/data/local-files/?d="
FROM_NAME = "label"
TO_NAME = "image"
RUN_WIDTHS = (3, 4, 8, 16)
WORD_BITS = 8


def _fields_to_bytes(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """Pack unsigned fields (``values[i]`` in ``widths[i]`` bits, most significant bit first)
    into bytes, then 1 to 8 zero bits up to a whole byte."""
    widths = widths.astype(np.int64)
    ends = np.cumsum(widths)
    total = int(ends[-1])
    field = np.repeat(np.arange(len(widths)), widths)
    shift = ends[field] - 1 - np.arange(total)
    bits = ((values.astype(np.uint64)[field] >> shift.astype(np.uint64)) & 1).astype(np.uint8)
    bits = np.concatenate([bits, np.zeros(8 - total % 8, np.uint8)])
    return np.packbits(bits).tolist()


def brush_rle_encode(values: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 1-d array of bytes (see the module docstring).

    Args:
        values: ``(N,)`` integers in ``[0, 255]`` (for a mask: its RGBA bytes, row-major);
            ``N < 2**32``.

    Returns:
        The encoded stream as a list of ints in ``[0, 255]`` (Label Studio's ``value.rle``).

    Raises:
        ValueError: ``values`` is not 1-d, holds a value outside ``[0, 255]``, or is too long.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-d, got shape {values.shape}")
    n = len(values)
    if n >= 2**32:
        raise ValueError(f"{n} values do not fit the 32-bit count of a brush RLE")
    if n and (values.min() < 0 or values.max() > 255):
        raise ValueError("brush RLE values must lie in [0, 255]")
    header_v = [n, WORD_BITS - 1] + [w - 1 for w in RUN_WIDTHS]
    header_w = [32, 5, 4, 4, 4, 4]
    if n == 0:
        return _fields_to_bytes(np.array(header_v), np.array(header_w))
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    lengths = np.diff(np.append(starts, n))
    run_values = values[starts].astype(np.int64)
    # Runs over 65536 split into pieces of 65536 and a remainder (the remainder keeps width 16).
    pieces = np.maximum(1, -(-lengths // 65536))
    piece_run = np.repeat(np.arange(len(lengths)), pieces)
    first_piece = np.concatenate([[0], np.cumsum(pieces)[:-1]])
    piece_no = np.arange(len(piece_run)) - first_piece[piece_run]
    piece_len = np.where(piece_no < pieces[piece_run] - 1, 65536,
                         lengths[piece_run] - 65536 * (pieces[piece_run] - 1))
    long_run = lengths[piece_run] > 256
    k = np.where(long_run, 3, np.searchsorted(np.array([8, 16, 256]), piece_len))
    repeat = lengths[piece_run] > 1
    # per chunk: repeat flag, width index, length - 1, word
    v = np.stack([repeat.astype(np.int64), k, piece_len - 1, run_values[piece_run]], axis=1)
    w = np.stack([np.ones_like(k), np.full_like(k, 2), np.array(RUN_WIDTHS)[k],
                  np.full_like(k, WORD_BITS)], axis=1)
    return _fields_to_bytes(np.concatenate([header_v, v.ravel()]),
                            np.concatenate([header_w, w.ravel()]))


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """A binary mask as Label Studio brush RLE: its RGBA bytes (255 in every channel inside
    the mask, 0 outside), row-major, through :func:`brush_rle_encode`.

    The same bytes as ``label_studio_converter.brush.mask2rle(mask.astype(np.uint8) * 255)``;
    ``label_studio_converter.brush.decode_rle`` gives back ``(H * W * 4,)`` uint8 whose
    ``reshape(H, W, 4)[..., 3] > 0`` is the mask.

    Args:
        mask: ``(H, W)`` bool (or integers, nonzero = inside), rows = y.

    Raises:
        ValueError: ``mask`` is not 2-d.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    return brush_rle_encode(np.repeat((mask != 0).ravel().astype(np.uint8) * 255, 4))


def local_files_url(image_root: Path) -> str:
    """The URL prefix of images served by Label Studio's local-files serving, for a run whose
    file names are relative to ``image_root``: ``/data/local-files/?d=<image_root's name>/``.

    Label Studio serves ``?d=PATH`` from ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT/PATH`` when
    ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and the project has a local storage
    whose folder holds the file; that folder may not be the document root itself. So the
    prefix fits a document root one level above the image root (its parent) and a local
    storage on the image root.
    """
    name = Path(image_root).name
    return LOCAL_FILES_URL + (quote(name, safe="") + "/" if name else "")


def image_url(file_name: str, root_url: str) -> str:
    """The URL Label Studio loads an image from: ``root_url`` + the file name, percent-encoded
    (``/`` kept).

    Args:
        file_name: the image's path relative to the run's image root, ``/``-separated.
        root_url: URL prefix, e.g. ``https://host/images/`` or :func:`local_files_url`'s.
    """
    return root_url + quote(file_name, safe="/")


def label_studio_results(records: list[dict[str, Any]], hw: tuple[int, int],
                         segmentation: str = "rle", category: str = "object",
                         min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA) -> list[dict[str, Any]]:
    """The Label Studio results (regions) of one image's masks (see the module docstring).

    Args:
        records: mask records with COCO RLE ``segmentation`` of size ``hw``, in output order.
        hw: ``(H, W)`` of the image.
        segmentation: ``"rle"`` (brush masks) or ``"polygon"`` (polygons in percent).
        category: the label name.
        min_polygon_area: polygon tolerance in px² (:func:`amg.dataset.polygons.mask_to_polygons`).

    Returns:
        One result dict per mask (``rle``) or per polygon (``polygon``; a mask with no polygon
        above the tolerance gives none).

    Raises:
        ValueError: unknown ``segmentation``, or a segmentation whose size is not ``hw``.
    """
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    h, w = (int(v) for v in hw)
    results = []
    for i, r in enumerate(records):
        mask = mask_utils.decode(bytes_counts(r["segmentation"])).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"record {i}: segmentation size {mask.shape} != image size {(h, w)}")
        common = {"from_name": FROM_NAME, "to_name": TO_NAME, "original_width": w,
                  "original_height": h, "image_rotation": 0, "score": r["predicted_iou"]}
        if segmentation == "rle":
            results.append({"id": f"m{i}", "type": "brushlabels", **common,
                            "value": {"format": "rle", "rle": mask_to_brush_rle(mask),
                                      "brushlabels": [category]}})
            continue
        for k, poly in enumerate(mask_to_polygons(mask, min_polygon_area)):
            xy = np.asarray(poly, np.float64).reshape(-1, 2) * (100.0 / w, 100.0 / h)
            results.append({"id": f"m{i}-{k}", "type": "polygonlabels", **common,
                            "value": {"points": xy.tolist(), "closed": True,
                                      "polygonlabels": [category]}})
    return results


def label_studio_task(url: str, results: list[dict[str, Any]], scores: list[float],
                      model_version: str) -> dict[str, Any]:
    """One Label Studio task with its masks as one prediction.

    Args:
        url: the image URL (:func:`image_url`).
        results: the image's :func:`label_studio_results`.
        scores: the image's predicted IoUs, one per mask (the prediction's ``score`` is their
            mean, 0 for none).
        model_version: the prediction's ``model_version``.
    """
    score = float(np.mean(scores)) if len(scores) else 0.0
    return {"data": {"image": url},
            "predictions": [{"model_version": model_version, "score": score, "result": results}]}


def labeling_config(category: str = "object", segmentation: str = "rle") -> str:
    """The labelling config (Label Studio's XML) that the tasks match: an ``Image`` named
    ``image`` reading ``$image`` and, for ``rle``, ``BrushLabels`` (for ``polygon``,
    ``PolygonLabels``) named ``label`` with the one label ``category``.

    Raises:
        ValueError: unknown ``segmentation``.
    """
    tag = {"rle": "BrushLabels", "polygon": "PolygonLabels"}.get(segmentation)
    if tag is None:
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    return (f'<View>\n'
            f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
            f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}">\n'
            f'    <Label value={quoteattr(category)}/>\n'
            f'  </{tag}>\n'
            f'</View>\n')


def write_label_studio_tasks(path: Any, tasks: Iterable[dict[str, Any]]) -> int:
    """Stream a JSON list of tasks to ``path``, atomically (:func:`amg.io.open_atomic`).

    Args:
        path: the tasks file.
        tasks: the tasks in image order (may be a generator, one image at a time).

    Returns:
        The number of tasks written.
    """
    n = 0
    with open_atomic(path) as f:
        f.write("[")
        for task in tasks:
            f.write(("," if n else "") + "\n" + json.dumps(task, separators=(",", ":")))
            n += 1
        f.write("\n]\n")
    return n
